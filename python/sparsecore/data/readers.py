"""Streaming readers of sample files: Criteo TSV, libsvm, libffm, CSV (compiled core).

Every reader reads its files in blocks (memory does not grow with file size), parses on
``num_threads`` threads ahead of the consumer and yields :class:`Batch` objects in file
order. Files may be gzip-compressed (recognised by their first bytes, whatever their name);
zstd files are refused with a message saying how to decompress them. Malformed lines are
skipped and counted (``malformed_count``; the first ``max_reported_errors`` in
``malformed_lines`` with path and line number), but data that is mostly not what the format
says raises :class:`sparsecore.CorruptDataError` (a ValueError) naming the first bad line
(``file:line: why``): when the data ends with malformed lines and no sample, or when more than
``max_bad_fraction`` of the lines read are malformed (judged at the end, and mid-stream once
1000 lines were read; 1.0 turns both checks off). ``state_dict()``
saves the position (file, byte offset, line) of the next unread sample; a reader built over
the same files and given ``load_state_dict()`` resumes there: no sample twice, none skipped.

Options every reader takes: ``batch_size`` (4096), ``num_threads`` (parsing threads, 1),
``block_bytes`` (4 MiB), ``prefetch_blocks`` (2), ``max_reported_errors`` (100),
``max_bad_fraction`` (0.01), ``shard`` (None). To read files for several epochs or shuffled,
wrap a reader factory in :class:`sparsecore.data.Epochs`.

``shard=(index, count)``: this reader is worker ``index`` of ``count`` and reads only its part
of the files - whole files when there are at least ``count`` of them (``paths[index::count]``),
else a range of whole lines of one file (:mod:`sparsecore.data.shard`); the parts of the
``count`` workers are disjoint and together are all the data. ``state_dict()`` records the
shard, and ``load_state_dict()`` refuses a state of another shard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Union

from .._core import io as _io
from .batch import Batch
from .schema import Column, ColumnsLike, normalize_columns
from .shard import shard_parts

__all__ = ["CriteoReader", "CsvReader", "LibffmReader", "LibsvmReader", "MalformedLine", "ReaderPosition", "read_header"]

log = logging.getLogger(__name__)

PathsLike = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


class ReaderPosition(NamedTuple):
    file_index: int
    byte_offset: int
    line_number: int


class MalformedLine(NamedTuple):
    path: str
    line_number: int  # 1-based
    reason: str


def _paths(paths: PathsLike) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError("paths is empty")
    return out


class _TextReader:
    kind = "text"

    def __init__(self, paths: PathsLike, fmt: Any, *, batch_size: int, num_threads: int, block_bytes: int,
                 prefetch_blocks: int, max_reported_errors: int, max_bad_fraction: float,
                 shard: Any = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts = shard_parts(_paths(paths), shard)
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self._parts = [list(p[1:]) for p in parts]
        self.paths = [p.path for p in parts]  # the files this reader reads (its shard's)
        self.batch_size = batch_size
        self._reader = _io.TextReader(self.paths, fmt, block_bytes=block_bytes, num_threads=num_threads,
                                      prefetch_blocks=prefetch_blocks, max_reported_errors=max_reported_errors,
                                      max_bad_fraction=max_bad_fraction,
                                      end_offsets=[] if shard is None else [p.end for p in parts])
        self._start = (0, parts[0].begin, parts[0].line)
        if parts[0].end != -1 and parts[0].begin >= parts[0].end:  # an empty range of lines
            self._start = (1, 0, 0)
        if self._start != (0, 0, 0):
            self.seek(self._start)
        self._warned = 0

    def next_batch(self, batch_size: int | None = None) -> Batch | None:
        """The next ``batch_size`` samples (fewer at the end); None once all were read."""
        b = Batch._from_core(self._reader.next_batch(batch_size or self.batch_size))
        count = self._reader.malformed_count
        if count > self._warned:
            first = self.malformed_lines[self._warned] if self._warned < len(self.malformed_lines) else None
            log.warning("%s: %d malformed line(s) skipped so far%s", type(self).__name__, count,
                        f" (e.g. {first.path}:{first.line_number}: {first.reason})" if first else "")
            self._warned = count
        return b if b.num_samples else None

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    @property
    def position(self) -> ReaderPosition:
        return ReaderPosition(*self._reader.position)

    def seek(self, position: Sequence[int]) -> None:
        self._reader.seek(*ReaderPosition(*position))

    @property
    def samples_read(self) -> int:
        return self._reader.samples_read

    @property
    def malformed_count(self) -> int:
        return self._reader.malformed_count

    @property
    def malformed_lines(self) -> list[MalformedLine]:
        return [MalformedLine(self.paths[f], line, reason) for f, line, reason in self._reader.malformed_lines]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (and shard: index, count and each part's [begin, first
        line, end]), for checkpoints."""
        state: dict[str, Any] = {"kind": self.kind, "paths": list(self.paths), "position": list(self.position)}
        if self.shard is not None:
            state["shard"] = {"index": self.shard[0], "count": self.shard[1], "parts": self._parts}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self.kind, self.paths)
        saved = state.get("shard")
        mine = None if self.shard is None else {"index": self.shard[0], "count": self.shard[1], "parts": self._parts}
        if saved != mine:
            def describe(s: Any) -> str:
                return "all the data" if s is None else f"shard {s.get('index')} of {s.get('count')} {s.get('parts')}"

            raise ValueError(f"state was saved by a reader of {describe(saved)}, this one reads {describe(mine)}")
        self.seek(state["position"])


