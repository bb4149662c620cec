"""Synchronous workers against real server processes: a worker that leaves (killed) or
rejoins (restarted, pushing an older step) aborts the incomplete step, and every waiting
worker gets RpcStepAbortedError at once instead of waiting for ever; a sync reply is released by
its own table's step only; every blocking call has a deadline."""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import sparsecore as sc

DIM = 4
CFG = sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.1))
# The ps tests' server process and child environment (tests/ is on sys.path).
from test_ps import _env  # noqa: E402
from test_ps import start_server_process as _server  # noqa: E402
from test_ps import stop as _stop  # noqa: E402


# A synchronous worker: pushes steps first..last-1 of table "t", prints "step <k>" after each,
# then "done" and sleeps (to be killed). A push aborted by the server prints "aborted <msg>".
WORKER = textwrap.dedent("""
    import sys, time, numpy as np, sparsecore as sc
    addr, rank, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ps = sc.connect([addr], worker=rank, num_workers=2, timeout=60)
    ps.create_table("t", sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1)), seed=3)
    try:
        for step in range(first, last):
            ids = np.arange(10, dtype=np.int64) + 100 * rank
            ps.push("t", ids, np.ones((10, 4), np.float32), step=step)
            print("step", step, flush=True)
    except sc.RpcStepAbortedError as e:
        print("aborted", str(e).replace("\\n", " "), flush=True)
        sys.exit(3)
    except Exception as e:
        print("failed", type(e).__name__, e, flush=True)
        sys.exit(4)
    print("done", flush=True)
    time.sleep(600)
""")


def _worker(addr, rank, first, last):
    return subprocess.Popen([sys.executable, "-c", WORKER, addr, str(rank), str(first), str(last)],
                            stdout=subprocess.PIPE, env=_env(), text=True)


def _read_until(p, prefix):
    """Lines of `p` up to (and with) the first starting with `prefix` (None if it exits first)."""
    for line in p.stdout:
        if line.startswith(prefix):
            return line
    return None


def _outcome(p, timeout=60):
    """The worker's last line once it exits (it must exit: killed otherwise, and the test fails)."""
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("the surviving worker is still waiting: the incomplete step was never aborted")
    lines = out.strip().splitlines()
    return p.returncode, lines[-1] if lines else ""


@pytest.fixture
def server():
    p, addr = _server("--shards", 2)
    yield addr
    _stop(p)


def test_a_worker_killed_mid_step_aborts_the_step_for_the_others(server):
    a, b = _worker(server, 0, 0, 100), _worker(server, 1, 0, 6)
    try:
        assert _read_until(b, "done")  # b pushed steps 0..5; a now waits in step 6
        assert _read_until(a, "step 5")
        b.kill()
        b.wait()
        code, last = _outcome(a)
        assert code == 3, last
        assert last.startswith("aborted") and "step 6" in last and "worker 1 left" in last, last
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_restarted_worker_aborts_the_incomplete_step_and_goes_on(server):
    a = sc.connect([server], worker=0, num_workers=2, timeout=60)
    a.create_table("t", CFG, seed=3)
    b = _worker(server, 1, 0, 6)
    restarted = None
    ones = np.ones((10, DIM), np.float32)
    try:
        for step in range(6):
            a.push("t", np.arange(10, dtype=np.int64), ones, step=step)
        assert _read_until(b, "done")
        errors = []

        def push_step_6():
            try:
                a.push("t", np.arange(10, dtype=np.int64), ones, step=6)
            except Exception as e:  # noqa: BLE001 - the test inspects it
                errors.append(e)
        waiting = threading.Thread(target=push_step_6)
        waiting.start()
        # Rank 1 again (its first process still connected, as if its host died silently),
        # rolled back to step 3: the incomplete step 6 cannot finish as it began.
        restarted = _worker(server, 1, 3, 4)
        waiting.join(60)
        assert not waiting.is_alive(), "the waiting worker was never told that its step was aborted"
        assert len(errors) == 1 and isinstance(errors[0], sc.RpcStepAbortedError), errors
        assert "step 6" in str(errors[0]) and "worker 1 joined again" in str(errors[0])
        # The restarted worker's push opened step 3; rank 0 rolls back too and completes it.
        a.push("t", np.arange(10, dtype=np.int64), ones, step=3)
        assert _read_until(restarted, "done")
    finally:
        for p in (b, restarted):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.wait()


