"""sparsecore.Subscriber: follows an export directory, applies the newest full export and then
the deltas in version order, atomically per export (4 reader threads only ever observe states
that existed), reads unknown ids as zeros, and follows in the background until stopped."""

import threading
import time

import numpy as np
import pytest

import sparsecore as sc

TABLES = {"t": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1))}
IDS = np.arange(64, dtype=np.int64)


def _train(emb, ids, value):
    offsets = np.arange(len(ids) + 1, dtype=np.int64)
    emb.forward({"t": (ids, offsets)})
    emb.backward({"t": (ids, offsets)}, {"t": np.full((len(ids), 4), value, np.float32)})


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_poll_applies_full_then_deltas_and_reads_unknown_ids_as_zeros(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS[:10], 1.0)
    sub = sc.Subscriber(tmp_path)
    assert sub.version == -1 and sub.poll() == 0 and sub.tables == []
    v0 = emb.export_full(tmp_path)
    assert sub.poll() == 1 and sub.version == v0 and sub.tables == ["t"] and sub.dim("t") == 4
    ask = np.array([3, 999], np.int64)
    got = sub.lookup("t", ask)
    np.testing.assert_array_equal(got, emb.lookup("t", ask))
    np.testing.assert_array_equal(got[1], 0)
    _train(emb, IDS[5:12], -1.0)
    v1 = emb.export_delta(tmp_path, since=v0)
    emb.erase("t", IDS[:2])
    _train(emb, IDS[20:22], 0.5)
    v2 = emb.export_delta(tmp_path, since=v1)
    assert sub.poll() == 2 and sub.version == v2 and sub.poll() == 0
    np.testing.assert_array_equal(sub.lookup("t", IDS), emb.lookup("t", IDS))
    assert sub.size("t") == emb.table_size("t")
    with pytest.raises(KeyError, match="no table 'nope'"):
        sub.lookup("nope", ask)


def test_a_newer_full_export_takes_over_when_no_delta_continues(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS[:4], 1.0)
    emb.export_full(tmp_path / "a")
    sub = sc.Subscriber(tmp_path / "a")
    sub.poll()
    _train(emb, IDS[4:8], 1.0)
    v = emb.export_full(tmp_path / "a")
    assert sub.poll() == 1 and sub.version == v
    np.testing.assert_array_equal(sub.lookup("t", IDS), emb.lookup("t", IDS))


def test_background_follow_until_stopped(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS[:4], 1.0)
    v = emb.export_full(tmp_path)
    with sc.Subscriber(tmp_path).start(interval=0.01) as sub:
        assert sub.running
        _wait(lambda: sub.version == v)
        _train(emb, IDS[:4], 2.0)
        v = emb.export_delta(tmp_path, since=v)
        _wait(lambda: sub.version == v)
        assert sub.last_error == ""
    assert not sub.running
    _train(emb, IDS[:4], 2.0)
    emb.export_delta(tmp_path, since=v)
    time.sleep(0.05)
    assert sub.version == v  # stopped: nothing more applied


def test_a_damaged_export_is_reported_and_changes_nothing(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS[:4], 1.0)
    v = emb.export_full(tmp_path)
    sub = sc.Subscriber(tmp_path)
    sub.poll()
    before = sub.lookup("t", IDS)
    _train(emb, IDS[:4], 1.0)
    v1 = emb.export_delta(tmp_path, since=v)
    rows = tmp_path / f"delta-{v:020d}-{v1:020d}" / "part-0-of-1" / "table-0.rows"
    rows.write_bytes(rows.read_bytes()[:-1])
    with pytest.raises(sc.CorruptDataError):
        sub.poll()
    assert sub.version == v
    np.testing.assert_array_equal(sub.lookup("t", IDS), before)
    sub.start(interval=0.01)
    try:
        _wait(lambda: "bytes" in sub.last_error)
    finally:
        sub.stop()


def test_readers_only_ever_observe_states_that_existed(tmp_path):
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS, 1.0)
    version = emb.export_full(tmp_path)
    states = {emb.lookup("t", IDS).tobytes()}
    sub = sc.Subscriber(tmp_path)
    sub.poll()
    stop = threading.Event()
    seen: list[set] = [set() for _ in range(4)]
    errors = []

    def read(i):
        try:
            while not stop.is_set():
                seen[i].add(sub.lookup("t", IDS).tobytes())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for r in readers:
        r.start()
    rng = np.random.default_rng(0)
    try:
        for step in range(30):
            # Every delta changes every row (and removes or brings back some), so a half-applied
            # one would show a mix no version ever had.
            _train(emb, IDS, float(rng.standard_normal()))
            if step % 3 == 1:
                emb.erase("t", IDS[rng.integers(0, 64, 8)])
            states.add(emb.lookup("t", IDS).tobytes())
            version = emb.export_delta(tmp_path, since=version)
            assert sub.poll() == 1
    finally:
        stop.set()
        for r in readers:
            r.join(60)
    assert not errors, errors
    observed = set().union(*seen)
    assert len(observed) > 1
    assert observed <= states


def test_a_delta_in_another_dtype_than_its_table_keeps_every_value(tmp_path):
    # Tables keep the dtype of their full export; a delta in another dtype turns the table to
    # fp32, so every row reads what the export that brought it holds.
    emb = sc.EmbeddingCollection(TABLES, seed=1)
    _train(emb, IDS[:30], 1.0)
    v0 = emb.export_full(tmp_path, dtype="fp16")
    _train(emb, IDS[20:40], -0.7)
    v1 = emb.export_delta(tmp_path, since=v0, dtype="int4")
    expected = {}
    for name in (f"full-{v0:020d}", f"delta-{v0:020d}-{v1:020d}"):
        t = sc.read_export(tmp_path / name)["tables"]["t"]
        expected.update(zip(t["keys"].tolist(), t["weights"]))
    sub = sc.Subscriber(tmp_path)
    assert sub.poll() == 2
    keys = np.array(sorted(expected), np.int64)
    np.testing.assert_array_equal(sub.lookup("t", keys), np.stack([expected[k] for k in keys.tolist()]))
    got_keys, got_rows = sub.rows("t")
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_rows, sub.lookup("t", keys))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8", "int4"])
def test_lookups_of_many_ids_equal_the_export_in_every_dtype(tmp_path, dtype):
    # Past 4096 ids a lookup is split over the compute pool; each id reads its export's row.
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=11, optimizer=sc.SGD(lr=0.1), default_value=0.25)},
                                 seed=3)
    ids = np.arange(3000, dtype=np.int64) * 7919
    offsets = np.arange(len(ids) + 1, dtype=np.int64)
    emb.forward({"t": (ids, offsets)})
    emb.export_full(tmp_path, dtype=dtype)
    t = sc.read_export(next(tmp_path.glob("full-*")))["tables"]["t"]
    expected = dict(zip(t["keys"].tolist(), t["weights"]))
    sub = sc.Subscriber(tmp_path)
    sub.poll()
    ask = np.concatenate([ids, ids[::-1] + 1, ids])  # unknown ids read the default row
    want = np.stack([expected.get(k, np.full(11, 0.25, np.float32)) for k in ask.tolist()])
    np.testing.assert_array_equal(sub.lookup("t", ask), want)
