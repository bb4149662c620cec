"""Storage is confined: over RPC, snapshots are named, never placed. A real `sparsecore
server` process only reads and writes under its --snapshot-dir, refuses save and restore
without one, follows no symlink inside it, and accepts only plain names; requests in the old
path form are refused. Restores are all-or-nothing across shards, and the expensive create and
save are refused or cheap."""

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.rpc import RpcClient

sys.path.insert(0, os.path.dirname(__file__))
from checkpoint_support import HEADER, forge, row_files, start_server, stop  # noqa: E402

DIM = 4
CFG = sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1))
SAVE, RESTORE, CREATE = 14, 15, 11
IDS = np.arange(-100, 400, dtype=np.int64)


def tree(path):
    """Every path under `path` (relative), to show that nothing was written."""
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, ds, fs in os.walk(path) for f in ds + fs)


@pytest.fixture
def server(tmp_path):
    snaps = tmp_path / "snaps"
    p, addr, _ = start_server("--shards", 2, "--snapshot-dir", snaps)
    yield addr, snaps
    stop(p)


def trained(addr, steps=3):
    ps = sc.connect([addr], timeout=20)
    ps.create_table("t", CFG, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        ps.push("t", IDS, rng.standard_normal((IDS.size, DIM)).astype(np.float32))
    return ps


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".", ".hidden", "", "x" * 300])
def test_names_that_are_not_plain_are_refused(server, tmp_path, name):
    addr, snaps = server
    ps = trained(addr)
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="plain name"):
        ps.save(name)
    with pytest.raises(ValueError, match="plain name"):
        ps.restore(name or "..")
    assert tree(tmp_path) == before


def test_a_path_is_not_a_name():
    with pytest.raises(TypeError, match="named, not placed"):
        sc.Server(snapshot_dir=None).client().save(b"/tmp/x")


@pytest.mark.parametrize("body", [
    {"dir": "/tmp/sparsecore-escape", "step": 1, "overwrite": True},  # the old path form
    {"phase": "write", "name": "../../escape", "save_id": "0123456789abcdef", "step": 1},
    {"phase": "write", "name": "ok", "save_id": "../../../../tmp/x", "step": 1},
    {"phase": "commit", "name": "/abs", "save_id": "0123456789abcdef"},
    {"phase": "abort", "name": "ok", "save_id": "/" * 16},
    {"phase": "format", "name": "ok", "save_id": "0123456789abcdef"},
])
def test_raw_save_requests_outside_the_contract_are_refused(server, tmp_path, body):
    addr, _ = server
    trained(addr)
    host, port = addr.split(":")
    before = tree(tmp_path)
    with pytest.raises((ValueError, KeyError)):
        RpcClient(host, int(port)).call(SAVE, json.dumps(body).encode())
    assert tree(tmp_path) == before
    assert not os.path.exists("/tmp/sparsecore-escape")


@pytest.mark.parametrize("body", [
    {"dir": "/etc"}, {"phase": "prepare", "name": "../..", "restore_id": "x"},
    {"phase": "prepare", "name": "/etc", "restore_id": "x"}, {"phase": "commit", "restore_id": "nothing prepared"},
])
def test_raw_restore_requests_outside_the_contract_are_refused(server, body):
    addr, _ = server
    ps = trained(addr)
    before = ps.lookup("t", IDS)
    host, port = addr.split(":")
    with pytest.raises((ValueError, KeyError)):
        RpcClient(host, int(port)).call(RESTORE, json.dumps(body).encode())
    np.testing.assert_array_equal(ps.lookup("t", IDS), before)


def test_a_server_without_a_snapshot_dir_refuses_save_and_restore(tmp_path):
    p, addr, _ = start_server("--shards", 2)
    try:
        ps = trained(addr)
        with pytest.raises(ValueError, match="no snapshot directory"):
            ps.save(step=1)
        with pytest.raises(ValueError, match="no snapshot directory"):
            ps.restore()
        with pytest.raises(ValueError, match="no snapshot directory"):
            ps.restore("step-1")
        assert ps.lookup("t", IDS[:3]).shape == (3, DIM)  # still serving
    finally:
        stop(p)
    with pytest.raises(ValueError, match="no snapshot directory"):
        sc.Server().client().save(step=1)


def test_a_symlinked_snapshot_is_not_restored(server, tmp_path):
    addr, snaps = server
    ps = trained(addr)
    ps.save(step=1)
    outside = tmp_path / "outside"
    os.rename(snaps / "step-1", outside)
    os.symlink(outside, snaps / "step-9")
    with pytest.raises(KeyError, match="symlink"):
        ps.restore("step-9")
    assert sc.server.latest_snapshot(snaps) is None


def test_a_save_does_not_write_through_a_symlink(server, tmp_path):
    addr, snaps = server
    ps = trained(addr)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    os.symlink(victim, snaps / "step-2")
    with pytest.raises(ValueError, match="not a directory"):
        ps.save(step=2, overwrite=True)
    assert os.listdir(victim) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"
    assert os.path.islink(snaps / "step-2")


