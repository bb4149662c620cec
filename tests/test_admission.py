"""Feature admission (``TableConfig(admission=sc.Admission(...))``): an id becomes a row only
after it passes a count threshold, a seeded probability and (optionally) counts kept in a
counting Bloom filter; until then training lookups read zeros and gradients are dropped and
counted. Checked against a NumPy reference, across processes, against one ``sparsecore
server`` process bit for bit, and for the configs it refuses."""

import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc

from reference import random_batch
from test_ps import _env, start_server_process, stop

DIM = 4
LR = 0.1


def _collection(admission, seed=7, **kw):
    return sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=LR), admission=admission, **kw)},
                                  seed=seed)


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
@pytest.mark.parametrize("dense", [False, True], ids=["hash", "dense"])
def test_count_threshold_matches_a_numpy_reference(threshold, dense):
    rng = np.random.default_rng()
    n_ids = 60
    pool = np.arange(n_ids, dtype=np.int64) if dense else rng.choice(2**40, size=n_ids, replace=False).astype(np.int64)
    kw = {"num_embeddings": n_ids} if dense else {}
    coll = _collection(sc.Admission(count_threshold=threshold), **kw)
    initial = _collection(None, **kw).lookup("t", pool, insert=True)  # rows depend on (seed, id) only
    init_of = dict(zip(pool.tolist(), initial))
    rows, counts, admitted_at = {}, {}, {}
    rejected = dropped = 0
    for step in range(1, 16):
        ids, offsets, _ = random_batch(rng, 12, 5, pool)
        # Reference: each distinct id of the batch without a row is one sighting.
        for key in np.unique(ids).tolist():
            if key in rows:
                continue
            counts[key] = counts.get(key, 0) + 1
            if counts[key] >= threshold:
                rows[key] = init_of[key].astype(np.float64)
                admitted_at[key] = step
                del counts[key]
            else:
                rejected += 1
        want = np.zeros((len(offsets) - 1, DIM))
        for b in range(len(offsets) - 1):
            for key in ids[offsets[b]:offsets[b + 1]].tolist():
                if key in rows:
                    want[b] += rows[key]
        got = coll.forward({"t": (ids, offsets)})["t"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"output, step {step}")
        grad = rng.standard_normal(got.shape).astype(np.float32)
        gsum = {}
        for b in range(len(offsets) - 1):
            for key in ids[offsets[b]:offsets[b + 1]].tolist():
                gsum[key] = gsum.get(key, 0.0) + grad[b].astype(np.float64)
        for key, g in gsum.items():
            if key in rows:
                rows[key] -= LR * g
            else:
                dropped += 1
        assert coll.backward({"t": (ids, offsets)}, {"t": grad}) == step
        assert coll.table_size("t") == len(rows)
        assert coll.admission_stats().get("t", {"admitted": len(rows), "pending": 0, "rejected": 0,
                                                "dropped_gradients": 0}) == {
            "admitted": len(rows), "pending": len(counts), "rejected": rejected, "dropped_gradients": dropped}
    keys = np.array(sorted(rows), dtype=np.int64)
    if keys.size:
        np.testing.assert_allclose(coll.lookup("t", keys), np.array([rows[k] for k in keys.tolist()]),
                                   rtol=1e-5, atol=1e-6)
    # Evaluation is unchanged: ids without a row read zeros and are not inserted.
    pending = np.array([k for k in pool.tolist() if k not in rows], dtype=np.int64)
    if pending.size:
        assert not coll.lookup("t", pending).any()
    assert coll.table_size("t") == len(rows)


def _probability_run(p, ids_seed, n=4000, seed=3):
    rng = np.random.default_rng(ids_seed)
    pool = rng.choice(2**50, size=n, replace=False).astype(np.int64)
    coll = _collection(sc.Admission(probability=p), seed=seed)
    for _ in range(3):
        coll.forward({"t": (pool, np.arange(n + 1, dtype=np.int64))})
    return pool, coll


_CHILD = """
import sys, numpy as np, sparsecore as sc
sys.path.insert(0, sys.argv[3])
from test_admission import _probability_run
pool, coll = _probability_run(float(sys.argv[1]), int(sys.argv[2]))
present = (coll.lookup("t", pool) != 0).any(axis=1)
print("".join("1" if x else "0" for x in present))
"""


