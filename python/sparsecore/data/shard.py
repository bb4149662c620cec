"""Data sharding: which part of the input files one worker of ``count`` reads.

With at least as many files as workers, worker ``index`` reads whole files, every ``count``-th
one from ``index`` on (``paths[index::count]``). With fewer files, the workers share them:
file ``f`` goes to the workers ``f, f + n, f + 2n, ...`` (n files), which cut it into as many
ranges of whole lines of about equal size; worker ``index`` reads range ``index // n`` of file
``index % n``. A line belongs to the range in which it starts, so the parts are disjoint and
together are every line of every file, whatever the count. Compressed files cannot be cut
(their byte offsets are known only by reading them), so they are sharded by file only.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

__all__ = ["FilePart", "shard_parts"]

_CHUNK = 1 << 20


class FilePart(NamedTuple):
    path: str
    begin: int  # byte offset of its first line (0: the start of the file)
    line: int  # lines of the file before it
    end: int  # byte offset where it ends (a line start), -1: the end of the file

    @property
    def whole(self) -> bool:
        return self.begin == 0 and self.end == -1


def check_shard(shard: Any) -> tuple[int, int]:
    """``(index, count)`` checked: integers with 0 <= index < count."""
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise TypeError(f"shard must be (index, count), got {shard!r}") from None
    for name, v in (("index", index), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"shard {name} must be an int, got {type(v).__name__}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, count), got ({index}, {count})")
    return index, count


def _compressed(path: str) -> bool:
    with open(path, "rb") as f:
        magic = f.read(4)
    return magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd"


def _line_start_at(f: Any, offset: int, size: int) -> int:
    """The first line start at or after ``offset`` of the open binary file ``f``."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    f.seek(offset - 1)
    at = offset - 1
    while chunk := f.read(_CHUNK):
        nl = chunk.find(b"\n")
        if nl >= 0:
            return at + nl + 1
        at += len(chunk)
    return size


def _lines_before(f: Any, offset: int) -> int:
    f.seek(0)
    lines, left = 0, offset
    while left > 0 and (chunk := f.read(min(_CHUNK, left))):
        lines += chunk.count(b"\n")
        left -= len(chunk)
    return lines


def shard_parts(paths: list[str], shard: Optional[Any]) -> list[FilePart]:
    """The parts of ``paths`` that worker ``shard = (index, count)`` reads (all of them, whole,
    when ``shard`` is None). ValueError when a compressed file would have to be cut."""
    if shard is None:
        return [FilePart(p, 0, 0, -1) for p in paths]
    index, count = check_shard(shard)
    n = len(paths)
    if count <= n:
        return [FilePart(p, 0, 0, -1) for p in paths[index::count]]
    path = paths[index % n]
    ranges, j = len(range(index % n, count, n)), index // n
    if _compressed(path):
        raise ValueError(f"{count} workers share {n} file(s), so '{path}' would be cut into line ranges, but it is "
                         f"compressed: give at least {count} files, or decompress it")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        begin = _line_start_at(f, size * j // ranges, size)
        end = -1 if j == ranges - 1 else _line_start_at(f, size * (j + 1) // ranges, size)
        line = _lines_before(f, begin)
    return [FilePart(path, begin, line, end)]
