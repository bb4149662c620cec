"""Bounded staleness (``sc.connect(..., mode="ssp", staleness=k)``) against real ``sparsecore
server`` processes: each shard holds a worker more than k steps ahead of the slowest, the
bound is asserted from the servers' own stats (the largest lead they admitted), a departed
worker blocks nobody, and a held call ends at its deadline."""

import gc
import threading
import time

import numpy as np
import pytest

import sparsecore as sc
from test_ps import start_server_process, stop

CFG = sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1))


@pytest.fixture
def cluster():
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        yield [addr for _, addr in procs]
    finally:
        for p, _ in procs:
            stop(p)


def worker(addrs, rank, num_workers, staleness=2, timeout=60):
    ps = sc.connect(addrs, worker=rank, num_workers=num_workers, mode="ssp", staleness=staleness, timeout=timeout)
    ps.create_table("t", CFG, seed=3)
    return ps


def train_step(ps, step, rank):
    ids = np.arange(64, dtype=np.int64) + 1000 * rank  # every shard owns some of them
    rows = ps.lookup("t", ids, insert=True)
    ps.push("t", ids, np.full_like(rows, 0.01), step=step)


def gate_stats(ps):
    return [s["staleness"] for s in ps.stats()]


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_ssp_holds_a_worker_more_than_k_steps_ahead(cluster):
    fast, slow = worker(cluster, 0, 2), worker(cluster, 1, 2)
    done = []

    def run_fast():
        for step in range(8):
            train_step(fast, step, 0)
            done.append(step)

    t = threading.Thread(target=run_fast)
    t.start()
    # Steps 0, 1, 2 run with the slow worker still at 0; the pull of step 3 is held.
    wait_for(lambda: any(g["held"] > 0 for g in gate_stats(slow)))
    assert done == [0, 1, 2] and t.is_alive()
    for step in range(8):
        train_step(slow, step, 1)
    t.join(60)
    assert not t.is_alive() and done == list(range(8))
    for g in gate_stats(slow):
        assert g["num_workers"] == 2 and g["staleness"] == 2
        assert g["clocks"] == [8, 8]
        assert g["max_lead"] == 2  # reached, never passed


def test_ssp_bound_holds_for_workers_of_different_speeds(cluster):
    k, steps = 2, 10
    clients = [worker(cluster, r, 3, staleness=k) for r in range(3)]
    errors = []

    def run(rank):
        try:
            for step in range(steps):
                train_step(clients[rank], step, rank)
                time.sleep(0.02 * rank)  # worker 0 fastest, worker 2 slowest
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    for g in gate_stats(clients[0]):
        assert g["clocks"] == [steps] * 3
        assert 0 <= g["max_lead"] <= k


def test_departed_worker_blocks_nobody(cluster):
    alone, gone = worker(cluster, 0, 2), worker(cluster, 1, 2)
    del gone
    gc.collect()
    wait_for(lambda: all(g["departed"] == [1] for g in gate_stats(alone)))
    for step in range(6):  # well past the bound of 2 steps
        train_step(alone, step, 0)
    assert all(g["clocks"][0] == 6 for g in gate_stats(alone))
    # It comes back at the step of the slowest present (worker 0's): no one waits for it.
    back = worker(cluster, 1, 2)
    assert all(g["departed"] == [] and g["clocks"] == [6, 6] for g in gate_stats(back))
    train_step(back, 6, 1)
    train_step(alone, 6, 0)


def test_held_call_raises_at_its_deadline(cluster):
    fast = worker(cluster, 0, 2, timeout=1)
    idle = worker(cluster, 1, 2)  # joined, never steps
    for step in range(3):
        train_step(fast, step, 0)
    with pytest.raises(sc.RpcTimeoutError):
        train_step(fast, 3, 0)
    assert all(g["clocks"] == [3, 0] for g in gate_stats(idle))


def test_workers_of_one_job_must_agree_on_the_bound(cluster):
    worker(cluster, 0, 2, staleness=2)
    with pytest.raises(ValueError, match="staleness"):
        worker(cluster, 1, 2, staleness=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="bounded"), "mode"),
    (dict(mode="ssp", staleness=2), "num_workers"),
    (dict(mode="ssp", num_workers=2, staleness=-1), "staleness"),
    (dict(mode="ssp", num_workers=2, staleness=1.5), "staleness"),
])
def test_connect_refuses_bad_modes(cluster, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sc.connect(cluster, **kwargs)


def test_staleness_zero_is_sync(cluster):
    ps = sc.connect(cluster, worker=0, num_workers=1, mode="ssp", staleness=0, timeout=60)
    assert ps._connect_args["mode"] == "sync"
    ps.create_table("t", CFG, seed=3)
    train_step(ps, 0, 0)  # one synchronous worker: applied at once
    assert all("staleness" not in s for s in ps.stats())


def test_a_synchronous_push_of_a_worker_ahead_is_refused_not_held(cluster):
    fast = worker(cluster, 0, 2)
    idle = worker(cluster, 1, 2)  # joined, never steps
    for step in range(3):
        train_step(fast, step, 0)
    mixed = sc.connect(cluster, worker=0, num_workers=2, timeout=60)  # rank 0 again, in sync mode
    mixed.create_table("t", CFG, seed=3)
    ids = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="same mode"):
        mixed.push("t", ids, np.zeros((4, 4), np.float32), step=3)
    assert all(g["clocks"] == [3, 0] for g in gate_stats(idle))
