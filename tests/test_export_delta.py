"""Incremental export of an embedded collection (``export_full`` / ``export_delta``): on random
streams of inserts, updates and erasures, a full export plus its deltas applied in order equal
a fresh full export bit for bit, for every row dtype; replay is idempotent; removals past the
retained log ask for a full export; damaged or unfinished exports are refused or ignored."""

import os
from pathlib import Path

import numpy as np
import pytest

import sparsecore as sc

TABLES = {
    "a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
    "b": sc.TableConfig(dim=18, optimizer=sc.SGD(lr=0.5), storage="fp16"),
    "d": sc.TableConfig(dim=1, optimizer=sc.Adam(lr=0.01), num_embeddings=300),
}


def _train(emb, rng, name, ids):
    ids = np.unique(ids).astype(np.int64)
    offsets = np.array([0, len(ids)], np.int64)
    emb.forward({name: (ids, offsets)})
    grads = rng.standard_normal((1, TABLES[name].dim)).astype(np.float32)
    emb.backward({name: (ids, offsets)}, {name: grads})


def random_ops(emb, rng, count):
    """Training steps, lookups that insert without an update, and erasures, at random."""
    for _ in range(count):
        name = str(rng.choice(list(TABLES)))
        ids = rng.integers(0, 250, int(rng.integers(1, 30))).astype(np.int64)
        kind = rng.integers(0, 4)
        if kind <= 1:
            _train(emb, rng, name, ids)
        elif kind == 2:
            emb.lookup(name, ids, insert=True)
        else:
            emb.erase(name, ids[: len(ids) // 2])


def export_path(stream, kind, version, since=None):
    name = f"full-{version:020d}" if kind == "full" else f"delta-{since:020d}-{version:020d}"
    return Path(stream) / name


def apply(state, export):
    """A NumPy consumer: deletes first, then upserts; a full export replaces everything."""
    if export["kind"] == "full":
        state.clear()
    for name, t in export["tables"].items():
        rows = state.setdefault(name, {})
        for k in t["deleted"].tolist():
            rows.pop(k, None)
        for k, w in zip(t["keys"].tolist(), t["weights"]):
            rows[k] = w.copy()
    return state


def as_sorted(rows):
    keys = np.array(sorted(rows), np.int64)
    return keys, np.array([rows[k] for k in keys.tolist()], np.float32)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8", "int4"])
def test_full_plus_deltas_equal_a_fresh_full_export(tmp_path, dtype):
    rng = np.random.default_rng(7)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    random_ops(emb, rng, 20)
    stream = tmp_path / "stream"
    version = emb.export_full(stream, dtype=dtype)
    assert version == emb.step
    state = apply({}, sc.read_export(export_path(stream, "full", version)))
    sub = sc.Subscriber(stream)
    assert sub.poll() == 1
    for _ in range(8):
        random_ops(emb, rng, int(rng.integers(0, 15)))
        _train(emb, rng, "a", rng.integers(0, 250, 3))  # a new version: a subscriber applies each delta once
        since, version = version, emb.export_delta(stream, since=version, dtype=dtype)
        delta = sc.read_export(export_path(stream, "delta", version, since))
        assert delta["kind"] == "delta" and delta["since"] == since and delta["dtype"] == dtype
        apply(state, delta)
        assert sub.poll() == 1 and sub.version == version
    fresh_version = emb.export_full(tmp_path / "fresh", dtype=dtype)
    fresh = sc.read_export(export_path(tmp_path / "fresh", "full", fresh_version))
    for name in TABLES:
        keys, weights = as_sorted(state[name])
        order = np.argsort(fresh["tables"][name]["keys"])
        np.testing.assert_array_equal(keys, fresh["tables"][name]["keys"][order])
        assert weights.tobytes() == fresh["tables"][name]["weights"][order].tobytes(), name
        sub_keys, sub_weights = sub.rows(name)
        np.testing.assert_array_equal(sub_keys, keys)
        assert sub_weights.tobytes() == weights.tobytes(), name


def test_fp32_exports_hold_the_training_weights_exactly(tmp_path):
    rng = np.random.default_rng(1)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    random_ops(emb, rng, 10)
    v = emb.export_full(tmp_path)
    got = sc.read_export(export_path(tmp_path, "full", v))
    for name in TABLES:
        e = emb.export(name)
        order = np.argsort(e["keys"])
        mine = got["tables"][name]
        o2 = np.argsort(mine["keys"])
        np.testing.assert_array_equal(mine["keys"][o2], e["keys"][order])
        np.testing.assert_array_equal(mine["weights"][o2], e["weights"][order])


def test_replaying_deltas_is_idempotent(tmp_path):
    rng = np.random.default_rng(2)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    random_ops(emb, rng, 10)
    v0 = emb.export_full(tmp_path)
    random_ops(emb, rng, 10)
    v1 = emb.export_delta(tmp_path, since=v0)
    random_ops(emb, rng, 10)
    v2 = emb.export_delta(tmp_path, since=v1)
    once = apply({}, sc.read_export(export_path(tmp_path, "full", v0)))
    twice = apply({}, sc.read_export(export_path(tmp_path, "full", v0)))
    for v, s in ((v1, v0), (v2, v1)):
        apply(once, sc.read_export(export_path(tmp_path, "delta", v, s)))
        for _ in range(2):
            apply(twice, sc.read_export(export_path(tmp_path, "delta", v, s)))
    # A delta also applies over a later state (since <= current <= version).
    apply(twice, sc.read_export(export_path(tmp_path, "delta", v1, v0)))
    apply(twice, sc.read_export(export_path(tmp_path, "delta", v2, v1)))
    for name in TABLES:
        a, b = as_sorted(once[name]), as_sorted(twice[name])
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1].tobytes() == b[1].tobytes()


def test_lookup_with_insert_rows_travel_in_the_next_delta(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    v = emb.export_full(tmp_path)
    emb.lookup("a", [11, 12], insert=True)
    v1 = emb.export_delta(tmp_path, since=v)
    assert v1 == v  # no training step: the version is the step
    d = sc.read_export(export_path(tmp_path, "delta", v1, v))
    assert sorted(d["tables"]["a"]["keys"].tolist()) == [11, 12]
    np.testing.assert_array_equal(np.sort(d["tables"]["a"]["keys"]), [11, 12])
    np.testing.assert_array_equal(d["tables"]["a"]["weights"][np.argsort(d["tables"]["a"]["keys"])],
                                  emb.lookup("a", [11, 12]))


def test_erased_keys_are_deleted_and_reinserted_keys_travel_as_rows(tmp_path):
    rng = np.random.default_rng(3)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    _train(emb, rng, "a", np.array([1, 2, 3]))
    v = emb.export_full(tmp_path)
    emb.erase("a", [1, 2])
    _train(emb, rng, "a", np.array([2]))
    v1 = emb.export_delta(tmp_path, since=v)
    d = sc.read_export(export_path(tmp_path, "delta", v1, v))["tables"]["a"]
    assert d["deleted"].tolist() == [1]
    assert d["keys"].tolist() == [2]


def test_a_delta_past_the_retained_deletions_asks_for_a_full_export(tmp_path):
    rng = np.random.default_rng(4)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    emb.set_deleted_keys_capacity(16, table="a")
    _train(emb, rng, "a", np.arange(200))
    v = emb.export_full(tmp_path)
    for k in range(200):
        emb.erase("a", [k])
        _train(emb, rng, "b", np.array([k]))
    with pytest.raises(ValueError, match="take a full export"):
        emb.export_delta(tmp_path, since=v)
    with pytest.raises(ValueError, match="newer than the collection's step"):
        emb.export_delta(tmp_path, since=emb.step + 1)
    with pytest.raises(ValueError, match="since"):
        emb.export_delta(tmp_path, since=-1)
    emb.export_delta(tmp_path, since=emb.step)  # recent enough


def test_a_restored_collection_starts_its_deltas_at_the_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    random_ops(emb, rng, 10)
    v = emb.export_full(tmp_path / "s")
    _train(emb, rng, "a", np.array([1, 2]))
    emb.save(tmp_path / "ckpt")
    back = sc.EmbeddingCollection.load(tmp_path / "ckpt")
    assert back.step > v
    # The removals before the checkpoint are not known to the loaded collection.
    with pytest.raises(ValueError, match="take a full export"):
        back.export_delta(tmp_path / "s", since=v)
    back.export_delta(tmp_path / "s", since=back.step)


def test_an_unknown_dtype_is_refused(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    with pytest.raises(ValueError, match="dtype"):
        emb.export_full(tmp_path, dtype="bf16")


def test_damaged_exports_raise_typed_errors(tmp_path):
    rng = np.random.default_rng(6)
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    random_ops(emb, rng, 10)
    v = emb.export_full(tmp_path)
    part = export_path(tmp_path, "full", v) / "part-0-of-1"
    rows = part / "table-0.rows"
    data = bytearray(rows.read_bytes())
    data[len(data) // 2] ^= 0x10
    rows.write_bytes(bytes(data))
    with pytest.raises(sc.CorruptDataError, match="checksum"):
        sc.read_export(part.parent)
    rows.write_bytes(bytes(data[:-4]))
    with pytest.raises(sc.CorruptDataError, match="bytes"):
        sc.read_export(part.parent)
    rows.unlink()
    os.mkfifo(rows)  # a FIFO is refused, never waited on
    with pytest.raises(sc.CorruptDataError):
        sc.read_export(part.parent)
    manifest = part / "manifest.json"
    manifest.write_text('{"format": "sparsecore-export", "format_version": 1, "kind": "full", "version": 1}')
    with pytest.raises(sc.CorruptDataError):
        sc.read_export(part.parent)
    with pytest.raises(KeyError):
        sc.read_export(tmp_path / "missing")


def test_a_damaged_block_of_a_large_file_is_refused_naming_the_file_and_block(tmp_path):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=18, optimizer=sc.SGD(lr=0.1))}, seed=3)
    emb.lookup("t", np.arange(40_000, dtype=np.int64), insert=True)  # a rows file of 3 blocks of 1 MiB
    v = emb.export_full(tmp_path)
    part = export_path(tmp_path, "full", v) / "part-0-of-1"
    before = sc.read_export(part.parent)["tables"]["t"]
    rows = part / "table-0.rows"
    data = bytearray(rows.read_bytes())
    data[(1 << 20) + 5] ^= 0x01
    rows.write_bytes(bytes(data))
    with pytest.raises(sc.CorruptDataError, match=r"table-0\.rows.*checksum in block 1"):
        sc.read_export(part.parent)
    data[(1 << 20) + 5] ^= 0x01
    rows.write_bytes(bytes(data))
    after = sc.read_export(part.parent)["tables"]["t"]
    np.testing.assert_array_equal(after["keys"], before["keys"])
    np.testing.assert_array_equal(after["weights"], before["weights"])


def test_unfinished_writes_are_invisible(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=3)
    v = emb.export_full(tmp_path)
    # What a crash leaves: a hidden staging directory, and an export missing a part.
    (tmp_path / f"full-{v + 5:020d}" / ".part-0-of-1.0123456789abcdef").mkdir(parents=True)
    (tmp_path / f"delta-{v:020d}-{v + 9:020d}" / "part-0-of-2").mkdir(parents=True)
    sub = sc.Subscriber(tmp_path)
    assert sub.poll() == 1
    assert sub.version == v
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"full-{v:020d}", f"full-{v + 5:020d}", f"delta-{v:020d}-{v + 9:020d}"])
    assert os.listdir(export_path(tmp_path, "full", v)) == ["part-0-of-1"]


