"""KV pull/push (the KV workload of bench/README.md): the cases of bench/rpc_bench.py as pytest-benchmark
groups ``kv-pull-1``, ``kv-push-1``, ``kv-pull-16`` and ``kv-servers``, peers as parametrised
cases. One round of a case is ``requests`` requests (1000 ids x dim 18 each), so
``lookups_per_call`` / median = keys/s; cases measured in another process (the C++ driver,
redis-benchmark) include that process's start (a few ms) in the round. Each case also records what it
measured itself (keys/s, p50/p99 per request) in ``extra_info["kv"]``.

``SPARSECORE_BENCH_SCALE=tiny`` runs a few requests per case (a CI smoke well under a minute);
peers that are not installed are skipped with a message.
"""

from __future__ import annotations

import os

import pytest

import rpc_bench

REQUESTS = {"tiny": 20, "small": 500, "full": 2000}[os.environ.get("SPARSECORE_BENCH_SCALE", "small")]


@pytest.fixture(scope="module")
def kv():
    runner = rpc_bench.KvCases(REQUESTS)
    yield runner
    runner.close()


@pytest.mark.parametrize("group,case", rpc_bench.CASES, ids=[f"{g}-{c}" for g, c in rpc_bench.CASES])
def test_kv(benchmark, kv, group, case):
    benchmark.group = group
    found: dict = {}

    def one_round():
        found.update(kv.run(group, case))

    try:
        kv.setup(group, case)  # servers and clients start outside the timed round
    except rpc_bench.PeerMissing as e:
        pytest.skip(f"{case}: {e}")
    benchmark.pedantic(one_round, rounds=1, iterations=1)
    requests = found.get("requests", REQUESTS)
    benchmark.extra_info.update(peer=case, optimizer="-", samples_per_call=requests,
                                lookups_per_call=requests * rpc_bench.IDS, kv=found)
    assert found["keys_per_s"] > 0
