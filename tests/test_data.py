"""Tests of realnvp.data: the public API, DataInfo, digits, toy densities and tabular files."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realnvp.data import DATASETS, DataError, DataInfo, load_dataset
from realnvp.data.safe_pickle import safe_load
from realnvp.data.toy import GENERATORS

# ----------------------------------------------------------------------------- API and DataInfo


def test_dataset_names_cover_the_brief():
    expected = {
        "digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10", "imagenet32", "imagenet64", "celeba",
        "lsun-bedroom", "lsun-tower", "lsun-church", "folder", "tabular",
        *(f"toy:{n}" for n in (
            "moons", "8gaussians", "checkerboard", "rings", "circles", "pinwheel", "2spirals",
            "swissroll",
        )),
    }  # fmt: skip
    assert set(DATASETS) == expected
    assert len(DATASETS) == len(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "nope"}, "unknown data set 'nope'"),
        ({"name": "digits", "split": "val"}, "unknown split 'val'"),
        ({"name": "digits", "image_size": 8}, r"unexpected option\(s\) \['image_size'\]"),
        ({"name": "toy:moons", "num_samples": 0}, "num_samples must be a positive integer"),
        ({"name": "digits", "augment": "yes"}, "augment must be None, True or False"),
        ({"name": "tabular"}, "tabular: pass data_dir"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_dataset(**kwargs)


def test_options_passed_as_none_are_ignored():
    ds, info = load_dataset("digits", image_size=None, num_samples=None)
    assert info.name == "digits"


def test_data_error_is_a_one_line_value_error():
    err = DataError("first line\nsecond line")
    assert isinstance(err, ValueError)
    assert "\n" not in str(err)


def test_datainfo_round_trip_through_json():
    info = DataInfo("tabular", "vector", (3,), None, False, mean=(1.0, 2.0, 3.0), std=(1, 2, 3))
    restored = DataInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert restored == info
    assert restored.std == (1.0, 2.0, 3.0) and isinstance(restored.shape, tuple)
    image = DataInfo("cifar10", "image", (3, 32, 32), 256, flip=True)
    assert DataInfo.from_dict(json.loads(json.dumps(image.to_dict()))) == image
    assert image.dim == 3 * 32 * 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": "x", "kind": "image", "shape": [1, 2, 2], "num_levels": 2, "extra": 1},
         "unknown keys"),
        ({"name": "x", "kind": "image", "shape": [1, 2, 2]}, "missing keys"),
        ({"name": "x", "kind": "audio", "shape": [4], "num_levels": None}, "kind must be"),
        ({"name": "x", "kind": "image", "shape": [4], "num_levels": 256}, "shape must be 3"),
        ({"name": "x", "kind": "vector", "shape": [2], "num_levels": None, "mean": [0.0]},
         "mean has 1 entries"),
    ],
)  # fmt: skip
def test_datainfo_from_dict_rejects_bad_input(data, match):
    with pytest.raises(DataError, match=match):
        DataInfo.from_dict(data)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_levels_and_fixed_split():
    train, info = load_dataset("digits", "train")
    test, test_info = load_dataset("digits", "test", seed=123)
    assert info == test_info == DataInfo("digits", "image", (1, 8, 8), 17, flip=False, num_classes=10)
    assert (len(train), len(test)) == (1497, 300)
    assert train[0].dtype == torch.uint8 and train[0].shape == (1, 8, 8)
    assert int(train.data.max()) == 16 and int(train.data.min()) == 0
    # The split does not depend on the seed, and train/test are disjoint images of the 1797.
    again, _ = load_dataset("digits", "test", seed=7)
    assert torch.equal(test.data, again.data)
    from sklearn.datasets import load_digits

    everything = torch.from_numpy(load_digits().images.astype(np.uint8))[:, None]
    assert sorted(map(bytes, torch.cat([train.data, test.data]).numpy())) == sorted(
        map(bytes, everything.numpy())
    )


def test_digits_not_augmented_by_default_but_can_be_forced():
    plain, _ = load_dataset("digits")
    forced, _ = load_dataset("digits", augment=True)
    torch.manual_seed(0)
    assert all(torch.equal(plain[i], plain.data[i]) for i in range(20))
    flips = [not torch.equal(forced[0], forced.data[0]) for _ in range(40)]
    assert 5 < sum(flips) < 35


# ----------------------------------------------------------------------------- toy densities

TOYS = [f"toy:{n}" for n in GENERATORS]


@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_determinism_and_seeds(name):
    train, info = load_dataset(name, "train", num_samples=2000)
    assert info == DataInfo(name, "vector", (2,), None, flip=False)
    assert len(train) == 2000 and train[0].dtype == torch.float32 and train[0].shape == (2,)
    assert torch.isfinite(train.data).all()
    same, _ = load_dataset(name, "train", num_samples=2000)
    other_seed, _ = load_dataset(name, "train", num_samples=2000, seed=1)
    test, _ = load_dataset(name, "test", num_samples=2000)
    test_other_seed, _ = load_dataset(name, "test", num_samples=2000, seed=1)
    assert torch.equal(train.data, same.data)
    assert not torch.equal(train.data, other_seed.data)
    assert not torch.equal(train.data, test.data)
    assert torch.equal(test.data, test_other_seed.data)  # the test set is fixed


def test_toy_default_sizes():
    train, _ = load_dataset("toy:checkerboard")
    test, _ = load_dataset("toy:checkerboard", "test")
    assert (len(train), len(test)) == (20000, 5000)


def _toy(name: str, n: int = 20000) -> np.ndarray:
    return load_dataset(f"toy:{name}", num_samples=n)[0].data.numpy().astype(np.float64)


def test_checkerboard_occupies_eight_cells_uniformly():
    x = _toy("checkerboard")
    assert np.all(np.abs(x) <= 4)
    cells = np.floor(x / 2).astype(int)  # cell indices in {-2,...,1}
    assert np.all(cells.sum(axis=1) % 2 == 0)  # only the "even" squares
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8
    assert np.all(np.abs(counts / len(x) - 1 / 8) < 0.015)


def test_eight_gaussians_has_eight_equal_modes():
    x = _toy("8gaussians")
    angles = np.arange(8) * np.pi / 4
    centres = 4 / 1.414 * np.stack([np.cos(angles), np.sin(angles)], 1)
    dist = np.linalg.norm(x[:, None, :] - centres[None], axis=2)
    nearest = dist.argmin(1)
    counts = np.bincount(nearest, minlength=8)
    assert np.all(np.abs(counts / len(x) - 1 / 8) < 0.015)
    # Within a mode the spread is sigma 0.5/1.414 per coordinate.
    offsets = x - centres[nearest]
    assert np.allclose(offsets.std(0), 0.5 / 1.414, rtol=0.05)
    assert np.allclose(offsets.mean(0), 0, atol=0.02)


def test_rings_radii_and_noise():
    r = np.linalg.norm(_toy("rings"), axis=1)
    radii = np.array([3.0, 2.25, 1.5, 0.75])
    which = np.abs(r[:, None] - radii).argmin(1)
    assert np.all(np.abs(r - radii[which]) < 0.4)
    assert np.all(np.abs(np.bincount(which) / len(r) - 0.25) < 0.01)
    assert np.std(r - radii[which]) == pytest.approx(0.08, rel=0.1)


def test_circles_two_radii():
    r = np.linalg.norm(_toy("circles"), axis=1)
    inner = r < 2.25
    assert inner.mean() == pytest.approx(0.5, abs=0.01)
    assert np.median(r[inner]) == pytest.approx(1.5, abs=0.05)
    assert np.median(r[~inner]) == pytest.approx(3.0, abs=0.05)


def test_moons_mean_and_extent():
    x = _toy("moons")
    # Outer moon: mean (0, 2/pi); inner: mean (1, 0.5 - 2/pi); then *2 and shift (-1, -0.2).
    assert np.allclose(x.mean(0), [0.0, 0.3], atol=0.03)
    assert x[:, 0].min() > -3.7 and x[:, 0].max() < 3.7


def test_pinwheel_five_symmetric_arms():
    x = _toy("pinwheel")
    assert np.allclose(x.mean(0), 0, atol=0.05)
    r = np.linalg.norm(x, axis=1)
    assert r.mean() == pytest.approx(2 * math.sqrt(1 + 0.3**2 + 0.1**2), rel=0.05)
    # Rotating by 72 degrees maps the density onto itself: compare angular histograms.
    theta = np.arctan2(x[:, 1], x[:, 0])
    hist, _ = np.histogram(np.mod(theta, 2 * np.pi / 5), bins=10)
    hist_all, _ = np.histogram(theta, bins=50, range=(-np.pi, np.pi))
    assert hist_all.max() > 3 * hist_all.min() + 1  # arms: strongly non-uniform in angle
    assert hist.sum() == len(x)


def test_two_spirals_symmetric_and_bounded():
    x = _toy("2spirals")
    assert np.allclose(x.mean(0), 0, atol=0.05)
    r = np.linalg.norm(x, axis=1)
    assert r.max() < (3 * np.pi + 1) / 3 + 0.6


def test_swissroll_extent():
    x = _toy("swissroll")
    r = np.linalg.norm(x, axis=1)
    assert 1.5 * np.pi / 5 - 1 < np.median(r) < 4.5 * np.pi / 5
    assert r.max() < (4.5 * np.pi + 5) / 5


# ----------------------------------------------------------------------------- tabular


def _matrix(n: int = 50, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1])[:d] + np.arange(d)


def test_tabular_csv_with_header_standardised_with_train_statistics(tmp_path):
    data = _matrix()
    path = tmp_path / "power.csv"
    lines = ["a,b,c"] + [",".join(f"{v:.17g}" for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    train, info = load_dataset("tabular", "train", data_dir=path)
    test, test_info = load_dataset("tabular", "test", data_dir=tmp_path)  # folder with one file
    assert info == test_info and info.kind == "vector" and info.shape == (3,)
    assert info.num_levels is None and not info.flip
    assert (len(train), len(test)) == (45, 5)
    assert train[0].dtype == torch.float32 and train[0].shape == (3,)
    assert torch.allclose(train.data.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(train.data.std(0, unbiased=False), torch.ones(3), atol=1e-5)
    # Un-standardising with the recorded statistics recovers the original rows of both splits.
    mean, std = np.array(info.mean), np.array(info.std)
    restored = np.concatenate([train.data.numpy(), test.data.numpy()]) * std + mean
    order = np.lexsort(restored.T)
    assert np.allclose(restored[order], data[np.lexsort(data.T)], atol=1e-4 * np.abs(data).max())


def test_tabular_npy_and_headerless_semicolon_csv(tmp_path):
    data = _matrix(40, 2)
    np.save(tmp_path / "x.npy", data)
    from_npy, info = load_dataset("tabular", data_dir=tmp_path / "x.npy")
    csv = tmp_path / "x.csv"
    csv.write_text("\n".join(f"{a:.17g};{b:.17g}" for a, b in data))
    from_csv, _ = load_dataset("tabular", data_dir=csv)
    assert info.shape == (2,) and len(from_npy) == 36
    assert torch.allclose(from_npy.data, from_csv.data)


def test_tabular_nan_in_csv_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y,z\n1,2,3\n4,5,6\n7,nan,9\n1,1,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 4, column 2: value nan is not finite"):
        load_dataset("tabular", data_dir=path)


def test_tabular_inf_in_npy_names_row_and_column(tmp_path):
    data = _matrix(10, 3)
    data[3, 1] = np.inf
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(DataError, match=r"bad\.npy: row 3, column 1 \(0-based\).*not finite"):
        load_dataset("tabular", data_dir=tmp_path / "bad.npy")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n3,oops\n", r"line 3, column 2: 'oops' is not a number"),
        ("a,b\n1,2\n3\n", r"line 3 has 1 columns; expected 2"),
        ("a,b\n", "header but no data rows"),
        ("", "no data rows"),
        ("a,b\n1,5\n2,5\n3,5\n4,5\n", r"column 2 is constant \(5\) on the training rows"),
        ("a,b\n1,2\n", "need at least 2"),
    ],
)
def test_tabular_csv_errors(tmp_path, text, match):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("tabular", data_dir=path)
    assert "t.csv" in str(info.value)


def test_tabular_path_errors(tmp_path):
    missing = r"data not found in .*missing, which does not exist \(looked for \*\.csv"
    with pytest.raises(DataError, match=missing):
        load_dataset("tabular", data_dir=tmp_path / "missing")
    with pytest.raises(DataError, match=r"exactly one \.csv or \.npy file \(found none\)"):
        load_dataset("tabular", data_dir=tmp_path)
    np.save(tmp_path / "a.npy", np.ones((3, 3, 3)))
    with pytest.raises(DataError, match=r"a\.npy: array has shape \(3, 3, 3\); expected a 2-D"):
        load_dataset("tabular", data_dir=tmp_path / "a.npy")
    (tmp_path / "b.csv").write_text("1\n2\n")
    with pytest.raises(DataError, match=r"found a\.npy, b\.csv"):
        load_dataset("tabular", data_dir=tmp_path)
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"c\.npy: cannot read \.npy matrix"):
        load_dataset("tabular", data_dir=tmp_path / "c.npy")


# ----------------------------------------------------------------------------- safe unpickler


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(["u1", "<i4", ">i4", "<f8", ">f4", "?", "<u2"]),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    fortran=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_safe_unpickler_round_trips_numeric_arrays(dtype, shape, protocol, fortran, seed):
    values = np.random.default_rng(seed).integers(0, 100, size=shape)
    array = np.asarray(values.astype(dtype), order="F" if fortran else "C")
    loaded = safe_load(pickle.dumps({b"data": array, "n": [1, 2.5, None]}, protocol=protocol))
    assert loaded["n"] == [1, 2.5, None]
    assert loaded[b"data"].dtype == array.dtype and np.array_equal(loaded[b"data"], array)


def test_safe_unpickler_bounds_the_work_a_small_file_can_ask_for():
    from realnvp.data.safe_pickle import UnsafePickleError

    shared = [1]
    for _ in range(40):  # 2**40 paths through ~300 bytes: each level refers to the one below twice
        shared = [shared, shared]
    bomb = pickle.dumps(shared, protocol=2)
    assert len(bomb) < 400
    with pytest.raises(UnsafePickleError, match="nested more than"):
        safe_load(bomb)
    shared = [1]
    for _ in range(20):  # shallow sharing is fine, resolved once per container, still shared
        shared = [shared, shared]
    out = safe_load(pickle.dumps(shared, protocol=2))
    assert out[0] is out[1]
    loop = []
    loop.append(loop)
    with pytest.raises(UnsafePickleError, match="contains itself"):
        safe_load(pickle.dumps(loop, protocol=2))


def test_vector_batches_fetched_at_once_are_the_rows_fetched_one_by_one(monkeypatch):
    """``VectorDataset.__getitems__`` (the batched fetch, through the validation carve's
    ``Subset``) gives the batches that per-row ``__getitem__`` gives."""
    from torch.utils.data import DataLoader

    from realnvp.data.datasets import VectorDataset
    from realnvp.training.data import Carved

    ds = VectorDataset(np.random.default_rng(0).standard_normal((1000, 3)))
    carved = Carved(ds, list(range(0, 1000, 3)))

    def batches():
        loader = DataLoader(carved, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        return list(loader)

    fast = batches()
    monkeypatch.setattr(VectorDataset, "__getitems__", None)  # the fetcher's per-row path
    slow = batches()
    assert len(fast) == len(slow) == 6
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