def test_a_symlinked_table_directory_is_refused(server, tmp_path):
    addr, snaps = server
    ps = trained(addr)
    ps.save(step=1)
    table_dir = snaps / "step-1" / "shard-1-of-2" / "table-0"
    os.rename(table_dir, tmp_path / "moved")
    os.symlink(tmp_path / "moved", table_dir)
    with pytest.raises(sc.CorruptDataError, match="symlink"):
        ps.restore("step-1")


@pytest.mark.parametrize("table_dir", ["../../../escape", "/tmp", "..", "a/b"])
def test_table_directories_in_markers_must_be_plain_names(server, table_dir):
    addr, snaps = server
    ps = trained(addr)
    ps.save(step=1)
    marker = snaps / "step-1" / "shard-0-of-2.json"
    m = json.loads(marker.read_text())
    m["tables"][0]["dir"] = table_dir
    marker.write_text(json.dumps(m))
    with pytest.raises(sc.CorruptDataError, match="plain name"):
        ps.restore("step-1")


def test_shard_markers_that_disagree_on_a_table_dim_are_refused(tmp_path):
    a, b = sc.Server(snapshot_dir=tmp_path / "a"), sc.Server(shards=2, snapshot_dir=tmp_path / "b")
    ca, cb = a.client(), b.client()
    ca.create_table("t", sc.TableConfig(dim=1), seed=1)
    cb.create_table("t", sc.TableConfig(dim=64), seed=1)
    ca.lookup("t", IDS, insert=True)
    cb.lookup("t", IDS, insert=True)
    ca.save(step=1)
    cb.save(step=1)
    # Shard 0's part from a dim-1 table beside shard 1's part from a dim-64 one.
    snap = tmp_path / "b" / "step-1"
    os.rename(snap / "shard-0-of-2", tmp_path / "wide-shard-0")
    src = tmp_path / "a" / "step-1"
    narrow = json.loads((src / "shard-0-of-1.json").read_text())
    m = json.loads((snap / "shard-0-of-2.json").read_text())
    m["tables"] = narrow["tables"]
    os.rename(src / "shard-0-of-1", snap / "shard-0-of-2")
    (snap / "shard-0-of-2.json").write_text(json.dumps(m))
    before = cb.lookup("t", IDS)
    with pytest.raises(sc.CorruptDataError, match="disagree"):
        cb.restore("step-1")
    np.testing.assert_array_equal(cb.lookup("t", IDS), before)


def test_restore_is_all_or_nothing_across_shards_and_servers(tmp_path):
    snaps = tmp_path / "snaps"
    procs = [start_server("--shards", 2, "--server-index", i, "--num-servers", 2, "--snapshot-dir", snaps)
             for i in range(2)]
    try:
        ps = sc.connect([addr for _, addr, _ in procs], timeout=20)
        ps.create_table("t", CFG, seed=1)
        rng = np.random.default_rng(1)
        ps.push("t", IDS, rng.standard_normal((IDS.size, DIM)).astype(np.float32))
        ps.kv_put("reader", {"at": 1})
        ps.save(step=1)
        ps.push("t", IDS, rng.standard_normal((IDS.size, DIM)).astype(np.float32))
        ps.kv_put("reader", {"at": 2})
        live = ps.lookup("t", IDS)
        # One damaged row file in the last shard's part (shard 0 would be restored first).
        table = snaps / "step-1" / "shard-3-of-4" / "table-0"
        data = bytearray(row_files(table)[0].read_bytes())
        fields = list(HEADER.unpack_from(data))
        fields[5] = 1 << 40
        HEADER.pack_into(data, 0, *fields)
        forge(table, 0, bytes(data), rows=1 << 40)
        with pytest.raises(sc.CorruptDataError):
            ps.restore("step-1")
        np.testing.assert_array_equal(ps.lookup("t", IDS), live)
        assert ps.kv_get("reader") == {"at": 2}
        assert sum(s["tables"]["t"]["rows"] for s in ps.stats()) == IDS.size
        for p, _, _ in procs:
            assert p.poll() is None
    finally:
        for p, _, _ in procs:
            stop(p)


def test_restore_then_applies_to_every_shard(server):
    addr, _ = server
    ps = trained(addr)
    ps.kv_put("reader", {"at": 1})
    saved = ps.lookup("t", IDS)
    assert ps.save(step=5) == "step-5"
    ps.push("t", IDS, np.ones((IDS.size, DIM), np.float32))
    ps.kv_put("reader", {"at": 2})
    assert ps.restore() == 5
    np.testing.assert_array_equal(ps.lookup("t", IDS), saved)
    assert ps.kv_get("reader") == {"at": 1}


