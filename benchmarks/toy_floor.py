"""2-D toy densities: how far the recipe's test NLL is from the generator's entropy (the floor).

    python benchmarks/toy_floor.py                    # every toy, the shipped recipe
    python benchmarks/toy_floor.py --toys moons,rings --set epochs=50
    python benchmarks/toy_floor.py --entropies        # recompute ENTROPY_NATS (no training)

Each toy is trained by ``realnvp train --data toy:NAME --out DIR --quiet`` (a subprocess, so the
figure is exactly what the command gives), one at a time. The table: the entropy (nats, in the
model's coordinates: :data:`realnvp.data.toy.ENTROPY_NATS`), the test NLL of the selected
checkpoint (``eval.json``'s ``nll_nats`` ± its standard error), the gap NLL − entropy, the
training seconds (the ``seconds`` column of ``metrics.csv`` summed: evaluation and pictures
excluded) and, because the 5000 test examples' own ``−mean log p`` differs from the entropy by
about ±0.01, the test set's floor (``−mean log p_true`` of the same examples) and the excess over
it, ``mean(log p_true − log q)`` ± its paired standard error, which is the sharper figure.

``--entropies`` recomputes every entropy by the methods described under
:data:`~realnvp.data.toy.ENTROPY_NATS` (grid quadrature of ``−p log p`` with ``p`` the
generator's exact density; two grid
resolutions, which agree to 1e-5) and, with ``--mc N``, a Monte Carlo check ``−mean log p`` over
``N`` fresh samples ± its standard error.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from realnvp.data.toy import ENTROPY_NATS, GENERATORS, sample_toy

# ---------------------------------------------------------------------------- exact densities
#
# Every generator but checkerboard and pinwheel is a curve (or 8 points) plus noise that is
# independent per coordinate: p(x) = ∫ k1(x1 − c1(t)) k2(x2 − c2(t)) dμ(t), approximated by M
# midpoint nodes t_j. On a grid the density is then the matrix product A^T B with
# A[j, i] = k1(g_i − c1(t_j)), B[j, l] = k2(g_l − c2(t_j)). Coordinates are the generators'
# own, which are the model's (data/toy.py does not standardise).


def _gauss(d, s):
    return np.exp(-0.5 * (d / s) ** 2) / (s * math.sqrt(2 * math.pi))


def _uniform_gauss(d, w, s):
    """Density of U[0, w] + N(0, s²) at d."""
    return (ndtr(d / s) - ndtr((d - w) / s)) / w


def _mid(a, b, m):
    return a + (np.arange(m) + 0.5) * (b - a) / m


def _mixture(name: str, m: int):
    """``(c1, c2, weights, k1, k2, half_width)``: the generator as a mixture of separable
    kernels ``k(d, j)`` at nodes ``(c1_j, c2_j)``; ``None`` for checkerboard and pinwheel."""
    if name == "moons":  # sklearn: two half circles, t uniform (linspace) on [0, π]; N(0, 0.1²); ×2
        t = _mid(0, np.pi, m)
        c1 = np.concatenate([np.cos(t), 1 - np.cos(t)]) * 2 - 1
        c2 = np.concatenate([np.sin(t), 0.5 - np.sin(t)]) * 2 - 0.2
        return c1, c2, np.full(2 * m, 0.5 / m), *([lambda d, j: _gauss(d, 0.2)] * 2), 4.5
    if name == "8gaussians":
        a = np.arange(8) * np.pi / 4
        k = lambda d, j: _gauss(d, 0.5 / 1.414)  # noqa: E731
        return 4 * np.cos(a) / 1.414, 4 * np.sin(a) / 1.414, np.full(8, 1 / 8), k, k, 6.0
    if name in ("rings", "circles"):  # equal shares per circle, angles evenly spaced
        radii, s, hw = ([3.0, 2.25, 1.5, 0.75], 0.08, 3.8) if name == "rings" else ([3.0, 1.5], 0.24, 5.0)
        t = np.tile(np.arange(m) * 2 * np.pi / m, len(radii))
        r = np.repeat(radii, m)
        k = lambda d, j: _gauss(d, s)  # noqa: E731
        return r * np.cos(t), r * np.sin(t), np.full(len(r), 1 / len(r)), k, k, hw
    if name == "swissroll":  # sklearn: t uniform on [1.5π, 4.5π], (t cos t, t sin t) + N(0, 1); /5
        t = _mid(1.5 * np.pi, 4.5 * np.pi, m)
        k = lambda d, j: _gauss(d, 0.2)  # noqa: E731
        return t * np.cos(t) / 5, t * np.sin(t) / 5, np.full(m, 1 / m), k, k, 4.5
    if name == "2spirals":
        # t = 3π·sqrt(U) (density 2t/(3π)²: midpoints in U), arm (−t cos t, t sin t) + U[0, ½]²,
        # the other arm its negative, all /3, then + N(0, 0.1²): per coordinate the kernel is
        # U[0, 1/6] (negated on the second arm) convolved with N(0, 0.1²)
        t = np.sqrt(_mid(0, 1, m)) * 3 * np.pi
        c1, c2 = -np.cos(t) * t / 3, np.sin(t) * t / 3
        sign = np.concatenate([np.ones(m), -np.ones(m)])
        k = lambda d, j: _uniform_gauss(sign[j] * d, 0.5 / 3, 0.1)  # noqa: E731
        return (np.concatenate([c1, -c1]), np.concatenate([c2, -c2]), np.full(2 * m, 0.5 / m),
                k, k, 4.5)
    return None


def _mixture_log_density(name: str, x: np.ndarray, m: int = 20000) -> np.ndarray:
    c1, c2, w, k1, k2, _ = _mixture(name, m)
    j = np.arange(len(c1))[:, None]
    out = np.empty(len(x))
    for s in range(0, len(x), 500):
        xs = x[s:s + 500]
        out[s:s + 500] = (w[:, None] * k1(xs[None, :, 0] - c1[:, None], j)
                          * k2(xs[None, :, 1] - c2[:, None], j)).sum(0)
    return np.log(out)


# Pinwheel (in the generator's coordinates halved): f0 ~ N(1, 0.3²), f1 ~ N(0, 0.1²), arm
# k ∈ {0..4} with equal shares, θ = 2πk/5 + 0.25·exp(f0), x = R(−θ) f. In polar coordinates
# |x| = |f| = ρ and arg x = u(ψ) − 2πk/5 with ψ = arg f and u(ψ) = ψ − 0.25·exp(ρ cos ψ), so
# p(x) = (1/5) Σ_k Σ_{ψ: u(ψ) ≡ arg x + 2πk/5} p_f(ρ cos ψ, ρ sin ψ) / |u'(ψ)|,
# u'(ψ) = 1 + 0.25·exp(f0)·f1 (every root counted: arms overlap near the centre).
_PIN_ARMS = 5


def _pin_terms(rho, psi):
    f0, f1 = rho * np.cos(psi), rho * np.sin(psi)
    e = 0.25 * np.exp(f0)
    return psi - e, _gauss(f0 - 1, 0.3) * _gauss(f1, 0.1) / np.abs(1 + e * f1), e, f0, f1


def _pinwheel_log_density(x: np.ndarray, grid: int = 2048) -> np.ndarray:
    """Exact log-density (every root of u(ψ) ≡ c found by a scan over ``grid`` angles, then
    Newton)."""
    x = x / 2
    rho, phi = np.hypot(x[:, 0], x[:, 1]), np.arctan2(x[:, 1], x[:, 0])
    psi = -np.pi + np.arange(grid + 1) * 2 * np.pi / grid
    total = np.zeros(len(x))
    for k in range(_PIN_ARMS):
        c = phi + 2 * np.pi * k / _PIN_ARMS
        for s in range(0, len(x), 2000):
            r, cc = rho[s:s + 2000, None], c[s:s + 2000, None]
            d = np.mod(psi[None] - 0.25 * np.exp(r * np.cos(psi[None])) - cc + np.pi, 2 * np.pi) - np.pi
            a, b = d[:, :-1], d[:, 1:]
            ii, jj = np.nonzero((np.sign(a) != np.sign(b)) & (np.abs(a - b) < np.pi))
            ps = psi[jj] + a[ii, jj] / (a[ii, jj] - b[ii, jj]) * (2 * np.pi / grid)
            rr, c0 = r[ii, 0], cc[ii, 0]
            for _ in range(4):
                u, _, e, _, f1 = _pin_terms(rr, ps)
                ps = ps - (np.mod(u - c0 + np.pi, 2 * np.pi) - np.pi) / (1 + e * f1)
            np.add.at(total, s + ii, _pin_terms(rr, ps)[1] / _PIN_ARMS)
    return np.log(total) - 2 * math.log(2)


def log_density(name: str, x: np.ndarray) -> np.ndarray:
    """``log p(x)`` (nats) of toy ``name``'s generator at ``x`` ``(n, 2)``, raw coordinates."""
    x = np.asarray(x, dtype=np.float64)
    if name == "checkerboard":
        x1, x2 = np.floor(x[:, 0] / 2), np.floor(x[:, 1] / 2)
        inside = (np.abs(x).max(1) < 4) & ((x1 + x2) % 2 == 0)
        return np.where(inside, -math.log(32), -np.inf)
    if name == "pinwheel":
        return _pinwheel_log_density(x)
    return _mixture_log_density(name, x)


