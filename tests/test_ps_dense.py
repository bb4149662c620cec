"""Dense variables with a server-side optimizer (``Cluster.dense_create`` / ``dense_step``,
``sparsecore.torch.ServerDenseOptimizer``) against real ``sparsecore server`` processes: each
rule matches its NumPy reference, synchronous workers apply the sum of their gradients once,
parameters spread over the shards largest first, and two synchronous workers end where the
gloo all-reduce path (``sync_dense`` + a torch optimizer) ends."""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import sparsecore as sc
from test_ps import _env, start_server_process, stop


@pytest.fixture
def cluster():
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        yield [addr for _, addr in procs]
    finally:
        for p, _ in procs:
            stop(p)


def reference(optimizer, w, grads):
    """NumPy reference of each rule (torch's conventions), in float64."""
    w = w.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if isinstance(optimizer, sc.SGD):
            w = w - optimizer.lr * g
        elif isinstance(optimizer, sc.Momentum):
            m = optimizer.momentum * m + g
            w = w - optimizer.lr * m
        elif isinstance(optimizer, sc.Adagrad):
            m = m + g * g
            w = w - optimizer.lr * g / (np.sqrt(m) + optimizer.eps)
        else:
            b1, b2 = optimizer.betas
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - optimizer.lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + optimizer.eps)
    return w


RULES = [sc.SGD(lr=0.1), sc.Momentum(lr=0.05, momentum=0.9), sc.Adagrad(lr=0.1), sc.Adam(lr=0.01)]


@pytest.mark.parametrize("optimizer", RULES, ids=lambda o: type(o).__name__)
def test_each_rule_matches_its_numpy_reference(cluster, rng, optimizer):
    ps = sc.connect(cluster, timeout=60)
    w0 = rng.standard_normal(37).astype(np.float32)
    ps.dense_create("w", w0, optimizer, shard=3)
    grads = [rng.standard_normal(37).astype(np.float32) for _ in range(4)]
    for step, g in enumerate(grads):
        got = ps.dense_step("w", g, step=step, shard=3)
    np.testing.assert_allclose(got, reference(optimizer, w0, grads), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ps.dense_pull("w", 0, shard=3), got)


def test_synchronous_workers_apply_the_sum_of_their_gradients_once(cluster, rng):
    opt = sc.Adam(lr=0.01)
    workers = [sc.connect(cluster, worker=r, num_workers=2, timeout=60) for r in range(2)]
    w0 = rng.standard_normal(10).astype(np.float32)
    workers[0].dense_create("w", w0, opt, shard=1)
    grads = [[rng.standard_normal(10).astype(np.float32) for _ in range(3)] for _ in range(2)]
    out = [None, None]

    def run(r):
        for step in range(3):
            out[r] = workers[r].dense_step("w", grads[r][step], step=step, shard=1)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    np.testing.assert_array_equal(out[0], out[1])
    summed = [grads[0][s] + grads[1][s] for s in range(3)]
    np.testing.assert_allclose(out[0], reference(opt, w0, summed), rtol=1e-5, atol=1e-6)


