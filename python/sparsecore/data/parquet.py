"""Parquet reader (optional extra: ``pip install sparsecore[data]``, i.e. pyarrow).

Columns follow the same declared schema as CsvReader and produce the same ids: a
categorical value is hashed from its text (integers as decimal text, so a Parquet int column
and the same column in CSV give equal ids); a ``multi_categorical`` column is a list column.
Null or empty categorical values are missing (no id); a null dense value reads as 0; a row
with a null label is skipped and counted as malformed. Reads row-group batches, so memory is
bounded by ``batch_size`` plus one record batch; position = (file index, row).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .._core import io as _io
from .batch import Bag, Batch
from .readers import MalformedLine, PathsLike, _paths, check_state
from .schema import ColumnsLike, normalize_columns

__all__ = ["ParquetReader"]

log = logging.getLogger(__name__)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ParquetReader needs pyarrow: pip install 'sparsecore[data]'") from e
    return pa, pc, pq


def _string_buffers(arr) -> tuple[np.ndarray, np.ndarray]:
    """(value_offsets int64[n + 1], data uint8) of a large_string array without nulls."""
    _, offsets, data = arr.buffers()
    value_offsets = np.frombuffer(offsets, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    bytes_ = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return np.ascontiguousarray(value_offsets), bytes_


class ParquetReader:
    kind = "parquet"

    def __init__(self, paths: PathsLike, columns: ColumnsLike, *, batch_size: int = 4096,
                 max_reported_errors: int = 100) -> None:
        pa, pc, pq = _pyarrow()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.paths = _paths(paths)
        self.columns = normalize_columns(columns)
        self.batch_size = batch_size
        self.max_reported_errors = max_reported_errors
        self._files = []
        for p in self.paths:
            try:
                f = pq.ParquetFile(p)
            except OSError as e:
                raise OSError(f"{p}: cannot open: {e}") from e
            except Exception as e:  # pyarrow raises ArrowInvalid for a file that is not Parquet
                raise OSError(f"{p}: not a readable Parquet file: {e}") from e
            missing = [c.name for c in self.columns if c.type != "ignore" and c.name not in f.schema_arrow.names]
            if missing:
                raise ValueError(f"{p}: schema names columns the file lacks: {missing}")
            self._files.append(f)
        self._groups: list[str] = []
        for c in self.columns:
            g = c.group or c.name
            if c.type in ("categorical", "multi_categorical") and g not in self._groups:
                self._groups.append(g)
        self._file_index = 0
        self._row = 0
        self._iter: Iterator[Any] | None = None
        # A pyarrow.RecordBatch of rows read but not yet returned (pyarrow is imported lazily).
        self._pending: Any = None
        self.samples_read = 0
        self.malformed_count = 0
        self.malformed_lines: list[MalformedLine] = []

    # -- reading ---------------------------------------------------------------------------
    def _open_iter(self) -> Iterator[Any]:
        f = self._files[self._file_index]
        meta = f.metadata
        first_rg, before = 0, 0
        while first_rg < meta.num_row_groups and before + meta.row_group(first_rg).num_rows <= self._row:
            before += meta.row_group(first_rg).num_rows
            first_rg += 1
        names = [c.name for c in self.columns if c.type != "ignore"]
        row_groups = list(range(first_rg, meta.num_row_groups))
        self._iter = iter(f.iter_batches(batch_size=self.batch_size, row_groups=row_groups, columns=names)
                          if row_groups else ())
        self._skip = self._row - before  # rows of the first batch already consumed
        return self._iter

    def _take_rows(self, n: int):
        """Up to n rows of the current file as a RecordBatch (None at the end of the file)."""
        if self._pending is None or len(self._pending) == 0:
            batches = self._iter if self._iter is not None else self._open_iter()
            rb = next(batches, None)
            while rb is not None and self._skip >= len(rb):
                self._skip -= len(rb)
                rb = next(batches, None)
            if rb is None:
                return None
            self._pending, self._skip = rb.slice(self._skip), 0
        out = self._pending.slice(0, n)
        self._pending = self._pending.slice(len(out))
        return out

    def next_batch(self, batch_size: int | None = None) -> Batch | None:
        pa, _, _ = _pyarrow()
        want = batch_size or self.batch_size
        parts, rows = [], 0
        while rows < want and self._file_index < len(self._files):
            rb = self._take_rows(want - rows)
            if rb is None:
                self._file_index, self._row, self._iter, self._pending = self._file_index + 1, 0, None, None
                continue
            parts.append((self._file_index, self._row, rb))
            self._row += len(rb)
            rows += len(rb)
        if not parts:
            return None
        batch = self._convert(parts)
        self.samples_read += batch.num_samples
        return batch if batch.num_samples else self.next_batch(batch_size)

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    # -- conversion ------------------------------------------------------------------------
    def _convert(self, parts) -> Batch:
        pa, pc, _ = _pyarrow()
        table = pa.Table.from_batches([rb for _, _, rb in parts]).combine_chunks()
        label_cols = [c for c in self.columns if c.type == "label"]
        if label_cols:
            label = table.column(label_cols[0].name)
            bad = np.asarray(pc.is_null(label).to_numpy(zero_copy_only=False), dtype=bool)
            if bad.any():
                starts = np.cumsum([0] + [len(rb) for _, _, rb in parts])
                for i in np.flatnonzero(bad):
                    k = int(np.searchsorted(starts, i, side="right") - 1)
                    f, row0, _ = parts[k]
                    self.malformed_count += 1
                    if len(self.malformed_lines) < self.max_reported_errors:
                        self.malformed_lines.append(MalformedLine(self.paths[f], row0 + int(i - starts[k]) + 1,
                                                                  "label is null"))
                log.warning("ParquetReader: %d row(s) with a null label skipped so far", self.malformed_count)
                table = table.filter(pa.array(~bad))
        n = table.num_rows

        def floats(name: str) -> np.ndarray:
            col = pc.fill_null(pc.cast(table.column(name), pa.float32()), 0.0)
            return np.asarray(col.to_numpy(), dtype=np.float32)

        labels = floats(label_cols[0].name) if label_cols else None
        dense_cols = [c.name for c in self.columns if c.type == "dense"]
        dense = np.stack([floats(c) for c in dense_cols], axis=1) if dense_cols else None
        per_group: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {g: [] for g in self._groups}
        for c in self.columns:
            if c.type == "categorical":
                values = pc.fill_null(pc.cast(table.column(c.name).combine_chunks(), pa.large_string()), "")
                bag_offsets = np.arange(n + 1, dtype=np.int64)
            elif c.type == "multi_categorical":
                lists = table.column(c.name).combine_chunks()
                lists = pc.cast(lists, pa.large_list(pa.large_string()))
                if lists.null_count:
                    lists = pc.if_else(pc.is_null(lists), pa.scalar([], type=lists.type), lists)
                bag_offsets = np.asarray(lists.offsets, dtype=np.int64)
                values = pc.fill_null(lists.values, "")
            else:
                continue
            value_offsets, data = _string_buffers(values)
            per_group[c.group or c.name].append(_io.hash_string_bags(c.name, value_offsets, data, bag_offsets))
        sparse: dict[str, Bag] = {g: _merge_bags(bags, n) for g, bags in per_group.items()}
        return Batch(sparse=sparse, labels=labels, dense=dense, num_samples=n)

    # -- position --------------------------------------------------------------------------
    @property
    def position(self) -> tuple[int, int]:
        if self._file_index < len(self._files) and self._row >= self._files[self._file_index].metadata.num_rows:
            return (self._file_index + 1, 0)
        return (self._file_index, self._row)

    def seek(self, position: Sequence[int]) -> None:
        file_index, row = (int(x) for x in position)
        if not 0 <= file_index <= len(self._files):
            raise ValueError(f"seek: file_index {file_index} outside [0, {len(self._files)}]")
        limit = self._files[file_index].metadata.num_rows if file_index < len(self._files) else 0
        if not 0 <= row <= limit:
            raise ValueError(f"seek: row {row} outside [0, {limit}]")
        self._file_index, self._row, self._iter, self._pending = file_index, row, None, None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": list(self.paths), "position": list(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self.kind, self.paths)
        self.seek(state["position"])


def _merge_bags(bags: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """One group fed by several columns: sample i's bag is column 1's ids, then column 2's..."""
    if len(bags) == 1:
        return bags[0]
    lengths = np.stack([np.diff(off) for _, off in bags], axis=1)  # [n, columns]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=1), out=offsets[1:])
    ids = np.empty(offsets[-1], dtype=np.int64)
    start = offsets[:-1].copy()
    for (col_ids, col_off), length in zip(bags, lengths.T):
        dst = np.repeat(start - col_off[:-1], length) + np.arange(col_off[-1], dtype=np.int64)
        ids[dst] = col_ids
        start += length
    return ids, offsets
