"""Parameter servers whose shards keep their rows on a device (``sparsecore server --device
cuda``): a client's pulls and pushes give a CPU server's results bit for bit, snapshots move
between CPU and device servers both ways, and tables the device store cannot hold are refused
at creation. Each case runs against real server processes, with the emulated device (and a
real one where a GPU is present)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

DEVICES = [
    pytest.param(["--device", "cuda", "--emulate"], id="emulated"),
    pytest.param(["--device", "cuda"], id="device",
                 marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))
OPTIMIZERS = {
    "adagrad": sc.Adagrad(lr=0.1),
    "adam": sc.Adam(lr=0.05),
    "rowwise": sc.RowwiseAdagrad(lr=0.2),
    "ftrl": sc.FTRL(lr=0.1, l1=0.01),
}


def _start(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen([sys.executable, "-c", "import sys; from sparsecore.server import main; sys.exit(main(sys.argv[1:]))",
                          *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening on"):
        p.wait(10)
        raise AssertionError(f"server did not start: {line!r} {p.stderr.read()}")
    return p, line.split()[2]


def _stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _steps(rng, dim, steps=4, n=200):
    for _ in range(steps):
        ids = np.unique(rng.integers(-300, 300, n)).astype(np.int64)
        yield ids, (rng.standard_normal((ids.size, dim)) * 3).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("storage,dim", [("fp32", 5), ("fp32", 16), ("fp16", 3)])
def test_pulls_and_pushes_equal_a_cpu_servers_bit_for_bit(device, opt, storage, dim):
    cfg = sc.TableConfig(dim=dim, optimizer=OPTIMIZERS[opt], storage=storage, init=sc.Normal(0.1))
    rng = np.random.default_rng(dim)
    cpu, cpu_addr = _start("--shards", 2)
    dev, dev_addr = _start("--shards", 2, *device)
    try:
        a, b = sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)
        for c in (a, b):
            c.create_table("t", cfg, seed=11)
        for step, (ids, grads) in enumerate(_steps(rng, dim)):
            np.testing.assert_array_equal(b.lookup("t", ids, insert=True), a.lookup("t", ids, insert=True))
            a.push("t", ids, grads, step=step)
            b.push("t", ids, grads, step=step)
        probe = np.arange(-310, 310, dtype=np.int64)
        np.testing.assert_array_equal(b.lookup("t", probe), a.lookup("t", probe))
        rows = [sum(s["tables"]["t"]["rows"] for s in c.stats()) for c in (a, b)]
        assert rows[0] == rows[1] > 0
        assert all(s["tables"]["t"].get("device") for s in b.stats())
    finally:
        _stop(cpu)
        _stop(dev)


@pytest.mark.parametrize("device", DEVICES)
def test_a_snapshot_moves_from_a_device_server_to_a_cpu_server_and_back(device, tmp_path):
    cfg = sc.TableConfig(dim=6, optimizer=sc.Adam(lr=0.05))
    rng = np.random.default_rng(3)
    probe = np.arange(-310, 310, dtype=np.int64)
    dev, addr = _start("--shards", 2, "--snapshot-dir", tmp_path / "a", *device)
    try:
        c = sc.connect([addr], timeout=30)
        c.create_table("t", cfg, seed=4)
        for step, (ids, grads) in enumerate(_steps(rng, 6)):
            c.push("t", ids, grads, step=step)
        want = c.lookup("t", probe)
        c.save(step=4)
    finally:
        _stop(dev)
    # Onto a CPU server with another number of shards, then trained there and saved again.
    os.rename(tmp_path / "a", tmp_path / "b")
    cpu, addr = _start("--shards", 3, "--snapshot-dir", tmp_path / "b")
    try:
        c = sc.connect([addr], timeout=30)
        c.create_table("t", cfg, seed=4)
        np.testing.assert_array_equal(c.lookup("t", probe), want)
        ids, grads = next(_steps(rng, 6))
        c.push("t", ids, grads, step=5)
        want = c.lookup("t", probe)
        c.save(step=5)
    finally:
        _stop(cpu)
    dev, addr = _start("--shards", 1, "--snapshot-dir", tmp_path / "b", *device)
    try:
        c = sc.connect([addr], timeout=30)
        c.create_table("t", cfg, seed=4)
        np.testing.assert_array_equal(c.lookup("t", probe), want)
        assert sum(s["tables"]["t"]["rows"] for s in c.stats()) == np.count_nonzero(want.any(axis=1))
    finally:
        _stop(dev)


@pytest.mark.parametrize("config,what", [
    (dict(num_embeddings=50), "num_embeddings"),
    (dict(expiry=sc.Expiry(capacity=100, eviction="sampled")), "sampled"),
])
def test_tables_the_device_store_cannot_hold_are_refused_at_creation(config, what):
    server = sc.Server(port=0, device="cuda", emulate=True)
    try:
        c = server.client()
        with pytest.raises(ValueError, match=what):
            c.create_table("t", sc.TableConfig(dim=4, **config), seed=1)
        c.create_table("ok", sc.TableConfig(dim=4), seed=1)  # the server goes on
        assert c.lookup("ok", np.arange(3, dtype=np.int64), insert=True).shape == (3, 4)
    finally:
        server.stop()


def test_a_bad_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        sc.Server(device="tpu")
    with pytest.raises(ValueError, match="emulate"):
        sc.Server(emulate=True)


@pytest.mark.skipif(sc_cuda.is_available(), reason="a device is present")
def test_a_device_server_without_a_device_says_so():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        sc.Server(device="cuda")


def _adagrad_tables():
    return {"a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
            "b": sc.TableConfig(dim=4, optimizer=sc.Adam(lr=0.05)),
            "c": sc.TableConfig(dim=5, optimizer=sc.RowwiseAdagrad(lr=0.2))}


@pytest.mark.parametrize("device", DEVICES)
def test_an_overflowing_push_is_undone_and_training_goes_on_as_on_a_cpu_server(device):
    # g^2 = 1e40 overflows the Adagrad state while the weights stay finite: the whole push
    # (rows, update counts and the step) must be taken back, as a CPU shard does.
    cpu, cpu_addr = _start("--shards", 1)
    dev, dev_addr = _start("--shards", 1, *device)
    try:
        a, b = sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)
        ids = np.arange(-5, 20, dtype=np.int64)
        for c in (a, b):
            for name, cfg in _adagrad_tables().items():
                c.create_table(name, cfg, seed=3)
            c.push("b", ids[:10], np.ones((10, 4), np.float32), step=0)
        before = b.lookup("a", ids, insert=True)
        a.lookup("a", ids, insert=True)
        for c in (a, b):
            with pytest.raises(ValueError, match="non-finite"):
                c.push("a", ids, np.full((ids.size, 3), 1e20, np.float32), step=1)
        np.testing.assert_array_equal(b.lookup("a", ids), before)
        np.testing.assert_array_equal(a.lookup("a", ids), before)
        rng = np.random.default_rng(5)
        for step in range(2, 5):
            for name, dim in (("a", 3), ("b", 4)):
                grads = rng.standard_normal((ids.size, dim)).astype(np.float32)
                a.push(name, ids, grads, step=step)
                b.push(name, ids, grads, step=step)
        for name in ("a", "b"):
            np.testing.assert_array_equal(b.lookup(name, ids), a.lookup(name, ids))
        assert [s["tables"]["a"]["step"] for s in b.stats()] == [s["tables"]["a"]["step"] for s in a.stats()]
    finally:
        _stop(cpu)
        _stop(dev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", [("c", "b", "a"), ("a", "c", "b")], ids=["last-fails", "first-fails"])
def test_a_multi_table_push_is_all_or_nothing_on_a_device_server(device, order):
    cpu, cpu_addr = _start("--shards", 1)
    dev, dev_addr = _start("--shards", 1, *device)
    try:
        a, b = sc.connect([cpu_addr], timeout=30), sc.connect([dev_addr], timeout=30)
        ids = np.arange(10, dtype=np.int64)
        tables = _adagrad_tables()
        for c in (a, b):
            for name, cfg in tables.items():
                c.create_table(name, cfg, seed=7)
        before = {name: b.lookup(name, ids, insert=True) for name in tables}
        a_before = {name: a.lookup(name, ids, insert=True) for name in tables}
        grads = {name: np.ones((10, cfg.dim), np.float32) for name, cfg in tables.items()}
        grads["a"] = np.full((10, 3), 1e20, np.float32)  # overflows table a's Adagrad state
        for c in (a, b):
            with pytest.raises(ValueError, match="non-finite"):
                c._c.push_tables([(name, ids, grads[name]) for name in order], 0)
        for name in tables:
            np.testing.assert_array_equal(b.lookup(name, ids), before[name])
            np.testing.assert_array_equal(a.lookup(name, ids), a_before[name])
        # The tables go on from where they were: the same results as the CPU server's.
        grads["a"] = np.ones((10, 3), np.float32)
        for c in (a, b):
            c._c.push_tables([(name, ids, grads[name]) for name in order], 1)
        for name in tables:
            np.testing.assert_array_equal(b.lookup(name, ids), a.lookup(name, ids))
    finally:
        _stop(cpu)
        _stop(dev)


def test_device_stats_and_deltas_read_counts_and_changed_rows_only(tmp_path):
    # In process (the emulator's copy counters are per process): statistics copy no row to the
    # host, and a delta only the rows it carries.
    dim, rows = 16, 3000
    servers = [sc.Server(export_dir=tmp_path / "cpu"), sc.Server(device="cuda", emulate=True,
                                                                   export_dir=tmp_path / "dev")]
    try:
        cpu, dev = (s.client() for s in servers)
        ids = np.arange(rows, dtype=np.int64)
        for c in (cpu, dev):
            c.create_table("t", sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1)), seed=2)
            c.push("t", ids, np.ones((rows, dim), np.float32), step=0)
            c.export_full("s", version=1)
            c.push("t", ids[:7], np.ones((7, dim), np.float32), step=1)
        table_bytes = rows * dim * 4
        sc_cuda.reset_emulator_counters()
        stats = dev.stats()
        assert sc_cuda.emulator_counters()["d2h_bytes"] < table_bytes // 10
        assert stats[0]["tables"]["t"]["rows"] == cpu.stats()[0]["tables"]["t"]["rows"] == rows
        sc_cuda.reset_emulator_counters()
        written = dev.export_delta("s", since=1, version=2)
        assert sc_cuda.emulator_counters()["d2h_bytes"] < table_bytes // 10
        assert written == cpu.export_delta("s", since=1, version=2)
        assert written["rows"] == 7
    finally:
        for s in servers:
            s.stop()
