"""The coordinator's recovery, against real processes on loopback: servers, workers and the
coordinator itself killed with SIGKILL at random steps and restarted; the job ends with the
tables (and every worker's dense state) of an uninterrupted run, bit for bit (synchronous
mode), and no process waits without a deadline."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_harness import ClusterProcesses, assert_same_tables  # noqa: E402
from cluster_worker import CONFIG  # noqa: E402

# Rounds of the seeded kill loop (each kills one process at a random step and restarts it):
# 20 with every kind of process, fewer for one kind alone (SPARSECORE_CLUSTER_ROUNDS caps both).
ROUNDS = int(os.environ.get("SPARSECORE_CLUSTER_ROUNDS", "20"))
SEED = int(os.environ.get("SPARSECORE_CLUSTER_SEED", "0"))  # added to every loop's seed
STEPS = 40
IDS = np.arange(CONFIG.vocab_size, dtype=np.int64)


def run_job(root, kills=None, **kwargs):
    job = ClusterProcesses(root, steps=STEPS, **kwargs)
    try:
        job.start()
        rounds = kills(job) if kills else 0
        job.wait_done()
        return job.tables(CONFIG.names(), IDS), job.final_states(), rounds
    finally:
        job.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_job(tmp_path_factory.mktemp("uninterrupted"))


def kill_loop(seed, roles, rounds):
    rng = np.random.default_rng(seed + SEED)

    def kills(job):
        done = 0
        for _ in range(rounds):
            status = job.status()
            if status["phase"] == "done":
                break
            target = min(status["workers"].values(), default=0) + int(rng.integers(1, 3))
            job.wait_until(lambda s: s["phase"] == "done" or
                           (s["phase"] == "ready" and len(s["workers"]) == job.num_workers
                            and min(s["workers"].values()) >= target), 60, f"steps >= {target}")
            if job.status()["phase"] == "done":
                break
            role = roles[int(rng.integers(len(roles)))]
            index = int(rng.integers(job.num_servers if role == "server" else job.num_workers)) if role != "coordinator" else 0
            job.kill(role, index)
            job.restart(role, index)
            done += 1
        return done

    return kills


@pytest.mark.parametrize("seed, roles, rounds", [(1, ("server",), 6), (2, ("worker",), 6), (3, ("coordinator",), 6),
                                                 (4, ("server", "worker", "coordinator"), 20)],
                         ids=["server", "worker", "coordinator", "any"])
def test_kill_9_at_random_steps_ends_with_the_uninterrupted_result(tmp_path, uninterrupted, seed, roles, rounds):
    rounds = min(rounds, ROUNDS)
    tables, states, done = run_job(tmp_path, kill_loop(seed, roles, rounds))
    assert done == rounds  # the job outlasted every round
    assert_same_tables(tables, uninterrupted[0])
    assert states == uninterrupted[1]


def test_sharded_file_input_is_read_exactly_once_across_worker_kills(tmp_path):
    """Two workers share one libsvm file by line ranges; workers killed and restarted resume
    their own range where the snapshot left it: the tables equal those of an uninterrupted run."""
    rng = np.random.default_rng(7)
    data = tmp_path / "train.libsvm"
    data.write_text("".join(f"{int(rng.integers(2))} " + " ".join(f"{int(i)}:1" for i in rng.integers(0, 300, 3)) + "\n"
                            for _ in range(900)))
    ids = np.arange(300, dtype=np.int64)

    def run(root, kills):
        job = ClusterProcesses(root, steps=STEPS, data=[str(data)])
        try:
            job.start()
            done = kills(job) if kills else 0
            job.wait_done()
            return job.tables(["features"], ids), job.final_states(), done
        finally:
            job.close()

    tables, states, _ = run(tmp_path / "uninterrupted", None)
    assert all(s["source"]["shard"]["count"] == 2 for s in states.values())
    rounds = min(4, ROUNDS)
    killed_tables, killed_states, done = run(tmp_path / "killed", kill_loop(5, ("worker",), rounds))
    assert done == rounds
    assert_same_tables(killed_tables, tables)
    assert killed_states == states
