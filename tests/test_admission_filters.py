"""Allow and deny lists and the streaming frequency filter of feature admission, checked
against an exact Python reference; every filter gives the same rows in another process and
at another thread count; the state survives a checkpoint and the restart of a real
``sparsecore server`` process from its snapshot."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc

from reference import random_batch
from test_ps import _env, start_server_process, stop

DIM = 3
LR = 0.1
M64 = (1 << 64) - 1
FREQUENCY_SALT = 0x6672657175000000


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def _hash_combine(a, b):
    return _splitmix64(a ^ ((_splitmix64(b) + 0x632BE59BD9B4E019) & M64))


def _table_seed(seed, name):
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return _hash_combine(seed, h)


def _uniform(table_seed, salt, key, count):
    h = _hash_combine(_hash_combine(table_seed ^ salt, _fmix64(key & M64)), _fmix64(count))
    return (h >> 11) * 2.0**-53


class Reference:
    """The admission rule of table/admission.h, written out: one clock tick per training
    lookup call, then one sighting per distinct id without a row."""

    def __init__(self, admission, table_seed):
        self.a = admission
        self.seed = table_seed
        self.allow = set(admission.allow.tolist()) if admission.allow is not None else set()
        self.deny = set(admission.deny.tolist()) if admission.deny is not None else set()
        self.clock = 0
        self.pending = {}  # id -> [count, first tick]
        self.rows = set()
        self.admitted = self.rejected = 0

    def passes(self, key, count, elapsed):
        a = self.a
        if count < a.count_threshold:
            return False
        if a.frequency_horizon > 0:
            p = -math.expm1(-((count - 1) / max(elapsed, 1)) * a.frequency_horizon)
            if a.frequency_sample:
                return _uniform(self.seed, FREQUENCY_SALT, key, count) < p
            return p >= a.frequency_threshold
        return True

    def lookup(self, ids):
        if len(ids):
            self.clock += 1
        for key in np.unique(ids).tolist():
            if key in self.rows:
                continue
            if key in self.deny:
                self.rejected += 1
                continue
            if key in self.allow:
                ok = True
            else:
                entry = self.pending.setdefault(key, [0, self.clock])
                entry[0] += 1
                ok = self.passes(key, entry[0], self.clock - entry[1])
            if ok:
                self.rows.add(key)
                self.pending.pop(key, None)
                self.admitted += 1
            else:
                self.rejected += 1


def _coll(admission, seed=5, **kw):
    return sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=LR), admission=admission, **kw)},
                                  seed=seed)


def _pool(rng, n):
    return rng.choice(2**40, size=n, replace=False).astype(np.int64) - 2**39


FILTERS = {
    "lists": lambda pool: sc.Admission(count_threshold=3, allow=pool[:10], deny=pool[10:25]),
    "frequency": lambda pool: sc.Admission(frequency_horizon=2.0, frequency_threshold=0.7),
    "frequency+count": lambda pool: sc.Admission(count_threshold=3, frequency_horizon=1.0, frequency_threshold=0.3),
    "frequency-sample": lambda pool: sc.Admission(frequency_horizon=0.5, frequency_sample=True),
    "all": lambda pool: sc.Admission(count_threshold=2, frequency_horizon=3.0, frequency_threshold=0.8,
                                     allow=pool[:5], deny=pool[5:15]),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_match_an_exact_reference(name):
    rng = np.random.default_rng()
    pool = _pool(rng, 80)
    admission = FILTERS[name](pool)
    coll = _coll(admission)
    ref = Reference(admission, _table_seed(5, "t"))
    # Ids of three frequencies: the filter must tell them apart.
    hot, warm, cold = pool[:30], pool[30:55], pool[55:]
    for step in range(1, 25):
        parts = [hot[rng.random(hot.size) < 0.8], warm[rng.random(warm.size) < 0.3], cold[rng.random(cold.size) < 0.05]]
        ids = rng.permutation(np.concatenate(parts))
        offsets = np.array([0, ids.size // 2, ids.size], dtype=np.int64)
        ref.lookup(ids)
        out = coll.forward({"t": (ids, offsets)})["t"]
        coll.backward({"t": (ids, offsets)}, {"t": np.zeros_like(out)})
        present = (coll.lookup("t", pool) != 0).any(axis=1)
        assert set(pool[present].tolist()) == ref.rows, f"step {step}"
        stats = coll.admission_stats()["t"]
        assert (stats["admitted"], stats["pending"], stats["rejected"]) == \
            (ref.admitted, len(ref.pending), ref.rejected), f"step {step}"
    assert 0 < len(ref.rows) < pool.size and ref.rejected > 0  # the filter told ids apart
    if admission.deny is not None:
        assert not ref.rows & set(admission.deny.tolist())
    if admission.allow is not None:
        assert not ref.pending.keys() & set(admission.allow.tolist())


def test_frequency_threshold_is_the_poisson_rule_at_its_edge():
    # q = 1 - e^-0.5 at horizon 1: an id passes exactly when (c - 1) / (t - t0) >= 0.5.
    rng = np.random.default_rng()
    key, others = _pool(rng, 1), _pool(rng, 8) + 2**41
    coll = _coll(sc.Admission(frequency_horizon=1.0, frequency_threshold=-math.expm1(-0.5)))
    one = np.array([0, 1], dtype=np.int64)

    def sight(k):
        coll.forward({"t": (np.array([k], dtype=np.int64), one)})

    sight(key[0])  # tick 1: the first sighting never passes (no rate yet)
    assert coll.table_size("t") == 0
    for k in others[:2]:
        sight(k)  # ticks 2, 3 (each other id at its first sighting: refused)
    sight(key[0])  # tick 4: c 2, 3 ticks after the first: lambda 1/3 < 0.5
    assert not coll.lookup("t", key).any()
    sight(key[0])  # tick 5: c 3, 4 ticks: lambda = 0.5, P = q exactly: admitted
    assert coll.lookup("t", key).any()
    assert coll.table_size("t") == 1
    # An empty lookup does not tick the clock; a stats check that nothing else was admitted.
    coll.forward({"t": (key[:0], np.array([0, 0], dtype=np.int64))})
    assert coll.admission_stats()["t"] == {"admitted": 1, "pending": 2, "rejected": 4, "dropped_gradients": 0}


@pytest.mark.parametrize("admission, match", [
    (sc.Admission(frequency_horizon=-1.0), "frequency_horizon must be finite and >= 0"),
    (sc.Admission(frequency_horizon=1.0, frequency_threshold=0.0), r"frequency_threshold must lie in \(0, 1\]"),
    (sc.Admission(frequency_horizon=1.0, frequency_threshold=1.5), r"frequency_threshold must lie in \(0, 1\]"),
    (sc.Admission(frequency_horizon=1.0, bloom_capacity=100), "the frequency filter needs exact counts"),
    (sc.Admission(allow=[1, 2, 3], deny=[3, 4]), "id 3 is on both the allow and the deny list"),
    (sc.Admission(frequency_horizon=float("inf")), "frequency_horizon must be finite"),
])
def test_bad_filter_configs_are_refused(admission, match):
    with pytest.raises(ValueError, match=match):
        _coll(admission)


def test_list_types_are_checked():
    with pytest.raises(TypeError, match="admission allow must be an array of int64 ids"):
        sc.Admission(allow=["a"])
    with pytest.raises(TypeError, match="admission deny must be an array of int64 ids"):
        sc.Admission(deny=np.array([1.5]))
    with pytest.raises(ValueError, match="must be one-dimensional"):
        sc.Admission(allow=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="outside int64"):
        sc.Admission(deny=np.array([2**63], dtype=np.uint64))
    with pytest.raises(TypeError, match="frequency_sample must be a bool"):
        _coll(sc.Admission(frequency_horizon=1.0, frequency_sample=1))


def test_large_lists_round_trip_through_the_config_and_a_checkpoint(tmp_path):
    rng = np.random.default_rng()
    ids = rng.choice(2**62, size=200_000, replace=False).astype(np.int64) - 2**61
    admission = sc.Admission(count_threshold=5, allow=ids[:100_000], deny=ids[100_000:])
    assert np.array_equal(admission.allow, np.sort(ids[:100_000]))
    cfg = sc.TableConfig(dim=DIM, admission=admission)
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg
    coll = sc.EmbeddingCollection({"t": cfg}, seed=2)
    batch = np.concatenate([ids[:50], ids[100_000:100_050]])
    coll.forward({"t": (batch, np.array([0, batch.size]))})
    assert coll.table_size("t") == 50  # the allowed at once, the denied never
    coll.save(str(tmp_path / "ck"))
    loaded = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
    got = sc.TableConfig.from_dict(__import__("json").loads(loaded._c.table_config_json(0)))
    assert got.admission == admission
    loaded.forward({"t": (batch, np.array([0, batch.size]))})
    assert loaded.table_size("t") == 50
    assert loaded.admission_stats()["t"]["rejected"] == 100


_CHILD = """
import sys, json, numpy as np, sparsecore as sc
sys.path.insert(0, sys.argv[1])
sc.set_num_threads(int(sys.argv[2]))
from test_admission_filters import _determinism_run
print(json.dumps(_determinism_run(int(sys.argv[3]))))
"""


def _determinism_run(ids_seed):
    """Trains one table per filter on a fixed stream; returns a digest of rows and statistics."""
    rng = np.random.default_rng(ids_seed)
    pool = _pool(rng, 400)
    configs = {
        "count": sc.Admission(count_threshold=3),
        "probability": sc.Admission(count_threshold=2, probability=0.4),
        "bloom": sc.Admission(count_threshold=2, bloom_capacity=300, bloom_counter_bits=4),
        "frequency": sc.Admission(count_threshold=2, frequency_horizon=1.5, frequency_threshold=0.6),
        "sample": sc.Admission(frequency_horizon=0.3, frequency_sample=True),
        "lists": sc.Admission(count_threshold=4, allow=pool[:40], deny=pool[40:80]),
    }
    tables = {name: sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1), admission=a) for name, a in configs.items()}
    coll = sc.EmbeddingCollection(tables, seed=9)
    zipf = np.minimum(rng.zipf(1.3, size=(30, 6, 200)), pool.size) - 1
    for step in range(30):
        batch = {name: (pool[zipf[step, i]], np.arange(0, 201, 10, dtype=np.int64)) for i, name in enumerate(tables)}
        out = coll.forward(batch)
        coll.backward(batch, {name: np.full_like(o, 0.01) for name, o in out.items()})
    rows = {name: coll.lookup(name, pool).tobytes().hex() for name in tables}
    return {"rows": rows, "stats": coll.admission_stats(), "sizes": coll.sizes()}


def test_every_filter_is_the_same_in_other_processes_and_thread_counts():
    ids_seed = int(np.random.default_rng().integers(2**31))
    here = os.path.dirname(__file__)
    runs = []
    for threads in (1, 3):
        out = subprocess.run([sys.executable, "-c", _CHILD, here, str(threads), str(ids_seed)], env=_env(),
                             capture_output=True, text=True, timeout=240, check=True).stdout
        runs.append(__import__("json").loads(out))
    assert runs[0] == runs[1]
    mine = __import__("json").loads(__import__("json").dumps(_determinism_run(ids_seed)))
    assert mine == runs[0]
    assert all(0 < s < 400 for s in runs[0]["sizes"].values()), runs[0]["sizes"]


def _train(colls, rng, pool, steps, name="t"):
    for _ in range(steps):
        ids, offsets, _ = random_batch(rng, 10, 5, pool)
        outs = [c.forward({name: (ids, offsets)})[name] for c in colls]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        grad = rng.standard_normal(outs[0].shape).astype(np.float32)
        for c in colls:
            c.backward({name: (ids, offsets)}, {name: grad})


def test_frequency_and_list_state_survive_a_checkpoint(tmp_path):
    rng = np.random.default_rng()
    pool = _pool(rng, 60)
    admission = sc.Admission(count_threshold=2, frequency_horizon=1.0, frequency_threshold=0.7,
                             allow=pool[:3], deny=pool[3:8])
    coll = _coll(admission)
    _train([coll], rng, pool, 6)
    assert coll.admission_stats()["t"]["pending"] > 0
    coll.save(str(tmp_path / "ck"))
    loaded = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
    assert loaded.admission_stats() == coll.admission_stats()
    # The clock and first sightings carry on: every later decision is the same.
    _train([coll, loaded], rng, pool, 10)
    np.testing.assert_array_equal(loaded.lookup("t", pool), coll.lookup("t", pool))
    assert loaded.admission_stats() == coll.admission_stats()


def test_filter_state_survives_a_server_process_restart(tmp_path):
    """A `sparsecore server` killed after a snapshot and started again from it decides every
    later sighting as an embedded collection restored from its checkpoint (one shard: one
    clock tick per training pull, as the embedded table ticks per training lookup)."""
    rng = np.random.default_rng()
    pool = _pool(rng, 60)
    tables = {"t": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=LR), default_value=0.25,
                                  admission=sc.Admission(count_threshold=2, frequency_horizon=1.0,
                                                         frequency_threshold=0.6, allow=pool[:4],
                                                         deny=pool[4:9]))}
    snap = str(tmp_path / "snap")
    embedded = sc.EmbeddingCollection(tables, seed=11)
    proc, address = start_server_process("--shards", 1, "--snapshot-dir", snap)
    try:
        cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([address]))
        _train([embedded, cluster], rng, pool, 6)
        assert cluster.admission_stats() == embedded.admission_stats()
        assert cluster.save() == "step-6"
        embedded.save(str(tmp_path / "ck"))
    finally:
        stop(proc)
    proc, address = start_server_process("--shards", 1, "--snapshot-dir", snap)
    try:
        cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([address]))
        restored = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
        assert cluster.admission_stats() == restored.admission_stats()
        assert cluster.admission_stats()["t"]["pending"] > 0
        _train([restored, cluster], rng, pool, 8)
        np.testing.assert_array_equal(cluster.lookup("t", pool), restored.lookup("t", pool))
        assert cluster.sizes() == restored.sizes()
        assert cluster.admission_stats() == restored.admission_stats()
    finally:
        stop(proc)
