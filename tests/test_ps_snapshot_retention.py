"""Retention of the servers' snapshots and ownership of their hidden entries, against real
``sparsecore server`` processes: ``Cluster.prune_snapshots`` removes all but the newest complete
snapshots of a series inside the snapshot directory only (never through a symlink, never an
incomplete one, a save in progress or another name), hostile requests are refused and change
nothing, ``--keep-snapshots`` prunes after each save, and a server starting removes only its
own unfinished entries, never a peer's save in progress; the staging left by servers that did
not name it after their index is removed by the server that commits saves."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc
from test_ps import start_server_process, stop

PRUNE = 30  # the server method (ps_protocol.h kPruneSnapshots)
SAVE_ID = "0123456789abcdef"


@pytest.fixture
def server(tmp_path):
    snap = tmp_path / "snap"
    proc, addr = start_server_process("--shards", 2, "--snapshot-dir", snap)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)
        yield ps, snap, addr
    finally:
        stop(proc)


def entries(snap):
    return sorted(os.listdir(snap))


def save_steps(ps, steps):
    for k in steps:
        ps.push("t", np.array([k], np.int64), np.ones((1, 2), np.float32))
        ps.save(k)


def test_prune_keeps_the_newest_complete_snapshots_and_touches_nothing_else(server, tmp_path):
    ps, snap, _ = server
    save_steps(ps, range(1, 6))
    ps.save("best")
    outside = tmp_path / "outside"
    shutil.copytree(snap / "step-1", outside)          # a complete snapshot elsewhere,
    os.symlink(outside, snap / "step-0")               # reachable only through a symlink
    (snap / "step-9").write_text("not a directory")
    os.mkdir(snap / "step-8")                          # incomplete: no markers
    peer = snap / f".step-7.saving-{SAVE_ID}.server-1"  # a save in progress
    os.mkdir(peer)
    assert ps.prune_snapshots(2) == ["step-3", "step-2", "step-1"]
    assert entries(snap) == sorted(["step-4", "step-5", "best", "step-0", "step-9", "step-8", peer.name])
    assert os.path.isfile(outside / "shard-0-of-2.json")
    assert ps.restore(5) == 5 and ps.restore(4) == 4
    # Protected names survive beyond the newest ones.
    assert ps.prune_snapshots(1, protect=["step-4", "step-3"]) == []
    assert ps.prune_snapshots(1) == ["step-4"]
    assert ps.prune_snapshots(1) == []


def test_the_coordinator_series_is_ordered_by_sequence_number(server):
    ps, snap, _ = server
    for seq, step in [(1, 10), (2, 12), (3, 4), (4, 6)]:  # a rollback: steps go down, sequence up
        ps.save(f"c{seq:06d}-step-{step}", step=step)
    save_steps(ps, [1])
    assert ps.prune_snapshots(2, prefix="c") == ["c000002-step-12", "c000001-step-10"]
    assert entries(snap) == ["c000003-step-4", "c000004-step-6", "step-1"]


@pytest.mark.parametrize("call, error", [
    (dict(keep=0), ValueError), (dict(keep=-3), ValueError), (dict(keep="2"), TypeError),
    (dict(keep=1, prefix="../step-"), ValueError), (dict(keep=1, prefix="a/b"), ValueError),
    (dict(keep=1, prefix=".step-"), ValueError), (dict(keep=1, prefix=""), ValueError),
    (dict(keep=1, prefix="x" * 65), ValueError), (dict(keep=1, protect=["../step-1"]), ValueError),
    (dict(keep=1, protect=["a/b"]), ValueError), (dict(keep=1, protect=[".."]), ValueError),
    (dict(keep=1, protect=["step-1\0"]), ValueError), (dict(keep=1, protect="step-1"), TypeError),
])
def test_hostile_prune_requests_are_refused_and_change_nothing(server, call, error):
    ps, snap, _ = server
    save_steps(ps, range(1, 4))
    before = entries(snap)
    with pytest.raises(error):
        ps.prune_snapshots(**call)
    assert entries(snap) == before


@pytest.mark.parametrize("body", [
    b"{}", b'{"prefix": "step-", "keep": "1", "protect": []}', b'{"prefix": "step-", "keep": 1, "protect": "x"}',
    b'{"prefix": 7, "keep": 1, "protect": []}', b'{"prefix": "step-", "keep": 1, "protect": [1]}',
    b'{"prefix": "/", "keep": 1, "protect": []}', b'{"prefix": "step-", "keep": 0, "protect": []}',
    b'{"prefix": "step-", "keep": 1, "protect": ["/etc"]}', b"not json",
])
def test_hostile_prune_frames_are_refused_by_the_server(server, body):
    from sparsecore import rpc

    ps, snap, addr = server
    save_steps(ps, range(1, 4))
    before = entries(snap)
    host, port = addr.rsplit(":", 1)
    raw = rpc.RpcClient(host, int(port))
    with pytest.raises(KeyError if body == b"{}" else ValueError):  # a missing field is named
        raw.call(PRUNE, body)
    good = json.dumps({"prefix": "step-", "keep": 2, "protect": []}).encode()
    assert entries(snap) == before
    assert json.loads(raw.call(PRUNE, good)) == {"removed": ["step-1"]}


def test_a_server_without_a_snapshot_dir_refuses_to_prune():
    proc, addr = start_server_process("--shards", 1)
    try:
        with pytest.raises(ValueError, match="snapshot directory"):
            sc.connect([addr], timeout=60).prune_snapshots(1)
    finally:
        stop(proc)


def test_keep_snapshots_prunes_after_each_save(tmp_path):
    snap = tmp_path / "snap"
    procs = [start_server_process("--shards", 1, "--server-index", i, "--num-servers", 2, "--snapshot-dir", snap,
                                  "--keep-snapshots", 2) for i in range(2)]
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)
        ps.save("named")
        save_steps(ps, range(1, 5))
        assert entries(snap) == ["named", "step-3", "step-4"]
        assert ps.restore() == 4
    finally:
        for p, _ in procs:
            stop(p)


@pytest.mark.parametrize("args, message", [
    (["--keep-snapshots", "-1"], "--keep-snapshots must be >= 0"), (["--keep-snapshots", "2"], "needs --snapshot-dir"),
])
def test_the_command_line_refuses_bad_keep_snapshots(args, message):
    from test_ps import _env

    p = subprocess.run([sys.executable, "-m", "sparsecore.server", *args], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr


def test_a_starting_server_removes_only_its_own_unfinished_entries(tmp_path):
    snap = tmp_path / "snap"
    os.makedirs(snap)
    peer = snap / f".step-5.saving-{SAVE_ID}.server-1"      # server 1 is saving right now
    os.makedirs(peer / "shard-1-of-2")
    (peer / "shard-1-of-2.json").write_text("{}")
    other = snap / f".step-5.saving-{SAVE_ID}.server-11"    # server 11's, not server 1's
    os.makedirs(other)
    mine = snap / f".step-5.saving-{SAVE_ID}.server-0"      # what server 0's previous run left
    os.makedirs(mine / "shard-0-of-2")
    pruning = snap / ".step-2.pruning-fedcba9876543210.server-0"
    os.makedirs(pruning)
    proc, _ = start_server_process("--shards", 1, "--server-index", 0, "--num-servers", 2, "--snapshot-dir", snap)
    try:
        assert entries(snap) == sorted([peer.name, other.name])
        assert os.path.isfile(peer / "shard-1-of-2.json")
    finally:
        stop(proc)


@contextlib.contextmanager
def two_servers(snap, shards):
    """Servers 0 and 1 of a cluster sharing the snapshot directory ``snap`` (processes), and a
    client of both with table "t"."""
    procs = [start_server_process("--shards", shards, "--server-index", i, "--num-servers", 2, "--snapshot-dir", snap)
             for i in range(2)]
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)
        yield ps
    finally:
        for p, _ in procs:
            stop(p)


def test_a_save_of_two_servers_gathers_their_parts_and_leaves_no_staging(tmp_path):
    snap = tmp_path / "snap"
    with two_servers(snap, shards=2) as ps:
        ids = np.arange(-20, 20, dtype=np.int64)
        ps.push("t", ids, np.ones((ids.size, 2), np.float32))
        rows = ps.lookup("t", ids)
        ps.save(1)
        assert entries(snap) == ["step-1"]
        assert sorted(f for f in os.listdir(snap / "step-1") if f.endswith(".json")) == [
            f"shard-{g}-of-4.json" for g in range(4)]
        ps.push("t", ids, np.ones((ids.size, 2), np.float32))
        ps.restore(1)
        np.testing.assert_array_equal(ps.lookup("t", ids), rows)


def test_a_forged_part_that_claims_a_shard_twice_fails_the_commit(tmp_path):
    """A second server's staging of the same save holding a shard already written: the
    commit refuses it (the save fails, the previous snapshot stays)."""
    snap = tmp_path / "snap"
    proc, addr = start_server_process("--shards", 1, "--snapshot-dir", snap)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)
        ps.save(1)
        from sparsecore import rpc

        host, port = addr.rsplit(":", 1)
        raw = rpc.RpcClient(host, int(port))

        def save(phase):
            return raw.call(14, json.dumps({"phase": phase, "name": "step-2", "save_id": SAVE_ID, "step": 2}).encode())

        save("write")
        forged = snap / f".step-2.saving-{SAVE_ID}.server-3"
        os.makedirs(forged)
        (forged / "shard-0-of-1.json").write_text("{}")
        with pytest.raises(sc.CorruptDataError, match="two servers"):
            save("commit")
        assert "step-2" not in entries(snap) and ps.restore() == 1
        save("abort")
        assert entries(snap) == ["step-1"]
    finally:
        stop(proc)


def test_a_failed_commit_removes_the_staged_parts(tmp_path):
    """Two servers given different snapshot directories (a misconfiguration): the commit on
    server 0 finds only its own part, the save fails with the reason, and server 0's staged
    part is removed rather than left beside the snapshots."""
    dirs = [tmp_path / "snap-a", tmp_path / "snap-b"]
    procs = [start_server_process("--shards", 1, "--server-index", i, "--num-servers", 2, "--snapshot-dir", dirs[i])
             for i in range(2)]
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)
        with pytest.raises(KeyError, match="no complete snapshot"):
            ps.save(1)
        assert entries(dirs[0]) == []
    finally:
        for p, _ in procs:
            stop(p)


def _unowned_entries(snap, outside):
    """Staging left by servers that did not name their staging after their index, and
    lookalikes that are not that or not a directory of the root; returns (stale, kept)."""
    stale = snap / f".step-3.saving-{SAVE_ID}"
    os.makedirs(stale / "shard-0-of-2")
    (stale / "shard-0-of-2.json").write_text("{}")
    os.makedirs(outside / "keep")
    link = snap / ".step-4.saving-fedcba9876543210"  # a symlink of that name is not followed
    os.symlink(outside, link)
    kept = [link.name]
    for name in (".step-3.saving-0123", f".step-3.saving-{SAVE_ID.upper()}", f"..saving-{SAVE_ID}",
                 f".step-3.saving-{SAVE_ID}.server-2", f"step-3.saving-{SAVE_ID}"):
        os.makedirs(snap / name)
        kept.append(name)
    (snap / f".step-5.saving-{SAVE_ID[::-1]}").write_text("a file, not a staging directory")
    kept.append(f".step-5.saving-{SAVE_ID[::-1]}")
    return stale, kept


def test_a_save_removes_the_staging_of_servers_without_an_index(tmp_path):
    snap = tmp_path / "snap"
    with two_servers(snap, shards=1) as ps:
        stale, kept = _unowned_entries(snap, tmp_path / "outside")
        ps.push("t", np.arange(8, dtype=np.int64), np.ones((8, 2), np.float32))
        ps.save(1)
        assert entries(snap) == sorted(kept + ["step-1"])
        assert os.path.isdir(tmp_path / "outside" / "keep")


def test_server_0_starting_removes_the_staging_of_servers_without_an_index(tmp_path):
    snap = tmp_path / "snap"
    os.makedirs(snap)
    stale, kept = _unowned_entries(snap, tmp_path / "outside")
    proc, _ = start_server_process("--shards", 1, "--server-index", 1, "--num-servers", 2, "--snapshot-dir", snap)
    stop(proc)
    assert os.path.isdir(stale)  # only the server that commits saves owns them
    proc, _ = start_server_process("--shards", 1, "--server-index", 0, "--num-servers", 2, "--snapshot-dir", snap)
    try:
        assert entries(snap) == sorted(kept)
        assert os.path.isdir(tmp_path / "outside" / "keep")
    finally:
        stop(proc)