def test_probability_filter_is_the_same_in_another_process():
    ids_seed = int(np.random.default_rng().integers(2**31))
    pool, coll = _probability_run(0.3, ids_seed)
    here = "".join("1" if x else "0" for x in (coll.lookup("t", pool) != 0).any(axis=1))
    import os
    out = subprocess.run([sys.executable, "-c", _CHILD, "0.3", str(ids_seed), os.path.dirname(__file__)],
                         env=_env(), capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert out == here


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_probability_filter_admits_at_its_rate(p):
    # Three sightings each: P(admitted) = 1 - (1 - p)^3, independent per id (a seeded hash).
    n = 4000
    pool, coll = _probability_run(p, int(np.random.default_rng().integers(2**31)), n=n)
    rate = coll.table_size("t") / n
    want = 1 - (1 - p) ** 3
    sigma = np.sqrt(want * (1 - want) / n)
    assert abs(rate - want) < 7 * sigma + 1e-9, (rate, want)
    s = coll.admission_stats()["t"]
    assert s["admitted"] == coll.table_size("t") and s["pending"] == n - s["admitted"]


@pytest.mark.parametrize("bits", [4, 8])
def test_bloom_counts_never_admit_late(bits):
    """The Bloom estimate never under-counts: an id is a row by its n-th sighting at the latest."""
    rng = np.random.default_rng()
    threshold = 3
    pool = rng.choice(2**40, size=500, replace=False).astype(np.int64)
    coll = _collection(sc.Admission(count_threshold=threshold, bloom_capacity=2000, bloom_counter_bits=bits))
    for sighting in range(1, threshold + 1):
        coll.forward({"t": (pool, np.arange(pool.size + 1, dtype=np.int64))})
        if sighting < threshold:
            # A few early admissions are false positives; with capacity 4x the ids, they are rare.
            assert coll.table_size("t") <= 0.05 * pool.size
    assert coll.table_size("t") == pool.size


def test_embedded_and_one_server_agree_bit_for_bit_with_admission():
    # Each server shard keeps its own Bloom filter: results agree while no false positive
    # occurs, which a capacity far above the ids used makes (practically) certain.
    proc, address = start_server_process("--shards", 2)
    try:
        rng = np.random.default_rng()
        pool = rng.choice(2**40, size=80, replace=False).astype(np.int64)
        tables = {
            "count": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1), admission=sc.Admission(count_threshold=3)),
            "prob": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.1),
                                   admission=sc.Admission(count_threshold=2, probability=0.5)),
            "bloom": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.1), pooling="mean",
                                    admission=sc.Admission(count_threshold=2, bloom_capacity=100_000,
                                                           bloom_counter_bits=4)),
        }
        embedded = sc.EmbeddingCollection(tables, seed=11)
        cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([address]))
        for step in range(12):
            batch = {name: random_batch(rng, 10, 5, pool)[:2] for name in tables}
            want, got = embedded.forward(batch), cluster.forward(batch)
            grads = {}
            for name in tables:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}, step {step}")
                grads[name] = rng.standard_normal(want[name].shape).astype(np.float32)
            assert embedded.backward(batch, grads) == cluster.backward(batch, grads) == step + 1
        for name in tables:
            np.testing.assert_array_equal(cluster.lookup(name, pool), embedded.lookup(name, pool))
        assert cluster.sizes() == embedded.sizes()
        assert cluster.admission_stats() == embedded.admission_stats()
    finally:
        stop(proc)


@pytest.mark.parametrize("admission, match", [
    (sc.Admission(count_threshold=0), "count_threshold must be >= 1"),
    (sc.Admission(probability=0.0), r"probability must lie in \(0, 1\]"),
    (sc.Admission(probability=1.5), r"probability must lie in \(0, 1\]"),
    (sc.Admission(probability=float("nan")), "probability must be finite"),
    (sc.Admission(bloom_capacity=-1), "bloom_capacity must be >= 0"),
    (sc.Admission(bloom_capacity=100, bloom_fp_rate=0.0), r"bloom_fp_rate must lie in \(0, 1\)"),
    (sc.Admission(bloom_capacity=100, bloom_fp_rate=1.0), r"bloom_fp_rate must lie in \(0, 1\)"),
    (sc.Admission(bloom_capacity=100, bloom_counter_bits=5), "bloom_counter_bits must be 4 or 8"),
    (sc.Admission(count_threshold=16, bloom_capacity=100, bloom_counter_bits=4), "exceeds what a 4-bit"),
    (sc.Admission(bloom_capacity=2**40, bloom_fp_rate=1e-9), "needs more than 2"),
])
def test_bad_admission_configs_are_refused(admission, match):
    with pytest.raises(ValueError, match=match):
        _collection(admission)


def test_admission_types_are_checked():
    with pytest.raises(TypeError, match="count_threshold must be an int"):
        _collection(sc.Admission(count_threshold=2.0))
    with pytest.raises(TypeError, match="admission must be an Admission"):
        _collection({"count_threshold": 2})