def test_exports_racing_inserts_and_erasures_lose_nothing(tmp_path):
    """Lookups that insert and erasures on other threads while deltas are taken: every row
    lands in the delta being written or in the next one, and nothing waits for ever."""
    import threading

    emb = sc.EmbeddingCollection(TABLES, seed=3)
    rng = np.random.default_rng(8)
    _train(emb, rng, "a", np.arange(50))
    version = emb.export_full(tmp_path)
    sub = sc.Subscriber(tmp_path)
    sub.poll()
    stop = threading.Event()
    errors = []

    def churn(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                emb.lookup("a", r.integers(0, 5000, 64), insert=True)
                emb.erase("a", r.integers(0, 5000, 16))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            _train(emb, rng, "b", rng.integers(0, 250, 5))
            version = emb.export_delta(tmp_path, since=version)
            sub.poll()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    _train(emb, rng, "b", np.array([1]))
    version = emb.export_delta(tmp_path, since=version)
    assert sub.poll() == 1
    fresh = sc.read_export(export_path(tmp_path / "fresh", "full", emb.export_full(tmp_path / "fresh")))
    for name in TABLES:
        keys, weights = sub.rows(name)
        order = np.argsort(fresh["tables"][name]["keys"])
        np.testing.assert_array_equal(keys, fresh["tables"][name]["keys"][order])
        assert weights.tobytes() == fresh["tables"][name]["weights"][order].tobytes()