def test_bad_dense_calls_are_refused_and_change_nothing(cluster):
    ps = sc.connect(cluster, timeout=60)
    ps.dense_create("w", np.ones(4, np.float32), sc.SGD(lr=0.1))
    ps.dense_create("w", np.zeros(4, np.float32), sc.SGD(lr=0.1))  # exists alike: kept as it is
    with pytest.raises(ValueError, match="exists with size 4"):
        ps.dense_create("w", np.ones(4, np.float32), sc.Adam())
    with pytest.raises(ValueError, match="has 3 values"):
        ps.dense_step("w", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ps.dense_step("w", np.array([1, np.nan, 1, 1], np.float32))
    with pytest.raises(ValueError, match="not a plain push"):
        ps.dense_push("w", np.ones(4, np.float32), 0.1)
    with pytest.raises(KeyError):
        ps.dense_step("absent", np.ones(4, np.float32))
    with pytest.raises(ValueError, match="shard 9"):
        ps.dense_step("w", np.ones(4, np.float32), shard=9)
    with pytest.raises(ValueError, match="NaN"):
        ps.dense_create("v", np.array([np.inf], np.float32), sc.SGD())
    np.testing.assert_array_equal(ps.dense_pull("w", 0), np.ones(4, np.float32))


def test_parameters_spread_over_shards_largest_first():
    from sparsecore.torch import place_by_size
    assert place_by_size([10, 50, 30, 5], 2) == [1, 0, 1, 1]
    assert place_by_size([8, 8, 8, 8], 4) == [0, 1, 2, 3]
    assert place_by_size([3], 4) == [0]


WORKER = textwrap.dedent("""
    import copy, sys, numpy as np, torch, torch.distributed as dist
    import sparsecore as sc
    from sparsecore.torch import ServerDenseOptimizer, mlp, sync_dense
    addrs, rank, store, out = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rng = np.random.default_rng(10 + rank)
    x = torch.from_numpy(rng.standard_normal((4, 16, 6)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((4, 16, 1)).astype(np.float32))

    def train(model, opt):
        for step in range(4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[step]), y[step]).backward()
            opt.step()
        return model.state_dict()

    torch.manual_seed(rank)  # different on purpose: both paths start from rank 0's values
    gloo_model = mlp(6, [8, 4])
    server_model = copy.deepcopy(gloo_model)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    handles = sync_dense(gloo_model)
    gloo = train(gloo_model, torch.optim.Adam(gloo_model.parameters(), lr=0.01, eps=1e-8))
    cluster = sc.connect(addrs, worker=rank, num_workers=2, timeout=60)
    opt = ServerDenseOptimizer(server_model.parameters(), cluster, optimizer=sc.Adam(lr=0.01, eps=1e-8))
    server = train(server_model, opt)
    torch.save({"gloo": gloo, "server": server, "shards": opt.shards}, out)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_two_synchronous_workers_match_the_gloo_path(cluster, tmp_path):
    pytest.importorskip("torch")
    import torch
    outs = [str(tmp_path / f"out{r}.pt") for r in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, ",".join(cluster), str(r), str(tmp_path / "store"),
                                 outs[r]], env=_env()) for r in range(2)]
    for w in workers:
        assert w.wait(120) == 0
    a, b = (torch.load(o) for o in outs)
    assert a["shards"] == b["shards"] and len(set(a["shards"])) > 1  # spread over several shards
    for name in a["gloo"]:
        assert torch.equal(a["server"][name], b["server"][name]), name  # the workers agree
        torch.testing.assert_close(a["server"][name], a["gloo"][name], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    start = sc.torch.mlp(6, [8, 4]).state_dict()
    assert any(not torch.equal(a["server"][n], start[n]) for n in start)  # it trained


def test_dense_variables_on_every_shard_survive_a_snapshot(tmp_path, rng):
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2,
                                  "--snapshot-dir", tmp_path / "snap") for i in range(2)]
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        opt = sc.SGD(lr=0.5)
        for shard in range(4):
            ps.dense_create(f"w{shard}", rng.standard_normal(5).astype(np.float32), opt, shard=shard)
            ps.dense_step(f"w{shard}", np.ones(5, np.float32), shard=shard)
        saved = [ps.dense_pull(f"w{shard}", 0, shard=shard) for shard in range(4)]
        ps.save(1)
        for shard in range(4):
            ps.dense_step(f"w{shard}", np.ones(5, np.float32), shard=shard)
        ps.restore(1)
        for shard in range(4):
            np.testing.assert_array_equal(ps.dense_pull(f"w{shard}", 0, shard=shard), saved[shard])
            # The restored variables keep their optimizer; creating them again is a no-op.
            ps.dense_create(f"w{shard}", np.zeros(5, np.float32), opt, shard=shard)
            np.testing.assert_array_equal(ps.dense_step(f"w{shard}", np.ones(5, np.float32), shard=shard),
                                          saved[shard] - np.float32(0.5))
    finally:
        for p, _ in procs:
            stop(p)


@pytest.mark.parametrize("optimizer", [sc.Adam(lr=0.01), sc.Adagrad(lr=0.1), sc.Momentum(lr=0.1, momentum=0.9)],
                         ids=["adam", "adagrad", "momentum"])
def test_a_restored_dense_variable_goes_on_with_its_optimizer_state(tmp_path, rng, optimizer):
    proc, address = start_server_process("--shards", 2, "--snapshot-dir", tmp_path / "snap")
    try:
        ps = sc.connect([address], timeout=60)
        ps.dense_create("w", rng.standard_normal(7).astype(np.float32), optimizer, shard=1)
        grads = [rng.standard_normal(7).astype(np.float32) for _ in range(6)]
        for g in grads[:3]:
            ps.dense_step("w", g, shard=1)
        ps.save(3)
        uninterrupted = [ps.dense_step("w", g, shard=1) for g in grads[3:]]
        ps.restore(3)
        # Moments, accumulators and Adam's update count are those of step 3: bit for bit the same.
        resumed = [ps.dense_step("w", g, shard=1) for g in grads[3:]]
        for a, b in zip(uninterrupted, resumed):
            np.testing.assert_array_equal(a, b)
    finally:
        stop(proc)


def test_hostile_dense_frames_are_refused_and_change_nothing():
    import struct

    from sparsecore import rpc
    proc, addr = start_server_process("--shards", 1)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.dense_create("w", np.ones(4, np.float32), sc.SGD(lr=0.1))
        host, port = addr.rsplit(":", 1)
        raw = rpc.RpcClient(host, int(port))
        create, step = 28, 29

        def step_frame(size, grads, name=b"w", reserved=0, worker=0, num_workers=0):
            head = struct.pack("<IIQqII", len(name), reserved, size, 0, worker, num_workers)
            return head + name.ljust(8, b"\0") + grads

        good = np.full(4, 2.0, np.float32).tobytes()
        for frame in (step_frame(4, good[:-4]),                   # a value short
                      step_frame(5, good),                        # lying size
                      step_frame(2**62, good),                    # huge size
                      step_frame(4, good, reserved=1),            # reserved field set
                      step_frame(4, good, worker=3, num_workers=2),  # worker out of range
                      step_frame(4, good)[:20]):                  # truncated header
            with pytest.raises(ValueError):
                raw.call(step, frame)
        opt = b'{"name": "sgd", "lr": 0.1, "weight_decay": 0.0}'
        for frame in (struct.pack("<IIQ", 1, len(opt), 2) + b"v".ljust(8, b"\0") + opt.ljust(48, b"\0") + b"\0" * 4,
                      struct.pack("<IIQ", 1, 1 << 20, 1) + b"v".ljust(8, b"\0"),
                      struct.pack("<IIQ", 0, len(opt), 1) + opt.ljust(48, b"\0") + b"\0" * 4):
            with pytest.raises(ValueError):
                raw.call(create, frame)
        with pytest.raises(ValueError):  # an unknown optimizer field
            bad = b'{"name": "sgd", "lr": 0.1, "bogus": 1}'
            raw.call(create, struct.pack("<IIQ", 1, len(bad), 1) + b"v".ljust(8, b"\0") + bad.ljust(40, b"\0")
                     + b"\0" * 4)
        np.testing.assert_array_equal(ps.dense_pull("w", 0), np.ones(4, np.float32))
        np.testing.assert_array_equal(np.frombuffer(raw.call(step, step_frame(4, good)), np.float32),
                                      np.full(4, 0.8, np.float32))
    finally:
        stop(proc)
