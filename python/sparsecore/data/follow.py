"""Streaming input: :class:`FollowDirectory` reads a directory of time partitions as they
appear (the shape of hourly log drops) through the ordinary file readers.

Layout::

    root/
      2026-12-06T10/          a partition: a subdirectory of root
        part-00000.gz         its files, read in name order
        part-00001.gz
        _SUCCESS              the marker: the partition is complete
      2026-12-06T11/          being written: not read until its marker appears
        part-00000.gz

- Partitions are the subdirectories of ``root`` and files the regular files of a partition,
  both in name order, skipping names that start with ``_`` or ``.`` (markers and the hidden
  files writers rename into place). Name partitions so that name order is time order
  (zero-padded: ``2026-12-06T09``, ``dt=2026120609``).
- A partition is complete when it holds the marker file (``marker``, default ``_SUCCESS``, as
  Hadoop and Spark write it). With ``marker=None`` it is complete once a partition with a
  later name exists (so the newest one is read only when the next appears). A complete
  partition must not change any more.
- Partitions are read once each, in name order: after one ends, the reader waits for the
  next one by name to be complete. One that appears later with a name before the current
  one is late and skipped (with a warning).
- Waiting is bounded: when no new partition completes within ``timeout`` seconds of the
  reader starting to wait (checking every ``poll_interval``), the stream ends
  (``next_batch()`` returns None). ``timeout=None`` waits until :meth:`close`.
- Batches never span two partitions (the last one of a partition may be short).

Position: ``state_dict()`` holds the partition, the file and the byte offset (and line) of
the next unread sample in it (the file reader's own position); ``load_state_dict()`` on a
reader over the same root resumes exactly there. The Trainer saves it in its checkpoints.

Progressive validation (``Trainer(..., progressive=True)``): with ``stop_at_partition_end``
the reader returns None at the end of each partition instead of moving on; the Trainer then
calls :meth:`advance`, evaluates the new partition (:meth:`partition_reader`) with the model
trained on every partition before it, and trains on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

from .batch import Batch

__all__ = ["FollowDirectory"]

log = logging.getLogger(__name__)


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))


class FollowDirectory:
    """Follows the partitions of ``root`` as they appear (module docstring).

    Args:
        root: the directory of partitions (it must exist).
        open_files: builds a reader over a list of paths, e.g.
            ``lambda p: CriteoReader(p, batch_size=4096)`` (as :class:`Epochs` takes it).
        marker: the file that marks a partition complete; None: complete once a later
            partition exists.
        timeout: seconds to wait for the next partition before the stream ends (None: no
            bound).
        poll_interval: seconds between two looks at ``root`` while waiting.
        start: the name of the first partition to read (default: the first there is).
        stop_at_partition_end: return None at the end of each partition (see
            :meth:`advance`) instead of moving on to the next.
    """

    kind = "follow"

    def __init__(self, root: str | os.PathLike, open_files: Callable[[list[str]], Any], *,
                 marker: Optional[str] = "_SUCCESS", timeout: Optional[float] = 60.0, poll_interval: float = 1.0,
                 start: Optional[str] = None, stop_at_partition_end: bool = False) -> None:
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"FollowDirectory: '{self.root}' is not a directory")
        if marker is not None and (not marker or os.sep in marker):
            raise ValueError(f"FollowDirectory: marker must be a file name or None, got {marker!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"FollowDirectory: timeout must be >= 0 seconds or None, got {timeout!r}")
        if not poll_interval > 0:
            raise ValueError(f"FollowDirectory: poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.open_files = open_files
        self.marker, self.timeout, self.poll_interval = marker, timeout, float(poll_interval)
        self.start = start
        self.stop_at_partition_end = bool(stop_at_partition_end)
        self._partition: Optional[str] = None  # the partition being read (None: none yet)
        self._files: list[str] = []
        self._reader: Any = None  # over self._files; None when the partition has none
        # Whether the current partition was evaluated (progressive validation); saved with the
        # position so that a resumed run does not evaluate it again after training on part of it.
        self.evaluated = False
        self._known: set[str] = set()  # partitions seen so far (a new one before the current is late)
        self._closed = threading.Event()

    # ------------------------------------------------------------------------------ partitions
    @property
    def partition(self) -> Optional[str]:
        """The name of the partition being read (None before the first)."""
        return self._partition

    @property
    def files(self) -> list[str]:
        """The files of the current partition, in reading order."""
        return list(self._files)

    def partitions(self) -> list[str]:
        """The partitions in ``root`` now (complete or not), in name order."""
        with os.scandir(self.root) as entries:
            return sorted(e.name for e in entries if _visible(e.name) and e.is_dir(follow_symlinks=False))

    def _complete(self, name: str, names: list[str]) -> bool:
        if self.marker is None:
            return names[-1] > name
        return os.path.isfile(os.path.join(self.root, name, self.marker))

    def _partition_files(self, name: str) -> list[str]:
        folder = os.path.join(self.root, name)
        with os.scandir(folder) as entries:
            return sorted(os.path.join(folder, e.name) for e in entries
                          if _visible(e.name) and e.is_file(follow_symlinks=False))

    def _next_complete(self) -> Optional[str]:
        """The partition after the current one if it is complete; None while it is not."""
        names = self.partitions()
        if self._partition is None:
            after = [n for n in names if self.start is None or n >= self.start]
        else:
            for late in (n for n in names if n < self._partition and n not in self._known):
                log.warning("partition %s appeared after %s was read: skipped (late data)", late, self._partition)
            after = [n for n in names if n > self._partition]
        self._known.update(names)
        if not after:
            return None
        return after[0] if self._complete(after[0], names) else None

    def advance(self, timeout: Optional[float] = None) -> Optional[str]:
        """Moves to the next complete partition, waiting for it at most ``timeout`` seconds
        (default: the reader's own), and returns its name; None when none completed in time
        (or :meth:`close` was called). The partition is not evaluated yet (``evaluated``)."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            name = self._next_complete()
            if name is not None:
                self._open(name)
                return name
            if self._closed.is_set():
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._closed.wait(self.poll_interval if left is None else min(self.poll_interval, left))

    def _open(self, name: str, reader_state: Optional[dict[str, Any]] = None, resumed: bool = False) -> None:
        files = self._partition_files(name)
        reader = self.open_files(files) if files else None
        if reader is not None and reader_state is not None:
            reader.load_state_dict(reader_state)
        self._partition, self._files, self._reader, self.evaluated = name, files, reader, False
        self._known.update(self.partitions())
        (log.debug if resumed else log.info)("reading partition %s (%d files)", name, len(files))

    def partition_reader(self) -> Any:
        """A fresh reader over the current partition's files from their start (None when it
        has no files): what progressive validation evaluates."""
        return self.open_files(list(self._files)) if self._files else None

    def close(self) -> None:
        """Ends the stream: a wait in progress (or to come) returns at once."""
        self._closed.set()

    # ------------------------------------------------------------------------------ batches
    def next_batch(self) -> Optional[Batch]:
        """The next batch of the current partition; at its end, the first of the next one
        (waiting for it, bounded by ``timeout``), or None with ``stop_at_partition_end``.
        None once the stream ended."""
        while True:
            if self._reader is not None:
                b = self._reader.next_batch()
                if b is not None:
                    return b
                self._reader = None  # this partition is read whole
            if self.stop_at_partition_end and self._partition is not None:
                return None
            if self.advance() is None:
                return None

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (partition, file, byte offset), for checkpoints."""
        return {"kind": self.kind, "root": self.root, "partition": self._partition,
                "files": [os.path.basename(f) for f in self._files],
                "reader": self._reader.state_dict() if self._reader is not None else None,
                "evaluated": self.evaluated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at a position of :meth:`state_dict` (saved over this root or a copy of it)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} source, this is {self.kind!r}")
        name = state.get("partition")
        if name is None:
            self._partition, self._files, self._reader, self.evaluated = None, [], None, False
            return
        if not isinstance(name, str) or not _visible(name) or os.sep in name:
            raise ValueError(f"state names partition {name!r}, which is not a partition name")
        if not os.path.isdir(os.path.join(self.root, name)):
            raise ValueError(f"state names partition '{name}', which is not in '{self.root}'")
        files = self._partition_files(name)
        if [os.path.basename(f) for f in files] != list(state.get("files", [])):
            raise ValueError(f"partition '{name}' holds other files than when the state was saved "
                             "(a complete partition must not change)")
        reader_state = state.get("reader")
        self._open(name, reader_state, resumed=True)
        if reader_state is None:
            self._reader = None  # saved after its end
        self.evaluated = bool(state.get("evaluated", False))