def test_admission_config_round_trips_through_json():
    cfg = sc.TableConfig(dim=3, admission=sc.Admission(count_threshold=4, probability=0.25, bloom_capacity=1000,
                                                       bloom_fp_rate=0.02, bloom_counter_bits=4))
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg


def _train(colls, rng, pool, steps):
    for _ in range(steps):
        ids, offsets, _ = random_batch(rng, 10, 5, pool)
        outs = [c.forward({"t": (ids, offsets)})["t"] for c in colls]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        grad = rng.standard_normal(outs[0].shape).astype(np.float32)
        for c in colls:
            c.backward({"t": (ids, offsets)}, {"t": grad})


@pytest.mark.parametrize("bloom", [0, 200], ids=["exact", "bloom"])
def test_admission_state_survives_a_checkpoint(tmp_path, bloom):
    rng = np.random.default_rng()
    pool = rng.choice(2**40, size=60, replace=False).astype(np.int64)
    admission = sc.Admission(count_threshold=4, probability=0.7, bloom_capacity=bloom, bloom_counter_bits=4)
    coll = _collection(admission)
    _train([coll], rng, pool, 5)
    assert coll.admission_stats()["t"]["pending"] > 0
    coll.save(str(tmp_path / "ck"))
    loaded = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
    restored = _collection(admission)
    restored.restore(str(tmp_path / "ck"))
    assert loaded.admission_stats() == restored.admission_stats() == coll.admission_stats()
    # The pending counts carry on: every id is admitted at the same step in all three.
    _train([coll, loaded, restored], rng, pool, 8)
    np.testing.assert_array_equal(loaded.lookup("t", pool), coll.lookup("t", pool))
    np.testing.assert_array_equal(restored.lookup("t", pool), coll.lookup("t", pool))
    assert loaded.admission_stats() == restored.admission_stats() == coll.admission_stats()


def test_a_damaged_admission_file_is_refused(tmp_path):
    import json
    import os
    coll = _collection(sc.Admission(count_threshold=5))
    _train([coll], np.random.default_rng(), np.arange(1, 40, dtype=np.int64), 3)
    ck = tmp_path / "ck"
    coll.save(str(ck))
    path = ck / "t000.admission"
    good = path.read_bytes()
    path.write_bytes(good[:-16])  # one entry short
    with pytest.raises(sc.CorruptDataError, match="bytes, the manifest says"):
        sc.EmbeddingCollection.load(str(ck))
    forged = bytearray(good)
    forged[-4] ^= 1
    path.write_bytes(bytes(forged))
    with pytest.raises(sc.CorruptDataError, match="checksum"):
        sc.EmbeddingCollection.load(str(ck))
    path.write_bytes(good)
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["tables"][0]["admission"]["bytes"] = len(good) + 8  # not a whole number of entries
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(sc.CorruptDataError, match="admission state"):
        sc.EmbeddingCollection.load(str(ck))
    manifest["tables"][0]["admission"]["path"] = "../x.admission"
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(sc.CorruptDataError, match="outside the checkpoint"):
        sc.EmbeddingCollection.load(str(ck))
    del manifest["tables"][0]["admission"]
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(sc.CorruptDataError, match="no admission file"):
        sc.EmbeddingCollection.load(str(ck))
    assert os.path.exists(path)


@pytest.mark.parametrize("shards_after", [2, 3])
def test_admission_state_survives_a_server_snapshot(tmp_path, shards_after):
    """A server restarted from its snapshot keeps the pending counts: training on goes on
    exactly as in an embedded collection restored from its checkpoint (also onto another
    number of shards, where the exact counts follow their ids)."""
    rng = np.random.default_rng()
    pool = rng.choice(2**40, size=60, replace=False).astype(np.int64)
    tables = {"t": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=LR), admission=sc.Admission(count_threshold=4))}
    embedded = sc.EmbeddingCollection(tables, seed=11)
    src = sc.Server(port=0, shards=2, snapshot_dir=str(tmp_path / "snap"))
    try:
        cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([src.endpoint]))
        _train([embedded, cluster], rng, pool, 5)
        assert cluster.save() == "step-5"
        embedded.save(str(tmp_path / "ck"))
    finally:
        src.stop()
    dst = sc.Server(port=0, shards=shards_after, snapshot_dir=str(tmp_path / "snap"))
    try:
        assert dst.restored_step == 5
        cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([dst.endpoint]))
        restored = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
        assert cluster.admission_stats()["t"]["pending"] == restored.admission_stats()["t"]["pending"] > 0
        _train([restored, cluster], rng, pool, 6)
        np.testing.assert_array_equal(cluster.lookup("t", pool), restored.lookup("t", pool))
        assert cluster.sizes() == restored.sizes()
        if shards_after == 2:
            assert cluster.admission_stats() == restored.admission_stats()
    finally:
        dst.stop()
