"""Feature admission, row capacity (LRU / LFU eviction or refusal) and incremental expiry on
a parameter server whose rows live on a device (``sparsecore server --device cuda``): the same
ids kept, evicted and admitted, the same statistics, pulls, deltas (evicted keys as deleted
keys) and snapshots as a CPU server given the same pulls and pushes, bit for bit. Each case
runs against real server processes, with the emulated device (and a real one where a GPU is
present)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sparsecore as sc

from test_cuda_server import DEVICES, _start, _stop

# Shard statistics that depend on the row store, not on the rows.
STORE_KEYS = {"bytes", "memory_bytes", "device"}

CONFIGS = {
    "lru": dict(expiry=sc.Expiry(capacity=60, policy="lru")),
    "lfu-no-headroom": dict(expiry=sc.Expiry(capacity=60, policy="lfu", eviction_headroom=0.0), shard_bits=1),
    "refuse": dict(expiry=sc.Expiry(capacity=60, on_full="refuse")),
    "ttl-scan": dict(expiry=sc.Expiry(ttl_steps=2, scan_per_step=1 << 20)),
    "lru-ttl-scan": dict(expiry=sc.Expiry(capacity=120, ttl_steps=1, scan_per_step=1 << 20), shard_bits=1),
    "count": dict(admission=sc.Admission(count_threshold=2)),
    "bloom-lfu": dict(admission=sc.Admission(count_threshold=2, bloom_capacity=500, bloom_fp_rate=0.05),
                      expiry=sc.Expiry(capacity=60, policy="lfu")),
    "probability-lru": dict(admission=sc.Admission(probability=0.4), expiry=sc.Expiry(capacity=50)),
    "frequency": dict(admission=sc.Admission(frequency_horizon=4.0, frequency_threshold=0.6)),
}


def _config(name, dim=4):
    return sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1), init=sc.Normal(0.1), **{"shard_bits": 0, **CONFIGS[name]})


def _stream(rng, dim, steps, start=0):
    # Drifting ids: each step draws from a window that moves on, so old ids stop and new ones
    # come; a push also carries ids the step did not pull (inserted or dropped by the push).
    for step in range(start, start + steps):
        pulled = np.unique(rng.integers(step * 15, step * 15 + 120, 70)).astype(np.int64)
        extra = np.unique(rng.integers(step * 15 + 120, step * 15 + 140, 6)).astype(np.int64)
        pushed = np.unique(np.concatenate([pulled[::2], extra]))
        yield step, pulled, pushed, (rng.standard_normal((pushed.size, dim)) * 2).astype(np.float32)


def _shard_stats(client):
    return [{k: v for k, v in s["tables"]["t"].items() if k not in STORE_KEYS} for s in client.stats()]


def _train(clients, rng, dim, steps, start=0):
    for step, pulled, pushed, grads in _stream(rng, dim, steps, start):
        want = clients[0].lookup("t", pulled, insert=True)
        for c in clients[1:]:
            np.testing.assert_array_equal(c.lookup("t", pulled, insert=True), want, err_msg=f"step {step}")
        for c in clients:
            c.push("t", pushed, grads, step=step)
        want = _shard_stats(clients[0])
        for c in clients[1:]:
            assert _shard_stats(c) == want, f"step {step}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_device_server_keeps_evicts_and_admits_what_a_cpu_server_does(device, name, tmp_path):
    dim = 4
    cpu, cpu_addr = _start("--shards", 2, "--export-dir", tmp_path / "cpu")
    dev, dev_addr = _start("--shards", 2, "--export-dir", tmp_path / "dev", *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        for c in clients:
            c.create_table("t", _config(name, dim), seed=7)
            c.export_full("s", version=0)
        _train(clients, np.random.default_rng(1), dim, steps=8)
        stats = _shard_stats(clients[0])
        table = CONFIGS[name]
        if "admission" in table:
            assert sum(s["admission"]["rejected"] for s in stats) > 0
        expiry = table.get("expiry", sc.Expiry())
        if expiry.capacity:
            assert sum(s["rows"] for s in stats) <= expiry.capacity
            assert sum(s["expiry"]["evicted"] + s["expiry"]["refused"] for s in stats) > 0
        if expiry.ttl_steps:
            assert sum(s["expiry"]["expired"] for s in stats) > 0
        # Evicted, expired and erased keys leave in the delta as deleted keys, on both servers.
        probe = np.arange(-5, 260, dtype=np.int64)
        np.testing.assert_array_equal(clients[1].lookup("t", probe), clients[0].lookup("t", probe))
        assert clients[1].expire("t") == clients[0].expire("t")
        assert clients[1].erase("t", probe[::3]) == clients[0].erase("t", probe[::3])
        written = [c.export_delta("s", since=0, version=100) for c in clients]
        assert written[0] == written[1]
        assert _shard_stats(clients[1]) == _shard_stats(clients[0])
    finally:
        _stop(cpu)
        _stop(dev)
    sub = [sc.Subscriber(tmp_path / side / "s") for side in ("cpu", "dev")]
    for s in sub:
        s.poll()
    np.testing.assert_array_equal(sub[1].lookup("t", probe), sub[0].lookup("t", probe))


@pytest.mark.parametrize("device", DEVICES)
def test_admission_state_and_scores_move_between_device_and_cpu_snapshots(device, tmp_path):
    # Both servers save mid-stream; each restarts from the other's snapshot and the stream goes
    # on: pending sightings, scores and statistics came over, so the two still agree.
    dim, name = 4, "bloom-lfu"
    rng = np.random.default_rng(2)
    cpu, cpu_addr = _start("--shards", 2, "--snapshot-dir", tmp_path / "cpu")
    dev, dev_addr = _start("--shards", 2, "--snapshot-dir", tmp_path / "dev", *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        for c in clients:
            c.create_table("t", _config(name, dim), seed=7)
        _train(clients, rng, dim, steps=4)
        for c in clients:
            c.save(step=4)
    finally:
        _stop(cpu)
        _stop(dev)
    os.rename(tmp_path / "cpu", tmp_path / "from-cpu")
    os.rename(tmp_path / "dev", tmp_path / "from-dev")
    cpu, cpu_addr = _start("--shards", 3, "--snapshot-dir", tmp_path / "from-dev")
    dev, dev_addr = _start("--shards", 3, "--snapshot-dir", tmp_path / "from-cpu", *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        for c in clients:
            c.create_table("t", _config(name, dim), seed=7)
        assert _shard_stats(clients[1]) == _shard_stats(clients[0])
        _train(clients, rng, dim, steps=4, start=4)
        assert sum(s["admission"]["pending"] for s in _shard_stats(clients[0])) > 0
    finally:
        _stop(cpu)
        _stop(dev)


@pytest.mark.parametrize("device", DEVICES)
def test_an_overflowing_push_with_a_capacity_is_undone_as_on_a_cpu_server(device):
    dim = 4
    cfg = sc.TableConfig(dim=dim, optimizer=sc.Adam(lr=0.05), shard_bits=0,
                         expiry=sc.Expiry(capacity=40, ttl_steps=2, scan_per_step=1 << 20))
    cpu, cpu_addr = _start("--shards", 1)
    dev, dev_addr = _start("--shards", 1, *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        for c in clients:
            c.create_table("t", cfg, seed=3)
        _train(clients, np.random.default_rng(4), dim, steps=3)
        ids = np.arange(30, 80, dtype=np.int64)
        huge = np.full((ids.size, dim), 3e38, np.float32)
        for c in clients:
            with pytest.raises(ValueError, match="non-finite"):
                c.push("t", ids, huge, step=3)
        assert _shard_stats(clients[1]) == _shard_stats(clients[0])
        _train(clients, np.random.default_rng(5), dim, steps=2, start=4)
    finally:
        _stop(cpu)
        _stop(dev)


@pytest.mark.parametrize("device", DEVICES)
def test_ids_admitted_together_past_a_full_table_are_refused_as_on_a_cpu_server(device):
    # Twelve ids admitted by one pull (their second sighting, ids repeated within a pull
    # included) into a table of eight rows: the same ones get rows, the others are refused and
    # read the default row, and their gradients are dropped and counted.
    cfg = sc.TableConfig(dim=3, shard_bits=0, admission=sc.Admission(count_threshold=2),
                         expiry=sc.Expiry(capacity=8, on_full="refuse"))
    cpu, cpu_addr = _start("--shards", 1)
    dev, dev_addr = _start("--shards", 1, *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        for c in clients:
            c.create_table("t", cfg, seed=9)
        ids = np.asarray([11, 3, 3, 7, 0, 5, 9, 1, 10, 2, 8, 4, 6, 6], np.int64)
        for step in range(3):
            np.testing.assert_array_equal(clients[1].lookup("t", ids, insert=True),
                                          clients[0].lookup("t", ids, insert=True))
            uniq = np.unique(ids)
            for c in clients:
                c.push("t", uniq, np.ones((uniq.size, 3), np.float32), step=step)
            assert _shard_stats(clients[1]) == _shard_stats(clients[0])
        stats = _shard_stats(clients[0])[0]
        assert stats["rows"] == 8 and stats["expiry"]["refused"] > 0 and stats["dropped_gradients"] > 0
    finally:
        _stop(cpu)
        _stop(dev)


@pytest.mark.parametrize("device", DEVICES)
def test_a_key_given_a_row_again_leaves_a_device_servers_deleted_keys(device, tmp_path):
    # Erased, then inserted again by a pull or a push: the delta carries its row, not its
    # deletion, as a CPU server's does.
    cpu, cpu_addr = _start("--shards", 2, "--export-dir", tmp_path / "cpu")
    dev, dev_addr = _start("--shards", 2, "--export-dir", tmp_path / "dev", *device)
    try:
        clients = [sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)]
        ids = np.arange(40, dtype=np.int64)
        for c in clients:
            c.create_table("t", sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)), seed=5)
            c.push("t", ids, np.ones((ids.size, 3), np.float32), step=0)
            c.export_full("s", version=1)
            assert c.erase("t", ids[:30]) == 30
            c.lookup("t", ids[:10], insert=True)
            c.push("t", ids[10:20], np.ones((10, 3), np.float32), step=1)
        written = [c.export_delta("s", since=1, version=2) for c in clients]
        assert written[0] == written[1] == {"deleted": 10, "rows": 20}
    finally:
        _stop(cpu)
        _stop(dev)
