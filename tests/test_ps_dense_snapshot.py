"""Snapshots of dense variables with a server-side optimizer, against real ``sparsecore server``
processes: a snapshot keeps each variable's optimizer state and update count with its values,
so a run restored from it goes on bit for bit as the uninterrupted run; restored onto another
number of shards, the variables of a ``ServerDenseOptimizer`` land where it looks for them;
a damaged dense file is refused and changes nothing."""

import os

import numpy as np
import pytest

import sparsecore as sc
from test_ps import start_server_process, stop

RULES = [sc.Adam(lr=0.01), sc.Momentum(lr=0.05, momentum=0.9), sc.Adagrad(lr=0.1)]


def start_cluster(snap, servers, shards=1):
    return [start_server_process("--shards", shards, "--server-index", i, "--num-servers", servers,
                                 "--snapshot-dir", snap) for i in range(servers)]


def grad(step, size, salt=0):
    return np.random.default_rng(1000 * salt + step).standard_normal(size).astype(np.float32)


def test_restored_adam_and_friends_continue_bit_for_bit(tmp_path):
    procs = start_cluster(tmp_path / "snap", 2, shards=2)
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        names = [(f"w{i}", opt, i % ps.total_shards) for i, opt in enumerate(RULES)]
        for name, opt, shard in names:
            ps.dense_create(name, grad(99, 13, salt=len(name)), opt, shard=shard)
        k, n = 3, 7

        def run(steps):
            for step in steps:
                for i, (name, _, shard) in enumerate(names):
                    ps.dense_step(name, grad(step, 13, salt=i), step=step, shard=shard)
            return [ps.dense_pull(name, 0, shard=shard) for name, _, shard in names]

        run(range(k))
        ps.save(k)
        uninterrupted = run(range(k, n))
        ps.restore(k)
        # A restarted worker creates its variables again: a no-op, the restored state stays.
        for name, opt, shard in names:
            ps.dense_create(name, np.zeros(13, np.float32), opt, shard=shard)
        restored = run(range(k, n))
        for a, b in zip(uninterrupted, restored):
            np.testing.assert_array_equal(a, b)
    finally:
        for p, _ in procs:
            stop(p)


def test_a_server_restarted_from_a_snapshot_keeps_the_optimizer_state(tmp_path):
    snap = tmp_path / "snap"
    proc, addr = start_server_process("--shards", 2, "--snapshot-dir", snap)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.dense_create("w", grad(0, 9), sc.Adam(lr=0.02), shard=1)
        for step in range(4):
            ps.dense_step("w", grad(step, 9), step=step, shard=1)
        ps.save(4)
        expected = [ps.dense_step("w", grad(step, 9), step=step, shard=1) for step in range(4, 6)]
    finally:
        stop(proc)
    proc, addr = start_server_process("--shards", 2, "--snapshot-dir", snap)  # restores step-4 at start
    try:
        ps = sc.connect([addr], timeout=60)
        got = [ps.dense_step("w", grad(step, 9), step=step, shard=1) for step in range(4, 6)]
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)
    finally:
        stop(proc)


def test_restore_onto_another_shard_count_places_server_dense_optimizer_variables(tmp_path):
    torch = pytest.importorskip("torch")
    from sparsecore.torch import ServerDenseOptimizer, place_by_size

    snap = tmp_path / "snap"
    torch.manual_seed(0)
    model = sc.torch.mlp(7, [11, 5, 3])
    sizes = [p.numel() for p in model.parameters()]
    assert place_by_size(sizes, 3) != place_by_size(sizes, 2)

    def train(opt, steps):
        for step in steps:
            for i, p in enumerate(model.parameters()):
                p.grad = torch.from_numpy(grad(step, p.numel(), salt=i)).view_as(p)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    procs = start_cluster(snap, 3)
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        opt = ServerDenseOptimizer(model.parameters(), ps, sc.Adam(lr=0.01), name="mlp")
        ps.dense_pull("plain", 4, 1.5, shard=2)  # a plain variable on the last shard
        train(opt, range(3))
        ps.save(3)
        uninterrupted = train(opt, range(3, 6))
    finally:
        for p, _ in procs:
            stop(p)
    procs = start_cluster(snap, 2)  # two shards restore the three shards' step-3
    try:
        ps = sc.connect([a for _, a in procs], timeout=60)
        placed = place_by_size(sizes, 2)
        for i, shard in enumerate(placed):
            ps.dense_pull(f"mlp/{i}", 0, shard=shard)  # on its shard of the new layout
            with pytest.raises(ValueError):
                ps.dense_pull(f"mlp/{i}", 0, shard=1 - shard)  # and nowhere else
        np.testing.assert_array_equal(ps.dense_pull("plain", 0, shard=0), np.full(4, 1.5, np.float32))
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # the restored values come from the servers
        opt = ServerDenseOptimizer(model.parameters(), ps, sc.Adam(lr=0.01), name="mlp")
        restored = train(opt, range(3, 6))
        for a, b in zip(uninterrupted, restored):
            assert torch.equal(a, b)
    finally:
        for p, _ in procs:
            stop(p)


@pytest.mark.parametrize("damage", ["truncate", "flip", "symlink"])
def test_a_damaged_dense_file_is_refused_and_changes_nothing(tmp_path, damage):
    snap = tmp_path / "snap"
    proc, addr = start_server_process("--shards", 1, "--snapshot-dir", snap)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.dense_create("w", np.ones(6, np.float32), sc.Adagrad(lr=0.1))
        ps.dense_step("w", np.ones(6, np.float32))
        ps.save("good")
        path = snap / "good" / "shard-0-of-1" / "dense.bin"
        data = path.read_bytes()
        assert len(data) == 12 * 4  # values, then the Adagrad sums
        if damage == "truncate":
            path.write_bytes(data[:-4])
        elif damage == "flip":
            path.write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])
        else:
            other = tmp_path / "elsewhere.bin"
            other.write_bytes(data)
            os.remove(path)
            os.symlink(other, path)
        before = ps.dense_step("w", np.ones(6, np.float32))
        with pytest.raises(sc.CorruptDataError):
            ps.restore("good")
        np.testing.assert_array_equal(ps.dense_pull("w", 0), before)
    finally:
        stop(proc)


def test_a_snapshot_of_the_previous_format_restores_values_without_optimizer_state(tmp_path):
    import json

    snap = tmp_path / "snap"
    proc, addr = start_server_process("--shards", 1, "--snapshot-dir", snap)
    try:
        ps = sc.connect([addr], timeout=60)
        ps.dense_create("w", np.ones(3, np.float32), sc.SGD(lr=0.5))
        ps.save("old")
        marker = snap / "old" / "shard-0-of-1.json"
        doc = json.loads(marker.read_text())
        assert doc["format"] == 2
        doc["format"], doc["dense"] = 1, {"w": [0.25, 0.5, 0.75]}  # as the previous version wrote it
        marker.write_text(json.dumps(doc))
        os.remove(snap / "old" / "shard-0-of-1" / "dense.bin")
        ps.restore("old")
        np.testing.assert_array_equal(ps.dense_pull("w", 0), np.array([0.25, 0.5, 0.75], np.float32))
        ps.dense_create("w", np.zeros(3, np.float32), sc.SGD(lr=0.5))  # takes its rule again
        np.testing.assert_array_equal(ps.dense_step("w", np.ones(3, np.float32)),
                                      np.array([-0.25, 0.0, 0.25], np.float32))
        doc["format"] = 3
        marker.write_text(json.dumps(doc))
        with pytest.raises(sc.CorruptDataError, match="format"):
            ps.restore("old")
    finally:
        stop(proc)
