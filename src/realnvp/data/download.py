"""Fetching CIFAR-10, MNIST and Fashion-MNIST from their distribution sites.

Every file is streamed to a temporary file beside its destination, checked against the MD5 in
:data:`CHECKSUMS` (the checksums the data sets' authors and torchvision publish) and only then
renamed into place, so an interrupted or corrupted download never leaves a file that looks
complete. Mirrors are tried in order; a mirror that fails or serves a wrong checksum is skipped.
The CIFAR-10 tarball is unpacked member by member: absolute paths, ``..`` components, links and
device files are refused, and the result is moved into place only after the whole archive has
been read.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.request import urlopen

from ..atomic import replacing
from .errors import DataError

TIMEOUT_S = 60
CHUNK = 1 << 20

# Base URLs, tried in order. MNIST: the PyTorch mirror first because yann.lecun.com (the original
# site) often refuses automated downloads; the checksums make the two interchangeable.
MIRRORS: dict[str, tuple[str, ...]] = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# MD5 of each file to fetch, per data set.
CHECKSUMS: dict[str, dict[str, str]] = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

DOWNLOADABLE = tuple(CHECKSUMS)
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity check against published MD5s
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_one(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` into ``dest`` atomically; raise DataError on a checksum mismatch."""
    with replacing(dest) as tmp:
        digest = hashlib.md5(usedforsecurity=False)
        with open(tmp, "wb") as out, urlopen(url, timeout=TIMEOUT_S) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"{url}: checksum mismatch for {dest.name} (md5 {digest.hexdigest()}, "
                f"expected {md5}); file discarded"
            )


def fetch(name: str, filename: str, data_dir: Path) -> Path:
    """Download ``filename`` of data set ``name`` into ``data_dir`` unless verified there."""
    md5 = CHECKSUMS[name][filename]
    dest = data_dir / filename
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    data_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in MIRRORS[name]:
        url = base + filename
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            _fetch_one(url, dest, md5)
            return dest
        except DataError as exc:
            failures.append(str(exc))
        except _NETWORK_ERRORS as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
    raise DataError(f"{name}: could not download {filename}: " + "; ".join(failures))


def _check_member(archive: Path, member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or ":" in name:
        raise DataError(f"{archive}: refusing unsafe member path {name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing member {name!r} (links and devices not allowed)")
    return path


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract regular files and folders of a tar archive into ``dest``; return the top entries.

    Members are written into a staging folder inside ``dest`` and moved into place only once the
    whole archive has been read, replacing older copies of the same top-level entries.
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    rel = _check_member(archive, member)
                    target = staging.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    if source is None:
                        raise DataError(f"{archive}: cannot read member {member.name!r}")
                    with source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{archive}: corrupt or truncated archive ({exc})") from exc
        moved = []
        for entry in sorted(staging.iterdir()):
            final = dest / entry.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(entry, final)
            moved.append(final)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_cifar10(data_dir: Path) -> Path:
    """Fetch and unpack CIFAR-10; returns ``data_dir/cifar-10-batches-py``."""
    archive = fetch("cifar10", "cifar-10-python.tar.gz", data_dir)
    safe_extract(archive, data_dir)
    folder = data_dir / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataError(f"{archive}: archive did not contain cifar-10-batches-py/")
    return folder


def download_idx(name: str, data_dir: Path) -> list[Path]:
    """Fetch the four gzipped IDX files of ``mnist`` or ``fashion-mnist`` (kept compressed)."""
    return [fetch(name, filename, data_dir) for filename in CHECKSUMS[name]]


def download(name: str, data_dir: Path) -> None:
    """Download data set ``name`` (one of :data:`DOWNLOADABLE`) into ``data_dir``."""
    if name == "cifar10":
        download_cifar10(data_dir)
    elif name in ("mnist", "fashion-mnist"):
        download_idx(name, data_dir)
    else:
        raise DataError(f"{name}: no automatic download; fetch it yourself and pass data_dir")
