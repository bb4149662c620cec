"""Several passes over files, optionally shuffled: :class:`Epochs`.

Data sorted by time (or by user, or by label) trained in file order teaches the model the
order; ``shuffle=True`` breaks it in two ways, both seeded and reproducible: every epoch
reads the files in its own order (a permutation drawn from ``(seed, epoch)``), and samples
are mixed within windows of ``shuffle_buffer`` consecutive samples (each window is read
whole, permuted, and handed out in batches). The window bounds memory: a single
time-sorted file is mixed only within a window, so give it as several files (or shuffle it
once on disk, e.g. ``shuf``) for a global mix.

Resuming is exact: ``state_dict()`` holds the epoch, the wrapped reader's position at the
start of the current window and the samples of it already handed out; ``load_state_dict()``
re-reads that window and continues with the next sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np

from .batch import Batch, concat_batches

__all__ = ["Epochs"]


class Epochs:
    """Reads ``paths`` ``epochs`` times through readers made by ``open_files(paths)``.

    Args:
        open_files: builds a reader over a list of paths (e.g.
            ``lambda p: CriteoReader(p, batch_size=4096)``); called once per epoch.
        paths: the files, in their natural order.
        epochs: passes over the data (>= 1).
        shuffle: per-epoch file order and a shuffle window (module docstring).
        shuffle_buffer: samples per shuffle window (>= 1).
        seed: seed of both permutations.
        batch_size: samples per batch (default: the reader's ``batch_size``).
    """

    kind = "epochs"

    def __init__(self, open_files: Callable[[list[str]], Any], paths: str | os.PathLike | Sequence[Any], *,
                 epochs: int = 1, shuffle: bool = False, shuffle_buffer: int = 100_000, seed: int = 0,
                 batch_size: Optional[int] = None) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("Epochs: paths is empty")
        if int(epochs) < 1:
            raise ValueError(f"Epochs: epochs must be >= 1, got {epochs}")
        if int(shuffle_buffer) < 1:
            raise ValueError(f"Epochs: shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.open_files = open_files
        self.epochs, self.shuffle, self.shuffle_buffer, self.seed = int(epochs), bool(shuffle), int(shuffle_buffer), \
            int(seed)
        self._epoch = 0
        self._reader = open_files(self.file_order(0))
        self.batch_size = int(batch_size) if batch_size else int(getattr(self._reader, "batch_size", 4096))
        if self.batch_size < 1:
            raise ValueError(f"Epochs: batch_size must be >= 1, got {self.batch_size}")
        # The current shuffle window: its number in the epoch, the reader's state before it,
        # its samples (permuted) and how many were handed out.
        self._window = 0
        self._window_start = self._reader.state_dict()
        self._buffer: Optional[Batch] = None
        self._handed = 0

    @property
    def epoch(self) -> int:
        """The epoch being read (0-based; == epochs once everything was read)."""
        return self._epoch

    def file_order(self, epoch: int) -> list[str]:
        """The files of ``epoch`` in the order they are read."""
        if not self.shuffle:
            return list(self.paths)
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        return [self.paths[i] for i in rng.permutation(len(self.paths))]

    # ------------------------------------------------------------------------------ reading
    def _fill_window(self) -> None:
        parts, count = [], 0
        while count < self.shuffle_buffer:
            b = self._reader.next_batch(self.shuffle_buffer - count)
            if b is None:
                break
            parts.append(b)
            count += b.num_samples
        if not parts:
            self._buffer = None
            return
        window = concat_batches(parts) if len(parts) > 1 else parts[0].expand()
        rng = np.random.default_rng([self.seed, self._epoch, self._window, 0xB0F])
        self._buffer = window.take(rng.permutation(window.num_samples))

    def _next_epoch(self) -> bool:
        self._epoch += 1
        if self._epoch >= self.epochs:
            return False
        self._reader = self.open_files(self.file_order(self._epoch))
        self._window, self._window_start, self._buffer, self._handed = 0, self._reader.state_dict(), None, 0
        return True

    def next_batch(self, batch_size: Optional[int] = None) -> Optional[Batch]:
        """The next ``batch_size`` samples (fewer at the end of the last epoch, never across
        an epoch's end); None once every epoch was read."""
        n = int(batch_size or self.batch_size)
        while self._epoch < self.epochs:
            if not self.shuffle:
                b = self._reader.next_batch(n)
                if b is not None:
                    return b
            else:
                parts, need = [], n  # a batch may span two windows, never two epochs
                while need > 0:
                    if self._buffer is None:
                        self._fill_window()
                        if self._buffer is None:
                            break
                    end = min(self._handed + need, self._buffer.num_samples)
                    parts.append(self._buffer.slice(self._handed, end))
                    need -= end - self._handed
                    self._handed = end
                    if self._handed == self._buffer.num_samples:
                        self._window += 1
                        self._window_start, self._buffer, self._handed = self._reader.state_dict(), None, 0
                if parts:
                    return concat_batches(parts) if len(parts) > 1 else parts[0]
            if not self._next_epoch():
                break
        return None

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position, for checkpoints."""
        state = {"kind": self.kind, "paths": list(self.paths), "epoch": self._epoch, "epochs": self.epochs,
                 "shuffle": self.shuffle, "seed": self.seed}
        if self.shuffle:
            state.update(window=self._window, window_start=self._window_start, handed=self._handed,
                         shuffle_buffer=self.shuffle_buffer)
        elif self._epoch < self.epochs:
            state["reader"] = self._reader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} source, this is 'epochs'")
        for key in ("shuffle", "seed") + (("shuffle_buffer",) if self.shuffle else ()):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state was saved with {key}={state.get(key)!r}, this source has "
                                 f"{getattr(self, key)!r}")
        if len(state["paths"]) != len(self.paths):
            raise ValueError(f"state covers {len(state['paths'])} files, this source {len(self.paths)}")
        epoch = int(state["epoch"])
        if epoch >= self.epochs:
            self._epoch, self._buffer = epoch, None
            return
        same_window = (self.shuffle and epoch == self._epoch and state["window"] == self._window
                       and self._buffer is not None)
        if same_window:  # the window is in memory: only the hand-out point moves (no re-read)
            self._handed = int(state["handed"])
            return
        if epoch != self._epoch:
            self._reader = self.open_files(self.file_order(epoch))
        self._epoch = epoch
        if not self.shuffle:
            self._reader.load_state_dict(state["reader"])
            return
        self._window, self._window_start = int(state["window"]), state["window_start"]
        self._reader.load_state_dict(self._window_start)
        self._buffer, self._handed = None, 0
        handed = int(state["handed"])
        if handed:
            self._fill_window()
            if self._buffer is None or handed > self._buffer.num_samples:
                raise ValueError("state points past the end of its shuffle window: the files changed")
            self._handed = handed
