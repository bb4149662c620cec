"""Parameter server: embedded vs remote, synchronous multi-process training, snapshots that
restore N servers onto M, a server killed with SIGKILL and restarted, bad input."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import sparsecore as sc

DIM = 5
CFG = sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1))
# Child processes import the same sparsecore as this one (a source tree or an installed wheel).
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"  # a child that crashes prints every thread's Python stack
    return env


def start_server_process(*args):
    p = subprocess.Popen([sys.executable, "-c", "import sys; from sparsecore.server import main; sys.exit(main(sys.argv[1:]))",
                          *map(str, args)], stdout=subprocess.PIPE, env=_env(), text=True)
    line = p.stdout.readline()
    assert line.startswith("listening on"), line
    return p, line.split()[2]


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def batch(step, worker, n=300):
    rng = np.random.default_rng(1000 * step + worker)
    ids = np.unique(rng.integers(-50, 400, n).astype(np.int64))
    grads = rng.standard_normal((ids.size, DIM)).astype(np.float32)
    return ids, grads


@pytest.mark.parametrize("remote", [False, True])
def test_fp16_rows_pull_and_update_as_the_collection_reads_them(rng, remote):
    cfg = sc.TableConfig(dim=18, storage="fp16", optimizer=sc.SGD(lr=0.5), init=sc.Normal(0.3))
    seed = int(rng.integers(1 << 30))
    server = sc.Server(port=0) if remote else sc.Server()
    try:
        ps = server.client()
        ps.create_table("t", cfg, seed=seed)
        coll = sc.EmbeddingCollection({"t": cfg}, seed=seed)
        ids = np.unique(rng.integers(-10**6, 10**6, 300)).astype(np.int64)
        first = ps.lookup("t", ids, insert=True)
        np.testing.assert_array_equal(first, coll.lookup("t", ids, insert=True))
        np.testing.assert_array_equal(first, first.astype(np.float16).astype(np.float32))
        grads = rng.standard_normal((ids.size, 18)).astype(np.float32)
        ps.push("t", ids, grads)
        coll.forward({"t": (ids, np.arange(ids.size + 1, dtype=np.int64))})
        coll.backward({"t": (ids, np.arange(ids.size + 1, dtype=np.int64))}, {"t": grads})
        np.testing.assert_array_equal(ps.lookup("t", ids), coll.lookup("t", ids))
    finally:
        server.stop()


def test_embedded_pull_matches_collection_init():
    ids = np.random.default_rng().integers(0, 10**6, 100).astype(np.int64)
    ps = sc.Server().client()
    ps.create_table("user", CFG, seed=7)
    coll = sc.EmbeddingCollection({"user": CFG}, seed=7)
    np.testing.assert_array_equal(ps.lookup("user", ids, insert=True), coll.lookup("user", ids, insert=True))


def test_eval_pull_never_inserts():
    ps = sc.Server().client()
    ps.create_table("t", CFG, seed=1)
    out = ps.lookup("t", np.array([1, 2, 3], np.int64))
    assert not out.any()
    assert sum(s["tables"]["t"]["rows"] for s in ps.stats()) == 0


WORKER = textwrap.dedent("""
    import sys, numpy as np, sparsecore as sc
    sys.path.insert(0, {tests!r})
    from test_ps import batch, CFG
    addrs, worker, steps = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    ps = sc.connect(addrs, worker=worker, num_workers=2, timeout=20)
    ps.create_table("t", CFG, seed=5)
    for step in range(steps):
        ids, grads = batch(step, worker)
        ps.lookup("t", ids, insert=True)
        ps.push("t", ids, grads, step=step)