def check_state(state: dict[str, Any], kind: str, paths: list[str]) -> None:
    """Raises ValueError unless ``state`` was saved by a ``kind`` source over as many files."""
    if state.get("kind") != kind:
        raise ValueError(f"state is for a {state.get('kind')!r} source, this is {kind!r}")
    if len(state["paths"]) != len(paths):
        raise ValueError(f"state covers {len(state['paths'])} files, this reader {len(paths)}")
    if [os.path.basename(p) for p in state["paths"]] != [os.path.basename(p) for p in paths]:
        log.warning("resuming over files with other names than the saved ones: %s", state["paths"])


_OPTION_DEFAULTS = {"batch_size": 4096, "num_threads": 1, "block_bytes": 4 << 20, "prefetch_blocks": 2,
                    "max_reported_errors": 100, "max_bad_fraction": 0.01, "shard": None}


def _reader_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_OPTION_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected arguments: {sorted(unknown)}")
    return {**_OPTION_DEFAULTS, **options}


class CriteoReader(_TextReader):
    """Criteo TSV: label, I1..I13, C1..C26. Batches: labels, dense float32[B, 13] (missing
    = 0), groups "C1".."C26" with one hashed id per present value (missing: empty bag).
    ``has_labels=False`` reads the unlabelled test layout."""

    kind = "criteo"

    def __init__(self, paths: PathsLike, *, has_labels: bool = True, **options: Any) -> None:
        super().__init__(paths, _io.CriteoFormat(has_labels), **_reader_options(options))


class LibsvmReader(_TextReader):
    """libsvm ``label idx:value ...``: one weighted group (ids = indices, weights = values).
    ``binary_labels`` maps labels > 0 to 1 and the rest to 0 (for -1/+1 files)."""

    kind = "libsvm"

    def __init__(self, paths: PathsLike, *, group: str = "features", binary_labels: bool = True,
                 **options: Any) -> None:
        super().__init__(paths, _io.LibsvmFormat(group, binary_labels), **_reader_options(options))


class LibffmReader(_TextReader):
    """libffm ``label field:idx:value ...``: one weighted group per field, named by
    ``fields`` (an int n names them "field0".."field<n-1>")."""

    kind = "libffm"

    def __init__(self, paths: PathsLike, fields: int | Sequence[str], *, binary_labels: bool = True,
                 **options: Any) -> None:
        names = [f"field{i}" for i in range(fields)] if isinstance(fields, int) else [str(f) for f in fields]
        super().__init__(paths, _io.LibffmFormat(names, binary_labels), **_reader_options(options))


class CsvReader(_TextReader):
    """Delimited text (CSV, TSV) with a declared schema (``{name: type}`` or a list of Column):
    label / dense / categorical / multi_categorical (items split by ``multi_separator``) /
    ignore.

    Without a header the schema is positional: one column per field, in order. With
    ``header=True`` the first line of every file names the columns: the schema then gives the
    types of the columns it names (in any order; the others are ignored), every name it gives
    must be in the header, and every file must have the same header."""

    kind = "csv"

    def __init__(self, paths: PathsLike, columns: ColumnsLike, *, delimiter: str = ",", multi_separator: str = "|",
                 header: bool = False, **options: Any) -> None:
        declared = normalize_columns(columns)
        if header:
            declared = _columns_from_header(_paths(paths), declared, delimiter)
        self.columns = declared
        fmt = _io.CsvFormat([(c.name, c.type, c.group or "") for c in self.columns], delimiter, multi_separator,
                            header)
        super().__init__(paths, fmt, **_reader_options(options))


def read_header(path: str, delimiter: str) -> list[str]:
    """The column names on the first line of ``path`` (gzip read transparently)."""
    import csv
    import gzip

    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
            line = f.readline()
    except (OSError, EOFError) as e:
        raise OSError(f"cannot read the header of '{path}': {e}") from None
    if not line.strip():
        raise ValueError(f"'{path}' has no header line (header=True)")
    return [name.strip() for name in next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter))]


def _columns_from_header(paths: list[str], declared: list[Column], delimiter: str) -> list[Column]:
    names = read_header(paths[0], delimiter)
    for p in paths[1:]:
        other = read_header(p, delimiter)
        if other != names:
            raise ValueError(f"the header of '{p}' ({', '.join(other)}) differs from that of '{paths[0]}' "
                             f"({', '.join(names)})")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the header of '{paths[0]}' repeats {', '.join(repeated)}")
    by_name = {c.name: c for c in declared}
    missing = [c.name for c in declared if c.name not in names]
    if missing:
        hint = f" (delimiter {delimiter!r}: is it the file's?)" if len(names) == 1 else ""
        raise ValueError(f"columns {missing} are not in the header of '{paths[0]}', which names "
                         f"{', '.join(names)}{hint}")
    return [by_name.get(n, Column(n, "ignore")) for n in names]
