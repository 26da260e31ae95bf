"""Would a hand-fused vector coupling be faster? An experiment (not used by the package).

    python benchmarks/fused_coupling.py [--threads 1]

Small vector flows spend most of their step outside arithmetic, so one idea is to run a whole
affine coupling (split, the MLP with weight norm and ReLUs, tanh-bounded scale, ``exp``, ``addcmul``,
log-det, merge) as one ``torch.autograd.Function`` with a hand-written backward: one autograd node
per coupling instead of ~17. This script builds that function for the package's
:class:`~realnvp.bijectors.AffineCoupling` + :class:`~realnvp.nets.MLP` (weight-normalised or
plain), first checks in float64 that outputs and every gradient equal the module's, then times
forward + backward of one coupling both ways, interleaved, on the toy 2-D and the 43-feature
tabular shapes of ``run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.autograd.function import once_differentiable

from realnvp.bijectors import AffineCoupling, Halves
from realnvp.nets import MLP
from realnvp.nets.weightnorm import WNLinear


class FusedAffineMLPCoupling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, weight_norm, n, rescale, *params):
        per = 3 if weight_norm else 2  # (v, g, bias) or (weight, bias) per layer
        cond, a = mask.split(x)
        ws, norms = [], []
        for i in range(n):
            p = params[i * per:(i + 1) * per]
            if weight_norm:
                w, norm = torch._weight_norm_interface(p[0], p[1], 0)
                norms.append(norm)
            else:
                w = p[0]
            ws.append(w)
        h, hs = cond, [cond]
        for i in range(n):
            z = torch.addmm(params[i * per + per - 1], h, ws[i].t())
            if i < n - 1:
                h = z.relu_()
                hs.append(h)
        raw, t = z.split(a.shape[1], dim=1)
        th = torch.tanh(raw)
        s = th * rescale
        e = torch.exp(s)
        y = mask.merge(x, torch.addcmul(t, a, e), cond)
        ctx.save_for_backward(x, rescale, th, e, *hs, *ws, *norms, *params)
        ctx.mask, ctx.weight_norm, ctx.n = mask, weight_norm, n
        return y, s.sum(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_ld):
        n, wn, mask = ctx.n, ctx.weight_norm, ctx.mask
        saved = ctx.saved_tensors
        x, rescale, th, e = saved[:4]
        hs, ws = saved[4:4 + n], saved[4 + n:4 + 2 * n]
        norms = saved[4 + 2 * n:4 + 3 * n] if wn else ()
        params = saved[4 + (3 if wn else 2) * n:]
        per = 3 if wn else 2
        _, a = mask.split(x)
        g_cond, g_out = mask.split(g_y)
        g_a = g_out * e
        g_s = torch.addcmul(g_ld.unsqueeze(1), g_a, a)
        g_rescale = (g_s * th).sum(0)
        g_z = torch.cat((torch.ops.aten.tanh_backward(g_s * rescale, th), g_out), 1)
        grads: list = [None] * len(params)
        for i in reversed(range(n)):
            g_w = g_z.t() @ hs[i]
            g_h = g_z @ ws[i]
            if wn:
                g_v, g_g = torch.ops.aten._weight_norm_interface_backward(
                    g_w, params[i * per], params[i * per + 1], norms[i], 0)
                grads[i * per:(i + 1) * per] = [g_v, g_g, g_z.sum(0)]
            else:
                grads[i * per:(i + 1) * per] = [g_w, g_z.sum(0)]
            if i > 0:
                g_z = torch.ops.aten.threshold_backward(g_h, hs[i], 0)
        return (mask.merge(x, g_a, g_cond + g_h), None, None, None, g_rescale, *grads)


def fused(coupling: AffineCoupling, x):
    layers = [m for m in coupling.net.net if not isinstance(m, torch.nn.ReLU)]
    wn = isinstance(layers[0], WNLinear)
    params = [q for m in layers for q in ((m.weight_v, m.weight_g, m.bias) if wn else (m.weight, m.bias))]
    return FusedAffineMLPCoupling.apply(x, coupling.mask, wn, len(layers), coupling.rescale, *params)


def module(coupling, x):
    return coupling(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}; one coupling, forward + backward, median µs")
    print("| shape | MLP | module | fused | fused speed-up | max |grad difference| (float64) |")
    print("|---|---|---:|---:|---:|---:|")
    for dim, hidden, batch in [(2, 128, 256), (43, 256, 512)]:
        for wn in (True, False):
            torch.manual_seed(0)
            mask = Halves(dim, flip=True)
            c = AffineCoupling(mask, MLP(mask.in_features, 2 * mask.out_features, hidden=hidden,
                                         weight_norm=wn)).double()
            x = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
            grads = []
            for f in (module, fused):
                x.grad = None
                c.zero_grad()
                y, ld = f(c, x)
                (y.sin().sum() + ld.cos().sum()).backward()
                grads.append([y, ld, x.grad] + [q.grad for q in c.parameters()])
            err = max((u - v).abs().max().item() for u, v in zip(*grads, strict=True))
            c = c.float()
            xf = torch.randn(batch, dim, requires_grad=True)
            ts: dict = {module: [], fused: []}
            for f in ts:
                for _ in range(10):
                    y, ld = f(c, xf)
                    (y.sum() + ld.sum()).backward()
            for _ in range(args.rounds):
                for f, acc in ts.items():
                    t = time.perf_counter()
                    for _ in range(100):
                        y, ld = f(c, xf)
                        (y.sum() + ld.sum()).backward()
                    acc.append((time.perf_counter() - t) / 100 * 1e6)
            a, b = statistics.median(ts[module]), statistics.median(ts[fused])
            net = f"{'weight norm' if wn else 'plain'}, {hidden} wide"
            print(f"| ({batch}, {dim}) | {net} | {a:.0f} | {b:.0f} | {a / b:.2f}× | {err:.1e} |")


if __name__ == "__main__":
    main()
