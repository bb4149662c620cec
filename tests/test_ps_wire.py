"""float16 on the wire (``sc.connect(..., wire_dtype=...)``) against real ``sparsecore server``
processes: a pull returns the float32 rows rounded to float16 (to nearest even), a push
applies the float16-rounded gradients to float32 rows, and a request whose values do not
match its declared dtype and size is refused."""

import struct

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import rpc
from test_ps import start_server_process, stop

PULL_TABLES, PUSH_TABLES = 23, 24


@pytest.fixture
def cluster():
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        yield [addr for _, addr in procs]
    finally:
        for p, _ in procs:
            stop(p)


def rounded(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def test_pull_returns_float32_rows_rounded_to_float16(cluster, rng):
    cfg = sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), init=sc.Normal(0.3))
    half = sc.connect(cluster, timeout=60, wire_dtype={"a": "float16"})
    full = sc.connect(cluster, timeout=60)
    for ps in (half, full):
        ps.create_table("a", cfg, seed=5)
        ps.create_table("b", sc.TableConfig(dim=5, optimizer=sc.SGD(lr=0.1), init=sc.Normal(0.3)), seed=5)
    assert half._c.wire_dtype("a") == "float16" and half._c.wire_dtype("b") == "float32"
    ids = rng.integers(-2**63, 2**63 - 1, 500, dtype=np.int64)
    ids = np.concatenate([ids, ids[:50]])  # duplicates
    got = half.lookup("a", ids, insert=True)
    master = full.lookup("a", ids)
    assert not np.array_equal(got, master)  # rounding happened
    np.testing.assert_array_equal(got, rounded(master))
    # float16 and float32 tables in one request (the float32 part follows at an odd offset).
    rows_a, rows_b = half._c.pull_tables([("a", ids), ("b", ids)], True)
    np.testing.assert_array_equal(rows_a, rounded(master))
    np.testing.assert_array_equal(rows_b, full.lookup("b", ids))


@pytest.mark.parametrize("optimizer", [sc.SGD(lr=0.1), sc.Adagrad(lr=0.05)])
def test_push_applies_the_float16_rounded_gradients(cluster, rng, optimizer):
    cfg = sc.TableConfig(dim=3, optimizer=optimizer, init=sc.Zeros())
    half = sc.connect(cluster, timeout=60, wire_dtype="float16")
    full = sc.connect(cluster, timeout=60)
    half.create_table("h", cfg, seed=1)
    full.create_table("f", cfg, seed=1)
    for step in range(3):
        ids = np.unique(rng.integers(0, 400, 300)).astype(np.int64)
        grads = rng.standard_normal((ids.size, 3)).astype(np.float32)
        half.lookup("h", ids, insert=True)
        full.lookup("f", ids, insert=True)
        half.push("h", ids, grads, step=step)
        full.push("f", ids, rounded(grads), step=step)
    ids = np.arange(400, dtype=np.int64)
    # The float32 master rows of h equal those of f pushed with pre-rounded gradients.
    full.create_table("h", cfg, seed=1)
    assert np.any(full.lookup("h", ids))
    np.testing.assert_array_equal(full.lookup("h", ids), full.lookup("f", ids))


def test_push_of_a_gradient_beyond_float16_is_refused(cluster):
    ps = sc.connect(cluster, timeout=60, wire_dtype="float16")
    ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=0.1), init=sc.Zeros()), seed=1)
    ids = np.arange(10, dtype=np.int64)
    ps.lookup("t", ids, insert=True)
    grads = np.ones((10, 2), np.float32)
    grads[7, 1] = 1e6
    with pytest.raises(ValueError, match="float16"):
        ps.push("t", ids, grads)
    np.testing.assert_array_equal(ps.lookup("t", ids), np.zeros((10, 2), np.float32))


def test_connect_refuses_an_unknown_wire_dtype(cluster):
    with pytest.raises(ValueError, match="wire_dtype"):
        sc.connect(cluster, wire_dtype="bfloat16")
    with pytest.raises(ValueError, match="table 't'"):
        sc.connect(cluster, wire_dtype={"t": "int8"})


def frame(table, ids, wire_dtype, values=b""):
    name = table.encode()
    header = struct.pack("<IIqII", 1, 0, 0, 0, 0)
    entry = struct.pack("<IIQ", len(name), wire_dtype, ids.size)
    return header + entry + name.ljust((len(name) + 7) // 8 * 8, b"\0") + ids.tobytes() + values


def test_frames_with_a_wrong_dtype_or_size_are_refused():
    proc, addr = start_server_process("--shards", 1)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), init=sc.Zeros()), seed=1)
        host, port = addr.rsplit(":", 1)
        raw = rpc.RpcClient(host, int(port))
        ids = np.arange(4, dtype=np.int64)
        with pytest.raises(ValueError, match="wire dtype 2"):
            raw.call(PULL_TABLES, frame("t", ids, 2))
        halves = np.ones((4, 3), np.float16).tobytes()
        with pytest.raises(ValueError, match="layout says"):  # float16 declared, float32 sent
            raw.call(PUSH_TABLES, frame("t", ids, 1, np.ones((4, 3), np.float32).tobytes()))
        with pytest.raises(ValueError, match="layout says"):  # float32 declared, float16 sent
            raw.call(PUSH_TABLES, frame("t", ids, 0, halves))
        with pytest.raises(ValueError, match="layout says"):  # one value short
            raw.call(PUSH_TABLES, frame("t", ids, 1, halves[:-2]))
        np.testing.assert_array_equal(ps.lookup("t", ids), np.zeros((4, 3), np.float32))  # nothing applied
        raw.call(PUSH_TABLES, frame("t", ids, 1, halves))  # the well-formed one applies
        assert np.frombuffer(raw.call(PULL_TABLES, frame("t", ids, 1)), np.float16).shape == (12,)
        np.testing.assert_allclose(ps.lookup("t", ids), np.full((4, 3), -0.1, np.float32))
    finally:
        stop(proc)