def _grid_entropy(name: str, m: int, h: float) -> tuple[float, float]:
    c1, c2, w, k1, k2, hw = _mixture(name, m)
    g = np.arange(-hw + h / 2, hw, h)
    j = np.arange(len(c1))[:, None]
    p = (w[:, None] * k1(g[None] - c1[:, None], j)).T @ k2(g[None] - c2[:, None], j)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.where(p > 0, p * np.log(p), 0).sum() * h * h), float(p.sum() * h * h)


def _pinwheel_grid_entropy(k: int, n: int, drho: float, rho_max: float = 4.0) -> tuple[float, float]:
    """−∫ p log p over a polar grid (ρ, arg x) of the halved coordinates: for each ρ the density
    in arg x of one arm is the push-forward of p_f(ρ, ψ)·ρ dψ under u (all branches, piecewise
    linear between ``k`` nodes in ψ), read at ``n`` angles; the 5 arms are its rotations."""
    psi = -np.pi + np.arange(k + 1) * 2 * np.pi / k
    dphi = 2 * np.pi / n
    rhos = np.arange(drho / 2, rho_max, drho)
    q = np.zeros((len(rhos), n))  # polar density ρ·p(x) of arm 0
    for i, rho in enumerate(rhos):
        u, g = _pin_terms(rho, psi)[:2]
        g = g * rho
        ua, ub, ga, gb = u[:-1], u[1:], g[:-1], g[1:]
        jlo = np.ceil(np.minimum(ua, ub) / dphi).astype(np.int64)
        cnt = np.maximum(np.ceil(np.maximum(ua, ub) / dphi).astype(np.int64) - jlo, 0)
        idx = np.repeat(np.arange(k), cnt)
        j = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(jlo, cnt)
        lam = (j * dphi - ua[idx]) / (ub[idx] - ua[idx])
        np.add.at(q[i], j % n, ga[idx] + lam * (gb[idx] - ga[idx]))
    q = sum(np.roll(q, a * n // _PIN_ARMS, axis=1) for a in range(_PIN_ARMS)) / _PIN_ARMS
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(q > 0, q * np.log(q / rhos[:, None]), 0).sum() * drho * dphi
    return float(ent + 2 * math.log(2)), float(q.sum() * drho * dphi)


def entropy(name: str, fine: bool = False) -> tuple[float, float]:
    """``(entropy, total mass on the grid)`` by grid quadrature (``fine``: the check)."""
    if name == "checkerboard":  # uniform on 8 cells of side 2: area 32
        return math.log(32), 1.0
    if name == "pinwheel":
        return _pinwheel_grid_entropy(1 << 16, 5 * 4096, 0.001) if fine else \
            _pinwheel_grid_entropy(1 << 15, 5 * 2048, 0.002)
    m = {"moons": 20000, "8gaussians": 8, "swissroll": 40000, "2spirals": 40000}.get(name, 8000)
    return _grid_entropy(name, 2 * m if fine else m, 0.005 if fine else 0.01)


def test_floor(name: str, seed: int = 0) -> np.ndarray:
    """``−log p_true`` of the test split's examples, in the model's coordinates."""
    return -log_density(name, sample_toy(name, 5000, seed, "test"))


# -------------------------------------------------------------------------------- training


def train_toy(name: str, out: Path, extra: list[str]) -> dict:
    cmd = ["realnvp", "train", "--data", f"toy:{name}", "--out", str(out), "--quiet", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((out / "eval.json").read_text())
    with open(out / "metrics.csv") as f:
        result["train_seconds"] = sum(float(r["seconds"]) for r in csv.DictReader(f))
    return result


def paired_excess(name: str, run: Path) -> tuple[float, float, float]:
    """``(test floor, mean(log p_true − log q), its standard error)`` on the test split."""
    import torch

    from realnvp.runs import load_run

    model = load_run(run, "best").model
    x = sample_toy(name, 5000, 0, "test")
    with torch.no_grad():
        log_q = model.log_prob(torch.from_numpy(x)).double().numpy()
    floor = test_floor(name)
    d = -log_q - floor
    return float(floor.mean()), float(d.mean()), float(d.std() / math.sqrt(len(d)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", default=",".join(GENERATORS), help="comma-separated toy names")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to realnvp train (repeatable)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--entropies", action="store_true", help="recompute the entropies; no training")
    p.add_argument("--mc", type=int, default=0, help="with --entropies: Monte Carlo samples")
    args = p.parse_args(argv)
    toys = [t for t in args.toys.split(",") if t]
    unknown = [t for t in toys if t not in GENERATORS]
    if unknown:
        p.error(f"unknown toy(s) {', '.join(unknown)}; choose from {', '.join(GENERATORS)}")

    if args.entropies:
        print("| toy | entropy (grid) | finer grid | mass | ENTROPY_NATS | test-set −mean log p |"
              + (f" Monte Carlo ({args.mc:,}) |" if args.mc else ""))
        print("|---|---|---|---|---|---|" + ("---|" if args.mc else ""))
        for name in toys:
            (h, mass), (h2, _) = entropy(name), entropy(name, fine=True)
            floor = test_floor(name)
            row = (f"| {name} | {h:.5f} | {h2:.5f} | {mass:.6f} | "
                   f"{ENTROPY_NATS[name]:.5f} | {floor.mean():.4f} ± "
                   f"{floor.std() / math.sqrt(len(floor)):.4f} |")
            if args.mc:
                rng = np.random.default_rng(np.random.SeedSequence([0x6D63, args.mc]))
                v = np.concatenate([-log_density(name, GENERATORS[name](min(100_000, args.mc - i), rng))
                                    for i in range(0, args.mc, 100_000)])
                row += f" {v.mean():.4f} ± {v.std() / math.sqrt(len(v)):.4f} |"
            print(row, flush=True)
        return

    extra = [a for kv in args.set for a in ("--set", kv)]
    print(f"realnvp train --data toy:NAME --quiet {' '.join(extra)}".rstrip(), flush=True)
    print("| toy | entropy | test NLL | gap | test-set floor | excess over it | training s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for name in toys:
            out = root / name
            t0 = time.monotonic()
            r = train_toy(name, out, extra)
            floor, excess, se = paired_excess(name, out)
            h = ENTROPY_NATS[name]
            print(f"| {name} | {h:.3f} | {r['nll_nats']:.3f} ± {r['nll_nats_stderr']:.3f} | "
                  f"{r['nll_nats'] - h:+.3f} | {floor:.3f} | {excess:+.3f} ± {se:.3f} | "
                  f"{r['train_seconds']:.1f} |", flush=True)
            print(f"  ({name}: {time.monotonic() - t0:.0f} s wall in all)", file=sys.stderr)


if __name__ == "__main__":
    main()