# A worker that rolls back with the others on RpcStepAbortedError (the README's recipe): meet at
# "recover", rank 0 restores the newest snapshot (kept in the server's --snapshot-dir), meet at
# "restored", go on from its step.
RECOVERING_WORKER = textwrap.dedent("""
    import os, sys, numpy as np, sparsecore as sc
    addr, rank, steps, restarted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    ps = sc.connect([addr], worker=rank, num_workers=2, timeout=60)
    ps.create_table("t", sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)), seed=5)

    def grads(step, rank):
        rng = np.random.default_rng(1000 * step + rank)
        ids = np.unique(rng.integers(0, 200, 50)).astype(np.int64)
        return ids, rng.standard_normal((ids.size, 4)).astype(np.float32)

    def meet(name):
        while True:
            try:
                return ps.barrier(name, 2)
            except sc.RpcStepAbortedError:
                continue

    def recover():
        meet("recover")
        if rank == 0:
            ps.kv_put("restored_step", ps.restore())  # the newest complete snapshot
        meet("restored")
        return int(ps.kv_get("restored_step"))

    step = recover() if restarted else 0
    if rank == 0 and not restarted:
        ps.save(0, overwrite=True)
    while step < steps:
        ids, g = grads(step, rank)
        try:
            ps.push("t", ids, g, step=step)
        except sc.RpcStepAbortedError:
            print("aborted", step, flush=True)
            step = recover()
            continue
        step += 1
        print("step", step, flush=True)
        if rank == 0 and step % 4 == 0:
            ps.save(step, overwrite=True)
    print("done", flush=True)
""")


def test_workers_roll_back_together_after_a_restart_and_match_an_uninterrupted_run(tmp_path):
    steps = 16
    server_process, server = _server("--shards", 2, "--snapshot-dir", tmp_path / "snaps")
    try:

        def start(rank, restarted):
            return subprocess.Popen([sys.executable, "-c", RECOVERING_WORKER, server, str(rank), str(steps),
                                     "1" if restarted else "0"], stdout=subprocess.PIPE, env=_env(), text=True)
        a, b = start(0, False), start(1, False)
        b2 = None
        try:
            assert _read_until(b, "step 9")
            b.kill()
            b.wait()
            b2 = start(1, True)
            outputs = []
            for p in (a, b2):
                out, _ = p.communicate(timeout=120)
                assert p.returncode == 0 and out.strip().endswith("done"), out
                outputs.append(out)
            assert "aborted" in outputs[0]  # the survivor was told, rolled back, and went on
        finally:
            for p in (a, b, b2):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        ref = sc.Server().client()
        ref.create_table("t", sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)), seed=5)
        for step in range(steps):
            parts = []
            for rank in range(2):
                rng = np.random.default_rng(1000 * step + rank)
                ids = np.unique(rng.integers(0, 200, 50)).astype(np.int64)
                parts.append((ids, rng.standard_normal((ids.size, 4)).astype(np.float32)))
            ref.push("t", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        remote = sc.connect([server], timeout=60)
        remote.create_table("t", sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)), seed=5)
        all_ids = np.arange(200, dtype=np.int64)
        np.testing.assert_allclose(remote.lookup("t", all_ids), ref.lookup("t", all_ids),
                                   rtol=1e-6, atol=1e-7)
    finally:
        _stop(server_process)


def test_a_barrier_is_aborted_when_a_member_leaves(server):
    w0 = sc.connect([server], worker=0, num_workers=2, timeout=60)
    w1 = sc.connect([server], worker=1, num_workers=2, timeout=60)
    w1.barrier("joined", 1)  # passes at once; worker 1 is now a member
    errors = []

    def wait():
        try:
            w0.barrier("end", 2)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)
    t = threading.Thread(target=wait)
    t.start()
    t.join(1.0)  # lets worker 0's barrier call reach the server before worker 1 leaves
    del w1  # worker 1 leaves: its connections close
    t.join(60)
    assert not t.is_alive(), "the barrier still waits for a worker that left"
    assert len(errors) == 1 and isinstance(errors[0], sc.RpcStepAbortedError), errors
    assert "worker 1 left" in str(errors[0])