def test_shard_bits_beyond_the_server_limit_are_refused(server):
    addr, _ = server
    ps = sc.connect([addr], timeout=20)
    with pytest.raises(ValueError, match="shard_bits must be <= 8"):
        ps.create_table("wide", sc.TableConfig(dim=4, shard_bits=16), seed=1)
    host, port = addr.split(":")
    body = {"table": {"name": "w", "dim": 4, "shard_bits": 16}, "seed": 1}
    with pytest.raises(ValueError, match="shard_bits"):
        RpcClient(host, int(port)).call(CREATE, json.dumps(body).encode())


def test_the_hash_shards_of_all_tables_of_a_shard_are_bounded(server):
    addr, _ = server
    ps = sc.connect([addr], timeout=20)
    for i in range(256):  # 256 tables x 2^8 hash shards: the budget of a server shard
        ps.create_table(f"t{i}", sc.TableConfig(dim=2, shard_bits=8), seed=1)
    with pytest.raises(ValueError, match="hash shards"):
        ps.create_table("one-more", sc.TableConfig(dim=2, shard_bits=0), seed=1)
    assert ps.lookup("t0", IDS[:3], insert=True).shape == (3, 2)


def test_saving_empty_tables_is_cheap(server):
    addr, snaps = server
    ps = sc.connect([addr], timeout=20)
    for i in range(40):
        ps.create_table(f"t{i}", sc.TableConfig(dim=4, shard_bits=8), seed=1)
    ps.save(step=1)
    files = tree(snaps / "step-1")
    # Per shard: a marker, a directory and a manifest per table; no row file for empty tables.
    assert not [f for f in files if f.endswith(".rows")]
    assert len(files) <= 2 * (2 + 40 * 2)
    assert ps.restore("step-1") == 1


def test_save_refuses_to_replace_a_snapshot_unless_asked(server):
    addr, snaps = server
    ps = trained(addr)
    ps.save(step=1)
    with pytest.raises(ValueError, match="exists"):
        ps.save(step=1)
    ps.save(step=1, overwrite=True)
    assert sorted(os.listdir(snaps)) == ["step-1"]  # no staging directory left behind


def test_a_save_in_progress_leaves_the_server_accepting_and_serving(tmp_path):
    """Snapshot files are written off the reactors (reactor 0 also accepts every connection):
    once a save has started writing, a new client connects and pulls before it ends. The
    save's size doubles until its writing outlasts a connect and a pull."""
    snaps = tmp_path / "snaps"
    p, addr, _ = start_server("--shards", 1, "--snapshot-dir", snaps)
    try:
        ps = sc.connect([addr], timeout=120)
        big = sc.TableConfig(dim=16, optimizer=sc.Adam(lr=0.1))
        ps.create_table("big", big, seed=1)
        inserted = 0
        for attempt in range(4):
            n = 100_000 << attempt
            ids = np.arange(inserted, n, dtype=np.int64)
            for chunk in np.array_split(ids, max(1, ids.size // 50_000)):
                ps.lookup("big", chunk, insert=True)
            inserted = n
            done = threading.Event()
            saver = threading.Thread(target=lambda a=attempt: (ps.save(f"big-{a}"), done.set()))
            saver.start()
            while not done.is_set() and not any(f.startswith(f".big-{attempt}.saving-") for f in os.listdir(snaps)):
                time.sleep(0.001)
            other = sc.connect([addr], timeout=120)
            other.create_table("big", big, seed=1)
            served = other.lookup("big", np.arange(10, dtype=np.int64))
            during = not done.is_set()
            saver.join(120)
            assert done.is_set()
            assert served.shape == (10, 16)
            if during:
                break
        else:
            pytest.fail("no connection was served while a save was writing")
        assert sorted(s for s in os.listdir(snaps) if not s.startswith(".")) == [f"big-{a}" for a in range(attempt + 1)]
    finally:
        stop(p)


def test_a_fifo_in_a_snapshot_does_not_block_the_server(server):
    addr, snaps = server
    ps = trained(addr)
    ps.save(step=1)
    victim = row_files(snaps / "step-1" / "shard-0-of-2" / "table-0")[0]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(sc.CorruptDataError, match="not a regular file"):
        ps.restore("step-1")
    other = sc.connect([addr], timeout=20)  # reactor 0 still accepts and serves
    other.create_table("t", CFG, seed=1)
    assert other.lookup("t", IDS[:3]).shape == (3, DIM)


def test_a_server_starting_on_a_forged_snapshot_exits_with_an_error(tmp_path):
    snaps = tmp_path / "snaps"
    p, addr, _ = start_server("--snapshot-dir", snaps)
    try:
        trained(addr).save(step=1)
    finally:
        stop(p)
    table = snaps / "step-1" / "shard-0-of-1" / "table-0"
    data = bytearray(row_files(table)[0].read_bytes())
    fields = list(HEADER.unpack_from(data))
    fields[5] = 1 << 40
    HEADER.pack_into(data, 0, *fields)
    forge(table, 0, bytes(data), rows=1 << 40)
    p, _, line = start_server("--snapshot-dir", snaps, check=False)
    assert p.wait(60) == 1 and line == ""  # an error exit, not a signal
    p.stderr_file.seek(0)
    assert "CorruptDataError" in p.stderr_file.read()
