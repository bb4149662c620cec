"""Row policies on the device store, checked against the CPU store bit for bit: feature
admission (every filter, decided by the same code), the default row of absent ids, and the
metadata stamped on inserts. Each case trains the CPU collection and an emulated device
collection (and a real one where a GPU is present) on the same random stream and compares
admitted ids, statistics and rows exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

DEVICES = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]

ADMISSIONS = {
    "count": dict(count_threshold=3),
    "probability": dict(probability=0.4),
    "bloom": dict(count_threshold=2, bloom_capacity=500, bloom_fp_rate=0.05),
    "frequency": dict(frequency_horizon=4.0, frequency_threshold=0.6),
    "lists": dict(count_threshold=4, allow=np.arange(0, 40, 7, dtype=np.int64), deny=np.arange(3, 40, 7, dtype=np.int64)),
}


def _tables(admission=None, default=0.0, pooling="sum", dim=5):
    return {
        "a": sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1), pooling=pooling, default_value=default,
                            admission=None if admission is None else sc.Admission(**admission)),
        "b": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), pooling="mean"),
    }


def _pair(tables, emulate, seed=5):
    return sc.EmbeddingCollection(tables, seed), sc_cuda.DeviceEmbeddingCollection(tables, seed, emulate=emulate)


def _batch(rng, vocab=40, bags=6, max_len=5, weighted=False):
    out = {}
    for name in ("a", "b"):
        lengths = rng.integers(0, max_len + 1, size=bags)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = rng.integers(0, vocab, size=int(offsets[-1])).astype(np.int64)
        out[name] = (ids, offsets, rng.uniform(0.5, 1.5, ids.size).astype(np.float32)) if weighted else (ids, offsets)
    return out


def _same_rows(cpu, dev):
    for name in cpu.names:
        want, got = cpu.export(name), dev.export(name)
        order = np.argsort(want["keys"], kind="stable")  # the CPU store exports in slot order
        for field in ("keys", "weights", "state", "update_count", "last_step"):
            np.testing.assert_array_equal(np.asarray(got[field]), np.asarray(want[field])[order],
                                          err_msg=f"table {name}: {field}")


def _train_both(cpu, dev, rng, steps, weighted=False, evaluate=True):
    for step in range(steps):
        batch = _batch(rng, weighted=weighted)
        if evaluate:
            for name, want in cpu.evaluate(batch).items():
                got = dev.evaluate(batch)[name]
                np.testing.assert_array_equal(got[0] if isinstance(got, tuple) else got,
                                              want[0] if isinstance(want, tuple) else want,
                                              err_msg=f"evaluation of {name}, step {step}")
        prepared_cpu, prepared_dev = cpu.prepare(batch), dev.prepare(batch)
        want = cpu.forward(prepared_cpu)
        got = dev.forward(prepared_dev)
        grads = {}
        for name in cpu.names:
            w = want[name][0] if isinstance(want[name], tuple) else want[name]
            g = got[name][0] if isinstance(got[name], tuple) else got[name]
            np.testing.assert_array_equal(g, w, err_msg=f"forward of {name}, step {step}")
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        cpu.backward(prepared_cpu, grads)
        dev.backward(prepared_dev, grads)


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("kind", sorted(ADMISSIONS))
def test_admission_on_the_device_admits_the_ids_the_cpu_store_admits(emulate, kind):
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    cpu, dev = _pair(_tables(ADMISSIONS[kind]), emulate)
    _train_both(cpu, dev, rng, steps=8)
    assert dev.admission_stats() == cpu.admission_stats()
    assert 0 < cpu.table_size("a") < 40  # some ids admitted, some not
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_absent_ids_read_the_default_row_on_the_device(emulate, pooling):
    rng = np.random.default_rng(11)
    tables = _tables(dict(count_threshold=2), default=-0.375, pooling=pooling)
    cpu, dev = _pair(tables, emulate)
    _train_both(cpu, dev, rng, steps=5, weighted=True)
    unknown = np.array([1000, 2000, -5], np.int64)
    np.testing.assert_array_equal(dev.lookup("a", unknown), np.full((3, 5), -0.375, np.float32))
    np.testing.assert_array_equal(dev.lookup("a", unknown), cpu.lookup("a", unknown))
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
def test_fp16_rows_read_the_default_rounded_as_the_cpu_store_does(emulate):
    tables = {"a": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1), default_value=0.1, storage="fp16")}
    cpu = sc.EmbeddingCollection(tables, 1)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 1, emulate=emulate)
    ids = np.array([3, 9], np.int64)
    np.testing.assert_array_equal(dev.lookup("a", ids), cpu.lookup("a", ids))
    batch = {"a": (ids, np.array([0, 2], np.int64))}
    np.testing.assert_array_equal(dev.evaluate(batch)["a"], cpu.evaluate(batch)["a"])


@pytest.mark.parametrize("emulate", DEVICES)
def test_inserts_are_stamped_with_the_step_they_can_first_take_part_in(emulate):
    rng = np.random.default_rng(2)
    cpu, dev = _pair(_tables(), emulate)
    _train_both(cpu, dev, rng, steps=3, evaluate=False)
    fresh = np.array([777, 778], np.int64)
    cpu.lookup("a", fresh, insert=True)
    dev.lookup("a", fresh, insert=True)
    rows = dev.export("a")
    stamped = rows["last_step"][np.isin(rows["keys"], fresh)]
    np.testing.assert_array_equal(stamped, [cpu.step + 1] * 2)
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
def test_gradients_of_ids_not_admitted_are_dropped_and_counted(emulate):
    _, dev = _pair(_tables(dict(count_threshold=2)), emulate)
    batch = {"a": (np.array([1, 2, 2], np.int64), np.array([0, 3], np.int64)),
             "b": (np.array([1], np.int64), np.array([0, 1], np.int64))}
    prepared = dev.prepare(batch)
    out = dev.forward(prepared)
    np.testing.assert_array_equal(out["a"], np.zeros((1, 5), np.float32))
    dev.backward(prepared, {"a": np.ones((1, 5), np.float32), "b": np.ones((1, 3), np.float32)})
    assert dev.table_size("a") == 0
    assert dev.admission_stats()["a"] == {"admitted": 0, "pending": 2, "rejected": 2, "dropped_gradients": 2}
    dev.forward(batch)  # second sighting of 1 and 2: both admitted
    assert dev.table_size("a") == 2
    assert dev.admission_stats()["a"]["admitted"] == 2


@pytest.mark.parametrize("emulate", DEVICES)
def test_admission_state_survives_a_checkpoint_of_the_device_store(emulate, tmp_path):
    rng = np.random.default_rng(4)
    cpu, dev = _pair(_tables(dict(count_threshold=3)), emulate)
    _train_both(cpu, dev, rng, steps=3, evaluate=False)
    dev.save(tmp_path / "ckpt")
    again = sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", emulate=emulate)
    assert again.admission_stats() == cpu.admission_stats()
    _train_both(cpu, again, rng, steps=3, evaluate=False)
    assert again.admission_stats() == cpu.admission_stats()
    _same_rows(cpu, again)


EXPIRIES = {
    "ttl_steps": dict(ttl_steps=2),
    "ttl_seconds": dict(ttl_seconds=2.5),
    "min_l2_norm": dict(min_l2_norm=0.15),
    "predicate": dict(predicate=lambda key, count, last: (key % 3 == 0) != (count > 1)),
}


def _expiring_tables(expiry):
    return {"a": sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.1), init=sc.Normal(0.05), expiry=sc.Expiry(**expiry)),
            "b": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), pooling="mean")}


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("rule", sorted(EXPIRIES))
def test_expiry_on_the_device_removes_the_rows_the_cpu_store_removes(emulate, rule):
    rng = np.random.default_rng(7)
    cpu, dev = _pair(_expiring_tables(EXPIRIES[rule]), emulate)
    now = [0.0]
    for coll in (cpu, dev):
        if rule == "ttl_seconds":
            coll.set_expiry_clock("a", lambda: now[0])
    removed = []
    for step in range(6):
        _train_both(cpu, dev, rng, steps=1, evaluate=False)
        now[0] += 1.0
        if step % 2 == 1:
            want = cpu.expire("a")
            assert dev.expire("a") == want
            removed.append(want)
            _same_rows(cpu, dev)
    assert sum(removed) > 0
    assert dev.expiry_stats() == cpu.expiry_stats()


@pytest.mark.parametrize("emulate", DEVICES)
def test_a_predicate_that_raises_removes_nothing_on_the_device(emulate):
    _, dev = _pair(_expiring_tables(dict(predicate=lambda key, count, last: False)), emulate)
    dev.lookup("a", np.arange(5, dtype=np.int64), insert=True)

    def boom(key, count, last):
        raise RuntimeError("no")

    dev.set_expiry_predicate("a", boom)
    with pytest.raises(ValueError, match="the expiry predicate raised"):
        dev.expire("a")
    assert dev.table_size("a") == 5


def _export_files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_full_and_delta_exports_of_the_device_store_equal_the_cpu_stores(emulate, dtype, tmp_path):
    rng = np.random.default_rng(3)
    cpu, dev = _pair(_expiring_tables(dict(ttl_steps=2)), emulate)
    _train_both(cpu, dev, rng, steps=2, evaluate=False)
    since = cpu.export_full(tmp_path / "cpu", dtype=dtype)
    assert dev.export_full(tmp_path / "dev", dtype=dtype) == since
    _train_both(cpu, dev, rng, steps=3, evaluate=False)
    gone = np.array([1, 2, 3, 999], np.int64)
    assert dev.erase("b", gone) == cpu.erase("b", gone)
    assert dev.expire("a") == cpu.expire("a") > 0
    cpu.lookup("b", np.array([2], np.int64), insert=True)  # removed, then a row again
    dev.lookup("b", np.array([2], np.int64), insert=True)
    version = cpu.export_delta(tmp_path / "cpu", since=since, dtype=dtype)
    assert dev.export_delta(tmp_path / "dev", since=since, dtype=dtype) == version
    assert _export_files(tmp_path / "dev") == _export_files(tmp_path / "cpu")


@pytest.mark.parametrize("emulate", DEVICES)
def test_a_delta_since_forgotten_removals_is_refused_on_the_device(emulate, tmp_path):
    _, dev = _pair(_expiring_tables(dict(ttl_steps=2)), emulate)
    dev.lookup("b", np.arange(10, dtype=np.int64), insert=True)
    dev.set_deleted_keys_capacity(1, "b")
    dev.erase("b", np.arange(10, dtype=np.int64))  # past the capacity: the oldest removals are forgotten
    with pytest.raises(ValueError, match="full export"):
        dev.export_delta(tmp_path / "x", since=0)


def test_device_arrays_go_through_admission_and_erase_logging_as_host_arrays_do(tmp_path):
    from test_cuda_zero_copy import FakeCudaArray

    rng = np.random.default_rng(9)
    tables = {"a": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1), admission=sc.Admission(count_threshold=2),
                                  default_value=0.5)}
    host = sc_cuda.DeviceEmbeddingCollection(tables, 3, emulate=True)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 3, emulate=True)
    for _ in range(4):
        ids = rng.integers(0, 12, size=9).astype(np.int64)
        offsets = np.array([0, 4, 9], np.int64)
        want = host.forward({"a": (ids, offsets)})["a"]
        got = dev.forward({"a": (FakeCudaArray(ids), FakeCudaArray(offsets))})["a"]
        np.testing.assert_array_equal(np.asarray(got), want)
    assert dev.admission_stats() == host.admission_stats()
    gone = np.arange(0, 12, 2, dtype=np.int64)
    assert dev.erase("a", FakeCudaArray(gone)) == host.erase("a", gone) > 0
    host.export_full(tmp_path / "host")
    dev.export_full(tmp_path / "dev")
    assert _export_files(tmp_path / "dev") == _export_files(tmp_path / "host")


@pytest.mark.parametrize("emulate", DEVICES)
def test_fp16_rows_with_admission_match_the_cpu_store(emulate):
    rng = np.random.default_rng(6)
    tables = {n: sc.TableConfig(dim=d, optimizer=sc.Adagrad(lr=0.1), storage="fp16", default_value=0.25,
                                admission=sc.Admission(count_threshold=2)) for n, d in (("a", 5), ("b", 3))}
    cpu, dev = _pair(tables, emulate)
    _train_both(cpu, dev, rng, steps=5)
    assert dev.admission_stats() == cpu.admission_stats()
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
def test_an_explicit_insert_bypasses_admission_on_both_stores(emulate):
    cpu, dev = _pair(_tables(dict(count_threshold=5)), emulate)
    ids = np.array([4, 8, 15], np.int64)
    np.testing.assert_array_equal(dev.lookup("a", ids, insert=True), cpu.lookup("a", ids, insert=True))
    assert dev.table_size("a") == cpu.table_size("a") == 3
    assert dev.admission_stats() == cpu.admission_stats()


def _capped_tables(shard_bits, **expiry):
    return {"a": sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.1), init=sc.Normal(0.05), shard_bits=shard_bits,
                                expiry=sc.Expiry(**expiry)),
            "b": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), pooling="mean")}


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("shard_bits,headroom", [(0, 0.0), (2, 0.25)])
def test_capacity_on_the_device_evicts_the_rows_the_cpu_store_evicts(emulate, policy, shard_bits, headroom):
    rng = np.random.default_rng(11)
    cpu, dev = _pair(_capped_tables(shard_bits, capacity=16, policy=policy, eviction_headroom=headroom), emulate)
    for step in range(8):
        _train_both(cpu, dev, rng, steps=1, evaluate=False)
        assert dev.table_size("a") == cpu.table_size("a") <= 16, f"step {step}"
        _same_rows(cpu, dev)
    assert dev.expiry_stats() == cpu.expiry_stats()
    assert dev.expiry_stats()["a"]["evicted"] > 0


@pytest.mark.parametrize("emulate", DEVICES)
def test_a_full_device_table_refuses_and_counts_as_the_cpu_store_does(emulate):
    rng = np.random.default_rng(12)
    cpu, dev = _pair(_capped_tables(0, capacity=10, on_full="refuse"), emulate)
    _train_both(cpu, dev, rng, steps=5)
    _same_rows(cpu, dev)
    stats = dev.expiry_stats()
    assert stats == cpu.expiry_stats()
    assert stats["a"]["refused"] > 0 and stats["a"]["dropped_gradients"] > 0 and stats["a"]["evicted"] == 0


@pytest.mark.parametrize("emulate", DEVICES)
def test_capacity_with_admission_on_the_device_matches_the_cpu_store(emulate):
    rng = np.random.default_rng(13)
    tables = _capped_tables(0, capacity=12, policy="lru")
    tables["a"] = sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.1), shard_bits=0,
                                 admission=sc.Admission(count_threshold=2), expiry=sc.Expiry(capacity=12))
    cpu, dev = _pair(tables, emulate)
    _train_both(cpu, dev, rng, steps=6)
    _same_rows(cpu, dev)
    assert dev.admission_stats() == cpu.admission_stats()
    assert dev.expiry_stats() == cpu.expiry_stats()


@pytest.mark.parametrize("emulate", DEVICES)
def test_incremental_expiry_on_the_device_removes_what_the_cpu_store_removes(emulate):
    # A window larger than the table: each step examines every row on both stores.
    rng = np.random.default_rng(14)
    cpu, dev = _pair(_capped_tables(2, ttl_steps=1, scan_per_step=1 << 12), emulate)
    for step in range(6):
        _train_both(cpu, dev, rng, steps=1, evaluate=False)
        _same_rows(cpu, dev)
    assert dev.expiry_stats() == cpu.expiry_stats()
    assert dev.expiry_stats()["a"]["expired"] > 0


@pytest.mark.parametrize("emulate", DEVICES)
def test_incremental_expiry_on_the_device_examines_a_bounded_window_per_step(emulate):
    _, dev = _pair(_capped_tables(0, ttl_steps=1, scan_per_step=3), emulate)
    dev.lookup("a", np.arange(10, dtype=np.int64), insert=True)
    expired = []
    for _ in range(6):
        prepared = dev.prepare({"a": (np.array([100], np.int64), np.array([0, 1], np.int64)),
                                "b": (np.array([1], np.int64), np.array([0, 1], np.int64))})
        out = dev.forward(prepared)
        dev.backward(prepared, {n: np.zeros_like(v[0] if isinstance(v, tuple) else v) for n, v in out.items()})
        expired.append(dev.expiry_stats()["a"]["expired"])
    steps = np.diff([0] + expired)
    assert all(0 <= s <= 3 for s in steps)
    assert expired[-1] >= 9  # every stale row gone within a few rounds of 3


def test_sampled_eviction_is_refused_by_the_device_store():
    with pytest.raises(ValueError, match="sampled"):
        sc_cuda.DeviceEmbeddingCollection(_capped_tables(0, capacity=8, eviction="sampled"), 5, emulate=True)


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("on_full", ["evict", "refuse"])
def test_explicit_inserts_respect_the_capacity_on_both_stores(emulate, on_full):
    # lookup(insert=True) of more new keys than the capacity: both stores keep at most the
    # capacity (evicting older rows first, or refusing once full), count every refused key,
    # and a refused key reads the table's default row. Which keys of one call are refused
    # follows each store's insertion order, so the stores are compared by counts.
    tables = _capped_tables(0, capacity=8, on_full=on_full)
    tables["a"] = dataclasses.replace(tables["a"], default_value=0.25)
    rng = np.random.default_rng()
    batches = [rng.choice(1000, size=12, replace=False).astype(np.int64) for _ in range(3)]
    sizes = []
    for store in _pair(tables, emulate):
        refused = 0
        for keys in batches:
            got = store.lookup("a", keys, insert=True)
            assert store.table_size("a") <= 8
            default = np.all(got == 0.25, axis=1)
            refused += int(default.sum())
            present = store.export("a")
            rows = dict(zip(np.asarray(present["keys"]).tolist(), np.asarray(present["weights"])))
            for k, row, d in zip(keys.tolist(), got, default):
                assert (k not in rows) if d else np.array_equal(rows[k], row)
            if on_full == "evict":  # the older rows make room for as many new keys as fit
                assert int((~default).sum()) == 8
        assert store.expiry_stats()["a"]["refused"] == refused > 0
        sizes.append(store.table_size("a"))
    assert sizes[0] == sizes[1]
