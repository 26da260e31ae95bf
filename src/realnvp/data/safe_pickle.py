"""A restricted unpickler for the CIFAR-10 python batches.

The CIFAR batches are pickles (protocol 2, written by Python 2) of a dict holding a numpy array.
Unpickling an untrusted file with :mod:`pickle` can run arbitrary code, because the file names
callables (``os.system``, ``builtins.eval``, ...) that the unpickler imports and calls.

This reader never imports or calls anything the file names. ``find_class`` answers only the
globals that pickled numpy arrays and bytes use (``_reconstruct``, ``ndarray``, ``dtype``,
``_frombuffer`` for protocol 5, and ``_codecs.encode`` / ``bytes()``, which Python 3 writes for
bytes at protocol <= 2) with local stand-ins that merely check and record their arguments;
arrays are then built here with :func:`numpy.frombuffer` from plain bytes, after checking the
dtype is a simple numeric one and the byte count matches the shape. Every other global is
refused.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from typing import Any

import numpy as np

# Simple numeric dtypes only: no object, structured, string or datetime arrays.
_DTYPE_RE = re.compile(r"^[<>|=]?(b1|[uif][1248]|f16)$")
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
_MAX_ITEMS = 1 << 34  # refuse absurd shapes before multiplying sizes out


class UnsafePickleError(Exception):
    """The pickle asked for something other than plain containers and numeric arrays."""


class _NDArrayType:
    """Stand-in for ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


class _DTypeStub:
    """Stand-in for ``numpy.dtype(name, align, copy)`` followed by ``__setstate__``."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if not isinstance(name, str) or not _DTYPE_RE.match(name):
            raise UnsafePickleError(f"array dtype {name!r} is not a simple numeric type")
        self.name = name
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, flags)
        if not isinstance(state, tuple) or len(state) < 5:
            raise UnsafePickleError("malformed dtype state")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"bad dtype byte order {order!r}")
        if any(part is not None for part in state[2:5]):
            raise UnsafePickleError("structured or sub-array dtypes are not allowed")
        self.order = order

    def resolve(self) -> np.dtype:
        name = self.name.lstrip("<>|=")
        return np.dtype(name).newbyteorder(self.order) if self.order in "<>" else np.dtype(name)


def _as_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape):
        raise UnsafePickleError(f"bad array shape {shape!r}")
    if len(shape) > 8 or math.prod(shape) > _MAX_ITEMS:
        raise UnsafePickleError(f"implausible array shape {shape!r}")
    return shape


def _build_array(raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, _DTypeStub):
        raise UnsafePickleError("array dtype was not built from numpy.dtype")
    if isinstance(raw, str):  # Python 2 str read with encoding='latin1'
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray):
        raise UnsafePickleError("array payload is not raw bytes (object arrays are not allowed)")
    shape = _as_shape(shape)
    dt = dtype.resolve()
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise UnsafePickleError(
            f"array payload has {len(raw)} bytes; shape {shape} of {dt} needs "
            f"{math.prod(shape) * dt.itemsize}"
        )
    flat = np.frombuffer(bytes(raw), dtype=dt)
    return flat.reshape(shape, order="F" if fortran else "C")


class _ArrayStub:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, rawdata) or the old 4-tuple form.
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise UnsafePickleError("malformed ndarray state")
        shape, dtype, fortran, raw = state
        self.array = _build_array(raw, dtype, shape, bool(fortran))


def _reconstruct(subtype: Any, shape: Any = (0,), dtype: Any = b"b") -> _ArrayStub:
    if subtype is not _NDArrayType:
        raise UnsafePickleError("_reconstruct called with something other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if isinstance(buf, memoryview | pickle.PickleBuffer):
        buf = bytes(buf)
    return _build_array(buf, dtype, shape, order == "F")


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Python 3 pickles ``bytes`` at protocol <= 2 as ``_codecs.encode(str, 'latin1')``.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    # Python 3 pickles an empty ``bytes`` at protocol <= 2 as ``__builtin__.bytes()``; any other
    # use (``bytes(10**12)`` allocates) is refused.
    if args:
        raise UnsafePickleError("bytes(...) with arguments is not allowed")
    return b""


_ALLOWED = {
    "_reconstruct": _reconstruct,
    "ndarray": _NDArrayType,
    "dtype": _DTypeStub,
    "_frombuffer": _frombuffer,
    "encode": _codecs_encode,
    "bytes": _bytes,
}
_ALLOWED_MODULES = {
    "_reconstruct": _NUMPY_MODULES,
    "ndarray": ("numpy",),
    "dtype": ("numpy",),
    "_frombuffer": ("numpy.core.numeric", "numpy._core.numeric"),
    "encode": ("_codecs",),
    "bytes": ("__builtin__", "builtins"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES.get(name, ()):
            return _ALLOWED[name]
        raise UnsafePickleError(f"refused to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed")


#: Bounds on what a data file may build: nesting depth and container count. The CIFAR batches
#: are a dict of a few arrays and lists (depth 2); a crafted file nests far deeper, or shares one
#: container many times so that a naive walk does exponential work.
MAX_DEPTH = 32
MAX_CONTAINERS = 100_000
_IN_PROGRESS = object()


def _resolve(obj: Any) -> Any:
    """Replace array stand-ins by the arrays they built, inside plain containers.

    Each container is resolved once (shared ones stay shared), within :data:`MAX_DEPTH` and
    :data:`MAX_CONTAINERS`.
    """
    done: dict[int, Any] = {}

    def walk(o: Any, depth: int) -> Any:
        if isinstance(o, _ArrayStub):
            if o.array is None:
                raise UnsafePickleError("an ndarray was created but never filled")
            return o.array
        if isinstance(o, _DTypeStub | _NDArrayType):
            raise UnsafePickleError("stray numpy type object")
        if not isinstance(o, dict | list | tuple):
            return o
        if id(o) in done:
            if done[id(o)] is _IN_PROGRESS:
                raise UnsafePickleError("a container that contains itself")
            return done[id(o)]
        if depth >= MAX_DEPTH:
            raise UnsafePickleError(f"containers nested more than {MAX_DEPTH} deep")
        if len(done) >= MAX_CONTAINERS:
            raise UnsafePickleError(f"more than {MAX_CONTAINERS} containers")
        done[id(o)] = _IN_PROGRESS
        if isinstance(o, dict):
            out: Any = {k: walk(v, depth + 1) for k, v in o.items()}
        else:
            out = type(o)(walk(v, depth + 1) for v in o)
        done[id(o)] = out
        return out

    return walk(obj, 0)


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` allowing only builtin containers/scalars and numeric numpy arrays.

    Raises :class:`UnsafePickleError` for anything else (the caller turns it into a DataError),
    and lets :class:`pickle.UnpicklingError`/``EOFError`` etc. through for corrupt data.
    Python 2 ``str`` objects come back as ``bytes`` (``encoding='bytes'``), as for the real
    CIFAR files, whose keys are ``b'data'``, ``b'labels'``, ...
    """
    unpickler = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes")
    return _resolve(unpickler.load())
