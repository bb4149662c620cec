"""In-memory data as a source: NumPy arrays, a pandas DataFrame or a list of batches, read in
batches for a number of epochs, optionally shuffled (seeded, a new order every epoch).

Every source here has the reader interface (``next_batch()``, iteration, ``state_dict()`` /
``load_state_dict()``), so the :class:`~sparsecore.Trainer` trains on it, checkpoints its
position and resumes it like a file reader's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from .._arrays import as_int64
from .batch import Bag, Batch
from .hashing import hash_feature_bags

__all__ = ["ArrayData", "BatchList", "as_source"]


def _epoch_order(n: int, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    # A fresh permutation per epoch, a function of (seed, epoch) only: resuming replays it.
    return np.random.default_rng([int(seed) & (2**63 - 1), int(epoch)]).permutation(n).astype(np.int64)


def _check_common(batch_size: int, epochs: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")


def _column_to_bags(name: str, column: Any) -> tuple[np.ndarray, np.ndarray]:
    """One feature column as CSR bags (ids int64[m], offsets int64[N+1]).

    - integer array [N]: one id per sample, used as is;
    - integer array [N, L]: L ids per sample;
    - ``(ids, offsets)``: bags already in CSR form (offsets int64[N+1]);
    - str / bytes / object values [N] (or a pandas Series of them): hashed with
      :func:`~sparsecore.data.hash_features` under ``name``; missing values give empty bags.
    """
    if isinstance(column, tuple):
        if len(column) != 2:
            raise ValueError(f"feature '{name}': a tuple column must be (ids, offsets)")
        ids = as_int64(column[0], f"ids of feature '{name}'")
        offsets = as_int64(column[1], f"offsets of feature '{name}'")
        if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError(f"feature '{name}': offsets must be int64[N+1], start at 0, never decrease "
                             f"and end at len(ids) = {len(ids)}")
        return ids, offsets
    if hasattr(column, "to_numpy"):
        column = column.to_numpy()
    a = np.asarray(column)
    if a.dtype.kind in "iu":
        ids = as_int64(a, f"feature '{name}'")
        if ids.ndim == 1:
            return ids, np.arange(len(ids) + 1, dtype=np.int64)
        if ids.ndim == 2:
            n, width = ids.shape
            return np.ascontiguousarray(ids.reshape(-1)), np.arange(n + 1, dtype=np.int64) * width
        raise ValueError(f"feature '{name}': integer ids must be [N] or [N, L], got shape {ids.shape}")
    if a.dtype.kind in "USO":
        return hash_feature_bags(name, a)
    raise TypeError(f"feature '{name}' has dtype {a.dtype}: use integer ids, str/bytes values to hash, "
                    "or (ids, offsets)")


def _take_bags(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bags ``rows`` of a CSR column, in that order, as a new CSR pair."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    out_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    if len(offsets) - 1 == len(ids) and np.array_equal(offsets, np.arange(len(ids) + 1)):
        return ids[rows], out_offsets  # one id per sample
    index = np.repeat(starts - out_offsets[:-1], lengths) + np.arange(out_offsets[-1], dtype=np.int64)
    return ids[index], out_offsets


class ArrayData:
    """Samples held in memory, read ``batch_size`` at a time for ``epochs`` epochs.

    Args:
        features: feature group -> column (see below), or a pandas DataFrame whose columns are
            the groups (except ``label`` and the ``dense`` columns).
        labels: float labels [N] (a DataFrame's come from its ``label`` column).
        dense: float features [N, k], or for a DataFrame a list of its column names.
        shuffle: a new order every epoch, drawn from (``seed``, epoch).

    Columns: an integer array [N] (one id per sample, used as is) or [N, L] (L ids per
    sample); ``(ids, offsets)`` CSR bags with offsets int64[N+1]; or str / bytes / object
    values (a string or categorical DataFrame column), hashed with
    :func:`~sparsecore.data.hash_features` under the group's name, a missing value giving an
    empty bag (the CSV reader's rule).
    """

    kind = "arrays"

    def __init__(self, features: Any, labels: Any = None, *, dense: Any = None, batch_size: int = 1024,
                 epochs: int = 1, shuffle: bool = False, seed: int = 0, label: str = "label"):
        _check_common(batch_size, epochs)
        if hasattr(features, "columns") and hasattr(features, "iloc"):  # a pandas DataFrame
            df = features
            dense_cols = list(dense or [])
            if labels is None:
                if label not in df.columns:
                    raise ValueError(f"the DataFrame has no label column '{label}' (columns: {list(df.columns)}); "
                                     "pass label= or labels=")
                labels = df[label].to_numpy()
            missing = [c for c in dense_cols if c not in df.columns]
            if missing:
                raise ValueError(f"dense columns {missing} are not in the DataFrame")
            dense = df[dense_cols].to_numpy(dtype=np.float32) if dense_cols else None
            features = {str(c): df[c] for c in df.columns if c != label and c not in dense_cols}
        if not isinstance(features, Mapping) or not features:
            raise TypeError("features must be a non-empty mapping of group -> column, or a pandas DataFrame")
        self._groups = {str(g): _column_to_bags(str(g), col) for g, col in features.items()}
        sizes = {g: len(off) - 1 for g, (_, off) in self._groups.items()}
        n = next(iter(sizes.values()))
        if any(s != n for s in sizes.values()):
            raise ValueError(f"feature columns have different numbers of samples: {sizes}")
        self._labels = None
        if labels is not None:
            self._labels = np.ascontiguousarray(labels, dtype=np.float32)
            if self._labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {self._labels.shape}")
        self._dense = None
        if dense is not None:
            self._dense = np.ascontiguousarray(dense, dtype=np.float32)
            if self._dense.ndim != 2 or len(self._dense) != n:
                raise ValueError(f"dense must have shape ({n}, k), got {self._dense.shape}")
        self.num_samples, self.batch_size, self.epochs = n, int(batch_size), int(epochs)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.epoch, self.position = 0, 0
        self._order = _epoch_order(n, 0, self.shuffle, self.seed)

    @property
    def groups(self) -> list[str]:
        return list(self._groups)

    def next_batch(self) -> Optional[Batch]:
        """The next batch (the last one of an epoch may be smaller); None after the last epoch."""
        if self.num_samples == 0:
            return None
        if self.position >= self.num_samples:
            if self.epoch + 1 >= self.epochs:
                return None
            self.epoch += 1
            self.position = 0
            self._order = _epoch_order(self.num_samples, self.epoch, self.shuffle, self.seed)
        if self.epoch >= self.epochs:
            return None
        rows = self._order[self.position:self.position + self.batch_size]
        self.position += len(rows)
        sparse: dict[str, Bag] = {g: _take_bags(ids, offsets, rows) for g, (ids, offsets) in self._groups.items()}
        return Batch(sparse=sparse, labels=None if self._labels is None else self._labels[rows],
                     dense=None if self._dense is None else self._dense[rows], num_samples=len(rows))

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "epoch": self.epoch, "position": self.position, "num_samples": self.num_samples,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} source, this is {self.kind!r}")
        for key in ("num_samples", "shuffle", "seed"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state was saved with {key}={state.get(key)!r}, this source has "
                                 f"{getattr(self, key)!r}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not (0 <= epoch < self.epochs and 0 <= position <= self.num_samples):
            raise ValueError(f"state position (epoch {epoch}, sample {position}) is outside this source")
        self.epoch, self.position = epoch, position
        self._order = _epoch_order(self.num_samples, epoch, self.shuffle, self.seed)


class BatchList:
    """A list of ready batches as a source: each a :class:`Batch` or a tuple
    ``(sparse, labels)`` / ``(sparse, labels, dense)`` with ``sparse`` the engine's mapping
    group -> (ids, offsets[, weights]). Read for ``epochs`` epochs; ``shuffle`` changes the
    order of the batches each epoch (seeded)."""

    kind = "batches"

    def __init__(self, batches: Sequence[Any], *, epochs: int = 1, shuffle: bool = False, seed: int = 0):
        _check_common(1, epochs)
        self._batches = [self._as_batch(i, b) for i, b in enumerate(batches)]
        self.epochs, self.shuffle, self.seed = int(epochs), bool(shuffle), int(seed)
        self.epoch, self.position = 0, 0
        self._order = _epoch_order(len(self._batches), 0, self.shuffle, self.seed)

    @staticmethod
    def _as_batch(i: int, b: Any) -> Batch:
        if isinstance(b, Batch):
            return b
        if isinstance(b, tuple) and len(b) in (2, 3) and isinstance(b[0], Mapping):
            labels = np.ascontiguousarray(b[1], dtype=np.float32)
            dense = None if len(b) == 2 or b[2] is None else np.ascontiguousarray(b[2], dtype=np.float32)
            return Batch(sparse=dict(b[0]), labels=labels, dense=dense, num_samples=len(labels))
        raise TypeError(f"batch {i} is {type(b).__name__}; want a sparsecore.data.Batch or (sparse, labels[, dense])")

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def next_batch(self) -> Optional[Batch]:
        if not self._batches:
            return None
        if self.position >= len(self._batches):
            if self.epoch + 1 >= self.epochs:
                return None
            self.epoch += 1
            self.position = 0
            self._order = _epoch_order(len(self._batches), self.epoch, self.shuffle, self.seed)
        batch = self._batches[int(self._order[self.position])]
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "epoch": self.epoch, "position": self.position,
                "num_batches": len(self._batches), "shuffle": self.shuffle, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} source, this is {self.kind!r}")
        if state.get("num_batches") != len(self._batches) or state.get("shuffle") != self.shuffle \
                or state.get("seed") != self.seed:
            raise ValueError("state was saved for another list of batches (count, shuffle or seed differ)")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not (0 <= epoch < self.epochs and 0 <= position <= len(self._batches)):
            raise ValueError(f"state position (epoch {epoch}, batch {position}) is outside this source")
        self.epoch, self.position = epoch, position
        self._order = _epoch_order(len(self._batches), epoch, self.shuffle, self.seed)


def is_source(data: Any) -> bool:
    """True for objects with the reader interface (``next_batch()``)."""
    return callable(getattr(data, "next_batch", None))


def as_source(data: Any, *, batch_size: Optional[int] = None, epochs: int = 1, shuffle: bool = False,
              seed: int = 0, label: str = "label") -> Any:
    """``data`` as a source: a reader is returned as is; a DataFrame, a ``features`` mapping,
    a ``(features, labels)`` or ``(features, labels, dense)`` tuple becomes :class:`ArrayData`;
    a list of batches becomes :class:`BatchList`."""
    if is_source(data):
        if epochs != 1 or shuffle or batch_size is not None:
            raise ValueError("batch_size, epochs and shuffle apply to in-memory data; a reader "
                             f"({type(data).__name__}) is read as it is configured")
        return data
    size = 1024 if batch_size is None else batch_size
    if hasattr(data, "columns") and hasattr(data, "iloc"):
        return ArrayData(data, batch_size=size, epochs=epochs, shuffle=shuffle, seed=seed, label=label)
    if isinstance(data, Mapping):
        return ArrayData(data, batch_size=size, epochs=epochs, shuffle=shuffle, seed=seed)
    if isinstance(data, tuple) and len(data) in (2, 3) and (isinstance(data[0], Mapping) or hasattr(data[0], "iloc")):
        dense = data[2] if len(data) == 3 else None
        return ArrayData(data[0], data[1], dense=dense, batch_size=size, epochs=epochs, shuffle=shuffle,
                         seed=seed, label=label)
    if isinstance(data, (list, tuple)):
        if batch_size is not None:
            raise ValueError("batch_size does not apply to a list of batches (they are already batched)")
        return BatchList(data, epochs=epochs, shuffle=shuffle, seed=seed)
    raise TypeError(f"cannot train on {type(data).__name__}: pass a reader (next_batch()), a DataFrame, "
                    "a mapping of feature arrays, (features, labels[, dense]) or a list of batches")
