"""Arithmetic on :data:`fedray.records.Params` (lists of numpy arrays).

Layer 0: pure numpy. Functions never mutate their inputs, since arrays received
from Ray's object store are read-only views.

>>> a = [np.array([1.0, 2.0]), np.array([[3.0]])]
>>> [x.tolist() for x in add(a, scale(a, 2.0))]
[[3.0, 6.0], [[9.0]]]
>>> float(global_norm([np.array([3.0]), np.array([4.0])]))
5.0
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedray.records import Params


def zeros_like(params: Params, dtype: type | None = None) -> Params:
    """Writable zero arrays with the shapes of ``params``."""
    return [np.zeros(p.shape, dtype=dtype or p.dtype) for p in params]


def add(a: Params, b: Params) -> Params:
    """Element-wise ``a + b``."""
    return [x + y for x, y in zip(a, b, strict=True)]


def sub(a: Params, b: Params) -> Params:
    """Element-wise ``a - b``."""
    return [x - y for x, y in zip(a, b, strict=True)]


def scale(a: Params, factor: float) -> Params:
    """Element-wise ``factor * a``."""
    return [x * factor for x in a]


def global_norm(a: Params) -> float:
    """L2 norm of all arrays concatenated.

    >>> global_norm([np.ones(4)])
    2.0
    """
    return float(np.sqrt(sum(float(np.vdot(x, x)) for x in a)))


def all_finite(a: Params) -> bool:
    """True when no array holds NaN or Inf."""
    return all(bool(np.isfinite(x).all()) for x in a)


def flatten(a: Params) -> np.ndarray:
    """All arrays of ``a`` as one float64 vector, in order (empty ``a``: length 0).

    >>> flatten([np.ones((2, 2)), np.zeros(1)]).tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    return np.concatenate([np.ravel(x) for x in a]).astype(np.float64) if a else np.zeros(0)


def unflatten(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> Params:
    """``flat`` cut into arrays of ``shapes``, in order: the inverse of :func:`flatten`.

    >>> [x.shape for x in unflatten(np.arange(5.0), [(2, 2), (1,)])]
    [(2, 2), (1,)]
    """
    out, pos = [], 0
    for shape in shapes:
        k = math.prod(shape)
        out.append(flat[pos : pos + k].reshape(shape))
        pos += k
    return out


def unflatten_like(flat: np.ndarray, like: Params) -> Params:
    """``flat`` as arrays with the shapes and dtypes of ``like``."""
    parts = unflatten(flat, [np.shape(x) for x in like])
    return [p.astype(np.asarray(x).dtype) for p, x in zip(parts, like, strict=True)]


def structure_mismatch(candidate: Sequence[np.ndarray], reference: Params) -> str | None:
    """Describe how ``candidate`` differs in structure from ``reference``.

    Returns:
        ``None`` when both have the same number of arrays with the same shapes and
        dtypes, else a one-line description of the first difference.

    >>> structure_mismatch([np.zeros(2)], [np.zeros(3)])
    'array 0 has shape (2,), expected (3,)'
    """
    if len(candidate) != len(reference):
        return f"got {len(candidate)} arrays, expected {len(reference)}"
    for i, (c, r) in enumerate(zip(candidate, reference, strict=True)):
        if not isinstance(c, np.ndarray):
            return f"array {i} is a {type(c).__name__}, expected numpy.ndarray"
        if c.shape != r.shape:
            return f"array {i} has shape {c.shape}, expected {r.shape}"
        if c.dtype != r.dtype:
            return f"array {i} has dtype {c.dtype}, expected {r.dtype}"
    return None


ALIGN = 64
"""TensorFlow's CPU tensors must start on a 64-byte boundary (``EIGEN_MAX_ALIGN_BYTES``)."""


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an :data:`ALIGN` boundary.

    >>> aligned_empty((3, 5), np.float32).ctypes.data % ALIGN
    0
    """
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    out: np.ndarray = buf[start : start + nbytes].view(dt).reshape(shape)
    return out


def aligned_concatenate(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays)`` into an :func:`aligned_empty` array (no second copy).

    >>> x = aligned_concatenate([np.ones((2, 3)), np.zeros((1, 3))])
    >>> x.ctypes.data % ALIGN, float(x.sum())
    (0, 6.0)
    """
    shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
    out = aligned_empty(shape, np.result_type(*arrays))
    return np.concatenate(arrays, out=out)


def gather_rows(
    x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """The rows of ``parts`` in one aligned ``(x, y)``, and each part's views of it.

    >>> (x, _), views = gather_rows(np.arange(5.0), np.arange(5), [np.array([3, 1]), np.array([0])])
    >>> x.tolist(), [v[0].tolist() for v in views], np.shares_memory(views[1][0], x)
    ([3.0, 1.0, 0.0], [[3.0, 1.0], [0.0]], True)
    """
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    out = []
    for a in (x, y):
        taken = aligned_empty((len(order), *a.shape[1:]), a.dtype)
        np.take(a, order, axis=0, out=taken, mode="clip")  # "raise" would buffer a copy
        out.append(taken)
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    views = [(out[0][lo:hi], out[1][lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    return (out[0], out[1]), views