def test_a_push_after_a_member_left_is_refused_until_it_joins_again(server):
    w0 = sc.connect([server], worker=0, num_workers=2, timeout=5)  # a retry below waits this long at most
    w0.create_table("t", CFG, seed=1)
    w1 = sc.connect([server], worker=1, num_workers=2, timeout=60)
    del w1  # worker 1 leaves with nothing pending
    ids, ones = np.arange(4, dtype=np.int64), np.ones((4, DIM), np.float32)
    refused = None
    for _ in range(20):  # until the server has seen the connection close
        try:
            w0.push("t", ids, ones, step=0)
        except sc.RpcStepAbortedError as e:
            refused = e
            break
        except sc.RpcTimeoutError:
            continue
    assert refused is not None and "worker 1 left" in str(refused)
    w1 = sc.connect([server], worker=1, num_workers=2, timeout=60)  # back: pushes wait again
    w1.create_table("t", CFG, seed=1)
    done = threading.Thread(target=w1.push, args=("t", ids, ones), kwargs={"step": 0})
    done.start()
    w0.push("t", ids, ones, step=0)
    done.join(60)
    assert not done.is_alive()


def test_sync_reply_is_released_by_its_own_tables_step(server):
    w0 = sc.connect([server], worker=0, num_workers=2, timeout=60)
    w1 = sc.connect([server], worker=1, num_workers=2, timeout=60)
    for ps in (w0, w1):
        for name in ("a", "b"):
            ps.create_table(name, CFG, seed=1)
    ids = np.arange(20, dtype=np.int64)
    before = w0.lookup("b", ids)
    done = {}

    def push(ps, table, key):
        ps.push(table, ids, np.ones((ids.size, DIM), np.float32), step=0)
        done[key] = True
    waiting_b = threading.Thread(target=push, args=(w0, "b", "b0"))
    waiting_b.start()
    waiting_a = threading.Thread(target=push, args=(w1, "a", "a1"))
    waiting_a.start()
    push(w0, "a", "a0")  # completes table a's step 0
    waiting_a.join(60)
    assert done.get("a1")
    waiting_b.join(1.0)  # table b's step is still incomplete: its push must still be waiting
    assert waiting_b.is_alive() and "b0" not in done
    np.testing.assert_array_equal(w0.lookup("b", ids), before)
    push(w1, "b", "b1")
    waiting_b.join(60)
    assert done.get("b0")
    assert not np.array_equal(w0.lookup("b", ids), before)


def test_a_sync_push_that_nobody_completes_times_out():
    with sc.Server(port=0) as s:
        ps = sc.connect([s.endpoint], worker=0, num_workers=2, timeout=0.5)
        ps.create_table("t", CFG, seed=1)
        with pytest.raises(sc.RpcTimeoutError):
            ps.push("t", np.arange(3, dtype=np.int64), np.ones((3, DIM), np.float32), step=0)
        with pytest.raises(sc.RpcTimeoutError):
            ps.barrier("never", 2)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e12, "5"])
def test_connect_refuses_a_bad_timeout(timeout):
    with pytest.raises(ValueError, match="timeout"):
        sc.connect(["127.0.0.1:1"], timeout=timeout)


def test_connect_has_a_finite_default_deadline():
    import inspect
    assert inspect.signature(sc.connect).parameters["timeout"].default == 300.0


def test_a_sync_step_whose_update_overflows_fails_for_every_worker(server):
    w0 = sc.connect([server], worker=0, num_workers=2, timeout=60)
    w1 = sc.connect([server], worker=1, num_workers=2, timeout=60)
    for ps in (w0, w1):
        ps.create_table("o", sc.TableConfig(dim=2, optimizer=sc.Adagrad(lr=0.1)), seed=1)
    ids = np.arange(8, dtype=np.int64)
    before = w0.lookup("o", ids, insert=True)  # inserts the rows
    errors = []

    def push_fine():
        try:
            w0.push("o", ids, np.ones((8, 2), np.float32), step=0)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)
    waiting = threading.Thread(target=push_fine)
    waiting.start()
    waiting.join(1.0)  # lets worker 0's push reach the server first
    with pytest.raises(ValueError, match="non-finite"):
        w1.push("o", ids, np.full((8, 2), 1e20, np.float32), step=0)
    waiting.join(60)
    assert not waiting.is_alive(), "the other worker of the failed step still waits"
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and "non-finite" in str(errors[0]), errors
    np.testing.assert_array_equal(w0.lookup("o", ids), before)
