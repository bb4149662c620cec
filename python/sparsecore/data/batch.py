"""The batch type every data source yields, and the batching / dedup helpers around it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .._core import io as _io

__all__ = ["Batch", "concat_batches", "dedup_ids", "rebatch"]

# (ids int64[n], offsets int64[bags + 1]) or (ids, offsets, weights float32[n])
Bag = tuple[np.ndarray, ...]


@dataclasses.dataclass
class Batch:
    """B samples in the engine's input format (docs/architecture.md, "One training step").

    ``sparse`` maps each feature group to ``(ids, offsets)`` or ``(ids, offsets, weights)``;
    pass it straight to ``EmbeddingCollection.forward``. ``labels`` is float32[B], ``dense``
    float32[B, k] where the format has dense features.

    Sample compression: when ``sample_group`` (int64[B]) is set, the groups named in
    ``shared`` carry one bag per page view (G bags) and sample i uses bag
    ``sample_group[i]``; :meth:`expand` gives the equivalent uncompressed batch.
    Synthetic batches also carry the planted click ``probabilities`` and ``users``
    (float64[B], int64[B]).
    """

    sparse: dict[str, Bag]
    labels: np.ndarray | None = None
    dense: np.ndarray | None = None
    sample_group: np.ndarray | None = None
    shared: frozenset[str] = frozenset()
    probabilities: np.ndarray | None = None
    users: np.ndarray | None = None
    num_samples: int = 0

    def __len__(self) -> int:
        return self.num_samples

    @property
    def size(self) -> int:
        return self.num_samples

    @property
    def compressed(self) -> bool:
        return self.sample_group is not None

    @property
    def num_views(self) -> int:
        """Page views in a compressed batch (bags of a shared group); B when uncompressed."""
        if self.sample_group is None:
            return self.num_samples
        return int(self.sample_group.max()) + 1 if self.num_samples else 0

    @classmethod
    def _from_core(cls, d: dict[str, Any]) -> Batch:
        sparse: dict[str, Bag] = {}
        shared = set()
        for name, ids, offsets, weights, is_shared in d["groups"]:
            sparse[name] = (ids, offsets) if weights is None else (ids, offsets, weights)
            if is_shared:
                shared.add(name)
        return cls(sparse=sparse, labels=d["labels"], dense=d["dense"], sample_group=d["sample_group"],
                   shared=frozenset(shared), probabilities=d["probabilities"], users=d["users"],
                   num_samples=int(d["num_samples"]))

    def expand(self) -> Batch:
        """The uncompressed twin: every shared group gets one bag per sample, a copy of its
        page view's bag. An uncompressed batch is returned as is."""
        if self.sample_group is None:
            return self
        sg = np.asarray(self.sample_group, dtype=np.int64)
        sparse = dict(self.sparse)
        for name in self.shared:
            ids, offsets, *weights = self.sparse[name]
            starts = offsets[sg]
            lengths = offsets[sg + 1] - starts
            new_offsets = np.zeros(len(sg) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            # position k of the expanded ids reads ids[starts[bag] + (k - new_offsets[bag])]
            gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
            sparse[name] = (ids[gather], new_offsets, *(w[gather] for w in weights))
        return dataclasses.replace(self, sparse=sparse, sample_group=None, shared=frozenset())

    def slice(self, begin: int, end: int) -> Batch:
        """Samples [begin, end) of an uncompressed batch (a copy-free view where possible)."""
        if self.sample_group is not None:
            raise ValueError("slice: expand() a compressed batch first")
        if not 0 <= begin <= end <= self.num_samples:
            raise ValueError(f"slice: [{begin}, {end}) is outside [0, {self.num_samples})")
        sparse = {}
        for name, (ids, offsets, *weights) in self.sparse.items():
            lo, hi = int(offsets[begin]), int(offsets[end])
            sparse[name] = (ids[lo:hi], offsets[begin:end + 1] - lo, *(w[lo:hi] for w in weights))

        def rows(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[begin:end]

        return dataclasses.replace(self, sparse=sparse, labels=rows(self.labels), dense=rows(self.dense),
                                   probabilities=rows(self.probabilities), users=rows(self.users),
                                   num_samples=end - begin)

    def take(self, indices: np.ndarray) -> Batch:
        """The samples at ``indices`` (int64[k], any order, repeats allowed) of an uncompressed
        batch, as a new batch in that order."""
        if self.sample_group is not None:
            raise ValueError("take: expand() a compressed batch first")
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= self.num_samples)):
            raise ValueError(f"take: indices must be 1-D within [0, {self.num_samples})")
        sparse = {}
        for name, (ids, offsets, *weights) in self.sparse.items():
            starts = offsets[idx]
            lengths = offsets[idx + 1] - starts
            new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
            sparse[name] = (ids[gather], new_offsets, *(w[gather] for w in weights))

        def rows(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return dataclasses.replace(self, sparse=sparse, labels=rows(self.labels), dense=rows(self.dense),
                                   probabilities=rows(self.probabilities), users=rows(self.users),
                                   num_samples=len(idx))


def concat_batches(batches: Iterable[Batch]) -> Batch:
    """One uncompressed batch holding the samples of ``batches`` in order (same groups)."""
    parts = [b.expand() for b in batches]
    if not parts:
        raise ValueError("concat_batches: no batches")
    names = list(parts[0].sparse)
    for b in parts[1:]:
        if list(b.sparse) != names:
            raise ValueError(f"concat_batches: groups differ: {names} vs {list(b.sparse)}")
    sparse = {}
    for name in names:
        groups = [b.sparse[name] for b in parts]
        shift = np.cumsum([0] + [len(g[0]) for g in groups[:-1]])
        offsets = np.concatenate([groups[0][1][:1]] + [g[1][1:] + s for g, s in zip(groups, shift)])
        sparse[name] = (np.concatenate([g[0] for g in groups]), offsets.astype(np.int64, copy=False),
                        *([np.concatenate([g[2] for g in groups])] if len(groups[0]) == 3 else []))

    def cat(field: str) -> np.ndarray | None:
        arrays = [getattr(b, field) for b in parts]
        if any(a is None for a in arrays):
            return None
        return np.concatenate(arrays)

    return Batch(sparse=sparse, labels=cat("labels"), dense=cat("dense"), probabilities=cat("probabilities"),
                 users=cat("users"), num_samples=sum(b.num_samples for b in parts))


def rebatch(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Cuts a stream of batches of any sizes into batches of exactly ``batch_size`` samples
    (the last one may be smaller), preserving sample order."""
    if batch_size < 1:
        raise ValueError(f"rebatch: batch_size must be >= 1, got {batch_size}")
    pending: list[Batch] = []
    count = 0
    for b in batches:
        b = b.expand()
        pending.append(b)
        count += b.num_samples
        while count >= batch_size:
            whole = concat_batches(pending) if len(pending) > 1 else pending[0]
            yield whole.slice(0, batch_size)
            rest = whole.slice(batch_size, whole.num_samples)
            pending, count = ([rest] if rest.num_samples else []), rest.num_samples
    if count:
        yield concat_batches(pending) if len(pending) > 1 else pending[0]


def dedup_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique, inverse) of int64 ``ids``: unique in order of first occurrence, and
    ``ids == unique[inverse]``. Every int64 is a legal id."""
    a = np.asarray(ids)
    if a.dtype != np.int64:
        raise TypeError(f"dedup_ids: ids must be int64, got {a.dtype}")
    return _io.dedup_ids(a)