""")


def test_two_servers_two_shards_two_workers_sync_equals_embedded():
    servers = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        addrs = ",".join(a for _, a in servers)
        script = WORKER.format(tests=os.path.dirname(os.path.abspath(__file__)))
        workers = [subprocess.Popen([sys.executable, "-c", script, addrs, str(w), "4"], env=_env()) for w in range(2)]
        for w in workers:
            assert w.wait(60) == 0
        remote = sc.connect(addrs.split(","))
        remote.create_table("t", CFG, seed=5)
        ref = sc.Server().client()
        ref.create_table("t", CFG, seed=5)
        for step in range(4):
            ids0, g0 = batch(step, 0)
            ids1, g1 = batch(step, 1)
            ids, grads = np.concatenate([ids0, ids1]), np.concatenate([g0, g1])
            ref.lookup("t", ids, insert=True)
            ref.push("t", ids, grads)
        all_ids = np.arange(-50, 400, dtype=np.int64)
        np.testing.assert_allclose(remote.lookup("t", all_ids), ref.lookup("t", all_ids),
                                   rtol=1e-6, atol=1e-7)
        assert sum(s["tables"]["t"]["rows"] for s in remote.stats()) == sum(
            s["tables"]["t"]["rows"] for s in ref.stats())
    finally:
        for p, _ in servers:
            stop(p)


def test_snapshot_written_by_three_shards_restores_onto_two(tmp_path):
    rng = np.random.default_rng()
    src = sc.Server(port=0, shards=3, snapshot_dir=str(tmp_path))
    try:
        c = src.client()
        c.create_table("t", CFG, seed=2)
        ids = rng.integers(-2**63, 2**63 - 1, 500, dtype=np.int64)
        c.push("t", ids, rng.standard_normal((500, DIM)).astype(np.float32))
        c.kv_put("reader", {"offset": 1234})
        want = c.lookup("t", ids)
        snap = c.save(step=7)
    finally:
        src.stop()
    assert snap == "step-7"
    assert sc.server.latest_snapshot(tmp_path) == str(tmp_path / snap)
    dst = sc.Server(port=0, shards=2, snapshot_dir=str(tmp_path))
    try:
        assert dst.restored_step == 7
        c2 = dst.client()
        c2.create_table("t", CFG, seed=2)
        np.testing.assert_array_equal(c2.lookup("t", ids), want)
        assert c2.kv_get("reader") == {"offset": 1234}
        assert sum(s["tables"]["t"]["rows"] for s in c2.stats()) == 500
    finally:
        dst.stop()
    emb = sc.Server(snapshot_dir=str(tmp_path)).client()
    emb.create_table("t", CFG, seed=2)
    np.testing.assert_array_equal(emb.lookup("t", ids), want)


def test_server_killed_and_restarted_resumes_from_snapshot(tmp_path):
    proc, addr = start_server_process("--shards", 2, "--snapshot-dir", tmp_path)
    port = addr.split(":")[1]
    try:
        ps = sc.connect([addr], timeout=10)
        ps.create_table("t", CFG, seed=3)
        position = 0
        for step in range(6):
            ids, grads = batch(step, 0)
            ps.lookup("t", ids, insert=True)
            ps.push("t", ids, grads, step=step)
            position += 1
            if step == 3:
                ps.kv_put("reader", {"batches": position})
                ps.save(step=step)
                at_snapshot = ps.lookup("t", np.arange(-50, 400, dtype=np.int64))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(sc.RpcConnectionError):
            ps.lookup("t", ids, insert=True)
        proc, addr = start_server_process("--port", port, "--shards", 2, "--snapshot-dir", tmp_path)
        ps = ps.reconnect(timeout=10)
        assert ps.kv_get("reader") == {"batches": 4}
        np.testing.assert_array_equal(ps.lookup("t", np.arange(-50, 400, dtype=np.int64)), at_snapshot)
    finally:
        stop(proc)


def test_async_pushes_apply_at_once():
    s = sc.Server(port=0, shards=2)
    try:
        a, b = sc.connect([s.endpoint]), sc.connect([s.endpoint])
        a.create_table("t", CFG, seed=1)
        b.create_table("t", CFG, seed=1)
        ids = np.arange(10, dtype=np.int64)
        before = a.lookup("t", ids, insert=True)
        b.push("t", ids, np.ones((10, DIM), np.float32))
        assert (a.lookup("t", ids, insert=True) < before).all()
    finally:
        s.stop()


def test_bad_input_changes_nothing():
    s = sc.Server(port=0)
    try:
        c = s.client()
        c.create_table("t", CFG, seed=1)
        ids = np.arange(4, dtype=np.int64)
        before = c.lookup("t", ids, insert=True)
        g = np.ones((4, DIM), np.float32)
        g[2, 1] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            c.push("t", ids, g)
        with pytest.raises(ValueError, match="shape"):
            c.push("t", ids, np.ones((3, DIM), np.float32))
        with pytest.raises(TypeError):
            c.lookup("t", ids.astype(np.float64), insert=True)
        with pytest.raises(KeyError):
            c.lookup("nope", ids, insert=True)
        with pytest.raises(ValueError, match="another configuration"):
            c.create_table("t", sc.TableConfig(dim=DIM + 1), seed=1)
        np.testing.assert_array_equal(c.lookup("t", ids, insert=True), before)
    finally:
        s.stop()


def test_barrier_and_dense_variables():
    import threading
    s = sc.Server(port=0, shards=2)
    try:
        clients = [sc.connect([s.endpoint], timeout=10) for _ in range(3)]
        done = []
        threads = [threading.Thread(target=lambda c=c: (c.barrier("b", 3), done.append(1))) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(done) == 3
        w = clients[0].dense_pull("mlp", 6, 0.5)
        np.testing.assert_array_equal(w, np.full(6, 0.5, np.float32))
        clients[1].dense_push("mlp", np.arange(6, dtype=np.float32), 0.1)
        np.testing.assert_allclose(clients[2].dense_pull("mlp", 6), 0.5 - 0.1 * np.arange(6), rtol=1e-6)
    finally:
        s.stop()


@pytest.mark.parametrize("shards,poll", [(1, 0.0), (3, 0.0), (3, 300e-6)])  # poll: both sides in poll mode
@pytest.mark.parametrize("dim", [1, 3, 18])
def test_embedded_and_remote_give_same_rows(shards, poll, dim):
    rng = np.random.default_rng()
    cfg = sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1))
    server = sc.Server(port=0, shards=shards, poll=poll)
    try:
        remote, emb = sc.connect([server.endpoint], poll=poll), sc.Server(shards=shards).client()
        for c in (remote, emb):
            c.create_table("t", cfg, seed=4)
        for n, span in [(1, 10), (257, 50), (1000, 10**9), (0, 1), (200, 2**63 - 1)]:
            ids = rng.integers(-span, span, n).astype(np.int64)
            ids = np.concatenate([ids, ids[: n // 4]])  # repeated ids far apart too
            n = ids.size
            np.testing.assert_array_equal(remote.lookup("t", ids, insert=True), emb.lookup("t", ids, insert=True))
            grads = rng.standard_normal((n, dim)).astype(np.float32)
            remote.push("t", ids, grads)
            emb.push("t", ids, grads)
            np.testing.assert_array_equal(remote.lookup("t", ids), emb.lookup("t", ids))
    finally:
        server.stop()


def test_poll_windows_out_of_range_are_refused():
    for bad in (-1e-6, 11.0):
        with pytest.raises(ValueError, match="poll"):
            sc.Server(port=0, poll=bad)
        with pytest.raises(ValueError, match="poll"):
            sc.connect(["127.0.0.1:1"], poll=bad)


def test_pipelined_pushes_with_unaligned_frames_apply_exactly():
    # dim 3 and an odd number of ids make each push frame 4 bytes short of a multiple of 8, so
    # frames that reach the server back to back leave the next one misaligned in its buffer.
    cfg = sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.5))
    server = sc.Server(port=0, shards=1)
    try:
        ps = server.client()
        ps.create_table("t", cfg, seed=6)
        ids = [np.arange(101, dtype=np.int64) + 1000 * t for t in range(4)]
        before = [ps.lookup("t", i, insert=True) for i in ids]
        grads = np.full((101, 3), 0.25, np.float32)

        def pushes(t):
            for _ in range(20):
                ps.push("t", ids[t], grads)
        threads = [threading.Thread(target=pushes, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        for t in range(4):  # 20 SGD steps of 0.5 * 0.25 on disjoint rows
            np.testing.assert_allclose(ps.lookup("t", ids[t], insert=True), before[t] - 20 * 0.125, rtol=1e-6, atol=1e-6)
    finally:
        server.stop()


def wait_until_stopped(pid, timeout=10.0):
    # kill() only queues SIGSTOP: a request sent before the stop lands would still be served.
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def test_stopped_server_is_detected_by_heartbeat():
    proc, addr = start_server_process("--shards", 1)
    try:
        # Long enough that a loaded machine never trips it while the server is alive.
        ps = sc.connect([addr], heartbeat=1.0)
        ps.create_table("t", CFG, seed=1)
        proc.send_signal(signal.SIGSTOP)  # connected, but answers nothing
        wait_until_stopped(proc.pid)
        t0 = time.monotonic()
        with pytest.raises(sc.RpcConnectionError, match="heartbeat"):
            ps.lookup("t", np.arange(10, dtype=np.int64), insert=True)
        assert time.monotonic() - t0 < 30
    finally:
        proc.send_signal(signal.SIGCONT)
        stop(proc)


def test_pull_into_out_and_strided_ids():
    server = sc.Server(port=0)
    try:
        ps = server.client()
        ps.create_table("t", CFG, seed=8)
        ids = np.arange(40, dtype=np.int64)[::2]  # not contiguous
        want = ps.lookup("t", ids.copy(), insert=True)
        out = np.empty((20, DIM), np.float32)
        assert ps.lookup("t", ids, out=out, insert=True) is out
        np.testing.assert_array_equal(out, want)
        with pytest.raises(ValueError, match="shape"):
            ps.lookup("t", ids, out=np.empty((19, DIM), np.float32), insert=True)
        with pytest.raises(TypeError, match="float32"):
            ps.lookup("t", ids, out=np.empty((20, DIM), np.float64), insert=True)
    finally:
        server.stop()
