"""Feature hashing over whole arrays: the same ids as :func:`feature_id`, one compiled call.

A value's id is the hash of (feature name, value text) documented in
csrc/sparsecore/io/feature_hash.h; the readers hash every categorical field that way.
Value text: ``str`` values as UTF-8, ``bytes`` as they are, integers as decimal text (as the
Parquet reader writes them). Floats are refused (``1.0`` and ``1`` would hash differently
from the text a file holds): convert them to the text you mean first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core import io as _io

__all__ = ["hash_features", "hash_feature_bags"]


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where an object array holds None or a float NaN (pandas' missing values)."""
    if values.dtype != object:
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in values), dtype=bool,
                       count=len(values))


def _as_bytes(values: Any, what: str) -> np.ndarray:
    """A fixed-width bytes array (numpy 'S') of the value texts; 1-D."""
    if hasattr(values, "to_numpy"):  # pandas Series / Index
        values = values.to_numpy()
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    kind = a.dtype.kind
    if kind == "S":
        return a
    if kind == "U":
        return np.char.encode(a, "utf-8")
    if kind in "iu" or kind == "b":
        if kind == "b":
            raise TypeError(f"{what}: bool values are ambiguous as feature text; convert them to str or int")
        return a.astype("S")  # decimal text
    if kind == "O":
        out = []
        for i, v in enumerate(a):
            if isinstance(v, bytes):
                out.append(v)
            elif isinstance(v, str):
                out.append(v.encode())
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                out.append(str(int(v)).encode())
            else:
                raise TypeError(f"{what}[{i}] is {type(v).__name__}; feature values are str, bytes or int")
        return np.array(out, dtype="S") if out else np.zeros(0, dtype="S1")
    raise TypeError(f"{what} has dtype {a.dtype}; feature values are str, bytes or integers "
                    "(convert floats to the text you mean first)")


def _hash_bytes(feature: str, data: np.ndarray, bag_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calls the compiled hasher on a fixed-width bytes array (one value per row)."""
    n = len(data)
    width = max(data.dtype.itemsize, 1)
    raw = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8).reshape(n, width) if n else \
        np.zeros((0, width), np.uint8)
    # numpy 'S' arrays are NUL-padded: a value's length is up to its last non-NUL byte.
    nonzero = raw != 0
    lengths = np.where(nonzero.any(axis=1), width - np.argmax(nonzero[:, ::-1], axis=1), 0).astype(np.int64)
    keep = np.arange(width)[None, :] < lengths[:, None]
    flat = np.ascontiguousarray(raw[keep])
    value_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=value_offsets[1:])
    return _io.hash_string_bags(feature, value_offsets, flat, np.ascontiguousarray(bag_offsets, dtype=np.int64))


def hash_features(feature: str, values: Any) -> np.ndarray:
    """int64[n] ids of ``values`` (1-D array, list or pandas Series of str, bytes or int) under
    ``feature``: ``hash_features(f, v)[i] == feature_id(f, v[i])`` for every i (integers as
    their decimal text). Missing values (None, NaN) raise ValueError; see
    :func:`hash_feature_bags` to treat them as empty bags."""
    if not isinstance(feature, str):
        raise TypeError(f"feature must be a str, got {type(feature).__name__}")
    a = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    missing = _missing_mask(a) if a.ndim == 1 else None
    if missing is not None and missing.any():
        raise ValueError(f"hash_features('{feature}'): value {int(np.argmax(missing))} is missing (None/NaN)")
    data = _as_bytes(a, f"values of feature '{feature}'")
    n = len(data)
    empty = np.char.str_len(data) == 0 if n else np.zeros(0, dtype=bool)
    ids, _ = _hash_bytes(feature, data, np.arange(n + 1, dtype=np.int64))
    if not empty.any():
        return ids
    # The compiled hasher skips empty values (a reader's missing field); here "" is a value.
    out = np.empty(n, dtype=np.int64)
    out[~empty] = ids
    out[empty] = _io.feature_value_id(feature, b"")
    return out


def hash_feature_bags(feature: str, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[m], offsets int64[n+1]): one bag per value, the reader's rule for a
    categorical column: a missing (None/NaN) or empty value gives an empty bag."""
    if not isinstance(feature, str):
        raise TypeError(f"feature must be a str, got {type(feature).__name__}")
    a = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    if a.ndim != 1:
        raise ValueError(f"values of feature '{feature}' must be 1-D, got shape {a.shape}")
    missing = _missing_mask(a)
    if missing.any():
        a = a.copy()
        a[missing] = b""
    data = _as_bytes(a, f"values of feature '{feature}'")
    return _hash_bytes(feature, data, np.arange(len(data) + 1, dtype=np.int64))
