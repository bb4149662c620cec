"""Group `cluster`: a W2 job of parameter-server worker processes in each mode (sync,
bounded staleness with k = 2, async). The scaling table of bench/results/cluster.md comes
from `python bench/cluster.py`; here each mode is one pedantic round of a small job (2 workers,
1 server: a smoke at any scale). Nothing asserts a time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # noqa: E402

pytest.importorskip("torch")

# (samples per worker step, timed steps, vocabulary) per scale.
JOBS = {"tiny": (100, 2, 5_000), "small": (1000, 5, 100_000), "full": (5000, 10, 1_000_000)}


@pytest.mark.parametrize("mode", ["sync", "ssp", "async"])
def test_cluster_job(benchmark, scale, mode):
    batch, steps, vocab = JOBS[scale.name]
    benchmark.group = "cluster"
    result = benchmark.pedantic(cluster.run_job, args=(1, 2, mode),
                                kwargs=dict(steps=steps, warmup=1, batch=batch, vocab=vocab), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["workers"] == 2 and result["samples_per_s"] > 0
    if mode == "ssp":
        assert result["max_lead"] is not None and result["max_lead"] <= 2  # the bound, from the servers' stats
    if mode == "sync":
        assert result["max_lead"] is None  # no staleness gate in sync mode
