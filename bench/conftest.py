"""Fixtures of the benchmark suite: the scale, W1's batches (built once per session) and
one live peer at a time (full-scale tables take gigabytes; the next peer's tables are built
only after the previous one is dropped)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

workload.limit_threads()  # before anything imports torch


@pytest.fixture(scope="session")
def scale() -> workload.Scale:
    return workload.current_scale()


@pytest.fixture(scope="session")
def w1_batches(scale) -> workload.Batches:
    return workload.make_batches(scale)


class PeerCache:
    """Holds the most recently used peer; asking for another drops it first."""

    def __init__(self, batches: workload.Batches, vocab: int):
        self.batches, self.vocab = batches, vocab
        self.key: tuple[str, str] | None = None
        self.peer: workload.Peer | None = None

    def get(self, peer: str, optimizer: str) -> workload.Peer:
        if self.key != (peer, optimizer):
            self.drop()
            self.peer = workload.make_peer(peer, optimizer, self.batches, self.vocab)
            self.key = (peer, optimizer)
        return self.peer

    def drop(self) -> None:
        self.peer, self.key = None, None
        gc.collect()


@pytest.fixture(scope="session")
def peers(w1_batches, scale):
    cache = PeerCache(w1_batches, scale.vocab)
    yield cache
    cache.drop()


def pytest_configure(config):
    # Peers' import-time and per-call notices say nothing about the measurement.
    for pattern in ("ignore::DeprecationWarning:fbgemm_gpu.*", "ignore:Sparse invariant checks:UserWarning"):
        config.addinivalue_line("filterwarnings", pattern)
