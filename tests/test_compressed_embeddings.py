"""Compressed embedding tables (sparsecore.compression): the id -> component rows mapping, the
composed lookup and its gradients against a NumPy reference for every combine mode, pooling
and optimizer, fixed memory, checkpoints, evaluation and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.compression import base_seed
from reference import OPTIMIZERS, EXTREME_IDS, RowState, assert_close_to_scale, pool, position_grads, random_batch

KINDS = {
    "multihash_sum": sc.MultiHash(k=2, rows=37, combine="sum", seed=5),
    "multihash_concat": sc.MultiHash(k=3, rows=29, combine="concat"),
    "multihash_mul": sc.MultiHash(k=2, rows=31, combine="mul"),
    "qr_mul": sc.QuotientRemainder(rows=16, quotient_rows=8),
    "qr_concat": sc.QuotientRemainder(rows=16, combine="concat"),
    "binary_sum": sc.BinaryCodeHash(bits=12, block=4),
    "binary_mul": sc.BinaryCodeHash(bits=8, block=4, combine="mul"),
    "random_signed": sc.RandomCoding(buckets=23, k=3),
    "random_unsigned": sc.RandomCoding(buckets=17, k=2, signed=False),
}
DIM = 6


def component_names(emb, name: str) -> list[str]:
    comps = [n for n in emb.sizes() if n.startswith(name + "@")]
    return sorted(comps, key=lambda n: int(n.rpartition("#")[2]))


class Reference:
    """The composed table in float64: one RowState per component row."""

    def __init__(self, emb, name: str, kind, opt):
        self.emb, self.name, self.kind, self.opt = emb, name, kind, opt
        self.seed = base_seed(emb.seed, name, kind)
        self.comps = component_names(emb, name)
        self.states: dict[tuple[int, int], RowState] = {}

    def keys(self, ids):
        return self.kind.component_keys(ids, self.seed)

    def rows(self, ids) -> list[np.ndarray]:
        """Per component, its row at every position (signed sum over the id's keys)."""
        out = []
        for c, (keys, signs) in enumerate(self.keys(ids)):
            for k in np.unique(keys):
                if (c, int(k)) not in self.states:
                    row = self.emb.lookup(self.comps[c], np.array([k]), insert=True)[0]
                    self.states[(c, int(k))] = RowState(row, self.opt)
            e = np.zeros((len(ids), self.emb.tables[self.name].dim if self.kind.combine_mode != "concat"
                          else self.emb.tables[self.name].dim // len(self.comps)))
            for j in range(keys.shape[1]):
                s = np.ones(len(ids)) if signs is None else signs[:, j].astype(np.float64)
                e += s[:, None] * np.stack([self.states[(c, int(k))].w for k in keys[:, j]]) if len(ids) else 0
            out.append(e)
        return out

    def composed(self, parts: list[np.ndarray]) -> np.ndarray:
        mode = self.kind.combine_mode
        if mode == "sum":
            return sum(parts)
        if mode == "concat":
            return np.concatenate(parts, axis=1)
        out = parts[0].copy()
        for p in parts[1:]:
            out = out * p
        return out

    def step(self, ids, offsets, weights, pooling, grad, step: int) -> None:
        parts = self.rows(ids)
        d_comp = position_grads(offsets, weights, pooling, grad)  # the composed row's gradient
        sums: dict[tuple[int, int], np.ndarray] = {}
        dc = parts[0].shape[1]
        for c, (keys, signs) in enumerate(self.keys(ids)):
            if self.kind.combine_mode == "sum":
                dpart = d_comp
            elif self.kind.combine_mode == "concat":
                dpart = d_comp[:, c * dc:(c + 1) * dc]
            else:
                dpart = d_comp.copy()
                for o, other in enumerate(parts):
                    if o != c:
                        dpart = dpart * other
            for j in range(keys.shape[1]):
                for p in range(len(ids)):
                    s = 1.0 if signs is None else float(signs[p, j])
                    key = (c, int(keys[p, j]))
                    sums[key] = sums.get(key, 0) + s * dpart[p]
        for key, g in sums.items():
            self.states[key].apply(self.opt, g, step)

    def check_rows(self, rtol: float = 2e-4) -> None:
        for c, comp in enumerate(self.comps):
            keys = np.array(sorted(k for cc, k in self.states if cc == c), dtype=np.int64)
            want = np.stack([self.states[(c, int(k))].w for k in keys])
            assert_close_to_scale(self.emb.lookup(comp, keys), want, rtol=rtol, err_msg=comp)


def train_and_check(kind, opt, pooling: str, steps: int = 3, seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=opt, pooling=pooling, compression=kind,
                                                      init=sc.Uniform(-0.5, 0.5))}, seed=3)
    ref = Reference(emb, "t", kind, opt)
    id_pool = np.concatenate([EXTREME_IDS, rng.integers(-300, 300, size=25)])
    for step in range(1, steps + 1):
        weighted = step == 2
        ids, offsets, weights = random_batch(rng, 17, 5, id_pool, weighted=weighted)
        batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
        prepared = emb.prepare(batch)
        out = emb.forward(prepared)["t"]
        want = pool(ref.composed(ref.rows(ids)), offsets, weights, pooling)
        got = out[0] if pooling == "none" else out
        assert got.dtype == np.float32 and got.shape == want.shape
        assert_close_to_scale(got, want, rtol=1e-4)
        grad = rng.normal(size=got.shape).astype(np.float32)
        assert emb.backward(prepared, {"t": grad}) == step
        ref.step(ids, offsets, weights, pooling, grad, step)
        ref.check_rows()


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_composed_lookup_and_gradients_match_reference(kind_name, pooling):
    train_and_check(KINDS[kind_name], sc.Adagrad(lr=0.1, initial_accumulator=0.1), pooling)


@pytest.mark.parametrize("combine", ["sum", "concat", "mul"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_every_optimizer_updates_each_component_row_once(opt_name, combine):
    train_and_check(sc.MultiHash(k=2, rows=19, combine=combine), OPTIMIZERS[opt_name], "sum", steps=2)


def test_signed_random_coding_with_signs_matches_reference_under_adam():
    train_and_check(sc.RandomCoding(buckets=11, k=4), OPTIMIZERS["adam"], "mean", steps=2)


def test_qr_maps_ids_in_range_to_distinct_quotient_remainder_pairs():
    kind = sc.QuotientRemainder(rows=16, quotient_rows=8)
    ids = np.arange(128, dtype=np.int64)
    (r, _), (q, _) = kind.component_keys(ids, 99)
    np.testing.assert_array_equal(r[:, 0], ids % 16)
    np.testing.assert_array_equal(q[:, 0], ids // 16)
    far = np.array([128, -1, 2**63 - 1, -(2**63)], dtype=np.int64)
    (r, _), (q, _) = kind.component_keys(far, 99)
    assert np.all((r >= 0) & (r < 16)) and np.all((q >= 0) & (q < 8))


def test_binary_code_blocks_are_the_ids_bits():
    kind = sc.BinaryCodeHash(bits=12, block=4)
    ids = np.array([0, 1, 0xABC, 4095], dtype=np.int64)
    blocks = [k[:, 0] for k, _ in kind.component_keys(ids, 1)]
    for j, b in enumerate(blocks):
        np.testing.assert_array_equal(b, (ids >> (4 * j)) & 15)
    assert kind.num_rows() == 3 * 16


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_keys_lie_in_each_component_range(kind_name):
    kind = KINDS[kind_name]
    ids = np.concatenate([EXTREME_IDS, np.arange(-500, 500)])
    for rows, (keys, signs) in zip(kind.component_rows(), kind.component_keys(ids, 12345)):
        assert keys.dtype == np.int64 and keys.shape == (len(ids), kind.keys_per_id())
        assert keys.min() >= 0 and keys.max() < rows
        if signs is not None:
            assert set(np.unique(signs)) <= {-1.0, 1.0}


def test_random_coding_signs_are_balanced():
    keys, signs = sc.RandomCoding(buckets=1000, k=2).component_keys(np.arange(20000, dtype=np.int64), 7)[0]
    assert abs(float(signs.mean())) < 0.05


MAPPING_SCRIPT = """
import json, sys
import numpy as np
import sparsecore as sc
sc.set_num_threads(int(sys.argv[1]))
from sparsecore.compression import base_seed
ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789, 2**40 + 7], dtype=np.int64)
out = {}
for spec in sys.argv[2:]:
    kind = sc.parse_compression(spec)
    out[spec] = [k.tolist() for k, _ in kind.component_keys(ids, base_seed(7, "user", kind))]
emb = sc.EmbeddingCollection({"user": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2, rows=64))}, seed=7)
out["rows"] = emb.forward({"user": (ids, np.array([0, 3, 7]))})["user"].tolist()
print(json.dumps(out))
"""


def test_mapping_is_identical_across_processes_and_thread_counts():
    specs = [k.spec() for k in KINDS.values()]
    runs = [subprocess.run([sys.executable, "-c", MAPPING_SCRIPT, str(t), *specs], capture_output=True, text=True,
                           timeout=120, check=True) for t in (1, 2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789, 2**40 + 7], dtype=np.int64)
    for spec in specs:
        kind = sc.parse_compression(spec)
        assert first[spec] == [k.tolist() for k, _ in kind.component_keys(ids, base_seed(7, "user", kind))]


def test_spec_strings_round_trip():
    for kind in KINDS.values():
        assert sc.parse_compression(kind.spec()) == kind
    assert sc.parse_compression("multihash:k=2,rows=65536") == sc.MultiHash(k=2, rows=65536)
    assert sc.parse_compression("qr:rows=2**12") == sc.QuotientRemainder(rows=4096)


@pytest.mark.parametrize("kind_name", ["multihash_sum", "qr_mul", "binary_sum", "random_signed"])
def test_memory_is_fixed_by_the_configured_rows(kind_name):
    kind = KINDS[kind_name]
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=kind)}, seed=1)
    info = emb.compression_info()["t"]
    assert info["rows"] == kind.num_rows() == sum(info["component_rows"])
    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = rng.integers(-2**62, 2**62, size=5000)
        emb.backward({"t": (ids, np.arange(5001))}, {"t": np.ones((5000, 4), np.float32)})
    sizes = [emb.sizes()[c] for c in component_names(emb, "t")]
    assert sizes == info["component_rows"]  # 15000 distinct ids fill every component row, and no more
    limit = sum(r * emb.bytes_per_row(c) + r // 8 + 64 for r, c in zip(sizes, component_names(emb, "t")))
    assert emb.memory_bytes() <= limit


def test_checkpoint_round_trip_keeps_the_compression(tmp_path):
    tables = {"a": sc.TableConfig(dim=4, pooling="mean", compression=sc.QuotientRemainder(rows=8)),
              "b": sc.TableConfig(dim=6, compression=sc.MultiHash(k=3, rows=16, combine="concat", seed=4)),
              "c": sc.TableConfig(dim=4)}
    emb = sc.EmbeddingCollection(tables, seed=9)
    ids, offsets = np.array([1, 2, 300, 2, 77], np.int64), np.array([0, 2, 5])
    batch = {n: (ids, offsets) for n in tables}
    out = emb.forward(batch)
    emb.backward(batch, {n: np.full(o.shape, 0.5, np.float32) for n, o in out.items()})
    emb.save(tmp_path / "ck")
    loaded = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert loaded.names == ["a", "b", "c"]
    assert loaded.tables["a"].compression == tables["a"].compression
    assert loaded.tables["b"].compression == tables["b"].compression and loaded.tables["b"].dim == 6
    assert loaded.tables["a"].pooling == "mean"
    want, got = emb.evaluate(batch), loaded.evaluate(batch)
    for n in tables:
        np.testing.assert_array_equal(got[n], want[n])
    emb.backward(batch, {n: np.ones(o.shape, np.float32) for n, o in out.items()})
    emb.restore(tmp_path / "ck")
    for n, o in emb.evaluate(batch).items():
        np.testing.assert_array_equal(o, want[n])


def test_evaluation_never_inserts_and_matches_the_training_forward():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2, rows=64, combine="mul"),
                                                      pooling="none")}, seed=2)
    ids, offsets = np.array([5, 6, 7, 5], np.int64), np.array([0, 1, 4])
    before = emb.evaluate({"t": (ids, offsets)})["t"][0]
    assert not np.any(before) and sum(emb.sizes().values()) == 0
    trained = emb.forward({"t": (ids, offsets)})["t"][0]
    np.testing.assert_array_equal(emb.evaluate({"t": (ids, offsets)})["t"][0], trained)
    np.testing.assert_array_equal(emb.lookup("t", ids[[0]])[0], trained[0, 0])


def test_thread_count_does_not_change_results():
    results = []
    for threads in (1, 2):
        sc.set_num_threads(threads)
        emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=5, compression=sc.RandomCoding(buckets=50, k=3))}, seed=4)
        ids = np.arange(-100, 300, dtype=np.int64)
        batch = {"t": (ids, np.arange(0, 401, 4))}
        emb.backward(batch, {"t": np.linspace(-1, 1, 500, dtype=np.float32).reshape(100, 5)})
        results.append(emb.evaluate(batch)["t"])
    sc.set_num_threads(0)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("make, word", [
    (lambda: sc.MultiHash(k=0), "k"),
    (lambda: sc.MultiHash(rows=0), "rows"),
    (lambda: sc.MultiHash(combine="max"), "combine"),
    (lambda: sc.QuotientRemainder(rows=0), "rows"),
    (lambda: sc.QuotientRemainder(rows=2**40, quotient_rows=2**40), "quotient_rows"),
    (lambda: sc.BinaryCodeHash(bits=10, block=4), "bits"),
    (lambda: sc.BinaryCodeHash(bits=64, block=32), "block"),
    (lambda: sc.RandomCoding(buckets=0), "buckets"),
    (lambda: sc.RandomCoding(k=0), "k"),
])
def test_bad_compression_raises_value_error_naming_the_argument(make, word):
    with pytest.raises(ValueError, match=word):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=make())})


@pytest.mark.parametrize("cfg, word", [
    (sc.TableConfig(dim=5, compression=sc.MultiHash(k=2, combine="concat")), "dim"),
    (sc.TableConfig(dim=4, num_embeddings=10, compression=sc.MultiHash()), "num_embeddings"),
    (sc.TableConfig(dim=4, prune_every=3, optimizer=sc.GroupLasso(), compression=sc.MultiHash()), "prune_every"),
    (sc.TableConfig(dim=0, compression=sc.MultiHash()), "dim"),
])
def test_table_settings_that_do_not_fit_a_compressed_table_are_refused(cfg, word):
    with pytest.raises(ValueError, match=word):
        sc.EmbeddingCollection({"t": cfg})


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="k"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2.0))})
    with pytest.raises(TypeError, match="compression"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression="multihash")})


@pytest.mark.parametrize("spec, word", [("nohash:k=2", "unknown compression"), ("multihash:k", "bad setting"),
                                        ("multihash:q=1", "bad setting"), ("multihash:k=x", "k must be an int"),
                                        ("random:signed=maybe", "signed")])
def test_bad_spec_strings_are_refused(spec, word):
    with pytest.raises(ValueError, match=word):
        sc.parse_compression(spec)


def test_bad_batches_change_nothing():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2, rows=64, combine="mul"))})
    ids = np.array([1, 2, 3], np.int64)
    with pytest.raises(ValueError, match="offsets"):
        emb.forward({"t": (ids, np.array([0, 2, 1, 3]))})
    with pytest.raises(ValueError, match="offsets"):
        emb.forward({"t": (ids, np.array([1, 3]))})
    assert sum(emb.sizes().values()) == 0
    prepared = emb.prepare({"t": (ids, np.array([0, 1, 3]))})
    emb.forward(prepared)
    before = emb.evaluate({"t": (ids, np.array([0, 1, 3]))})["t"]
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        emb.backward(prepared, {"t": bad})
    with pytest.raises(ValueError, match="shape"):
        emb.backward(prepared, {"t": np.ones((3, 4), np.float32)})
    np.testing.assert_array_equal(emb.evaluate({"t": (ids, np.array([0, 1, 3]))})["t"], before)
    assert emb.step == 0


def test_component_table_names_are_reserved():
    with pytest.raises(ValueError, match="reserved"):
        sc.EmbeddingCollection({"t@multihash:k=2,rows=4,combine=sum,seed=0,pooling=sum#0": sc.TableConfig(dim=4)})


def test_backward_without_forward_of_a_mul_table_computes_its_rows():
    kind = sc.QuotientRemainder(rows=8)
    a = sc.EmbeddingCollection({"t": sc.TableConfig(dim=3, compression=kind, optimizer=sc.SGD(lr=0.5))}, seed=1)
    b = sc.EmbeddingCollection({"t": sc.TableConfig(dim=3, compression=kind, optimizer=sc.SGD(lr=0.5))}, seed=1)
    batch = {"t": (np.array([3, 11, 3], np.int64), np.array([0, 2, 3]))}
    grad = {"t": np.array([[1, 2, 3], [-1, 0, 1]], np.float32)}
    a.forward(batch)
    a.backward(batch, grad)
    prepared = b.prepare(batch)
    b.backward(prepared, grad)
    np.testing.assert_array_equal(a.evaluate(batch)["t"], b.evaluate(batch)["t"])


@pytest.mark.parametrize("combine", ["sum", "concat", "mul"])
def test_mixed_table_adds_an_exact_row_for_admitted_ids(combine):
    kind, opt = sc.MultiHash(k=2, rows=16, combine=combine), sc.SGD(lr=0.5)
    mixed = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=kind, optimizer=opt,
                                                        admission=sc.Admission(count_threshold=2))}, seed=1)
    plain = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=kind, optimizer=opt)}, seed=1)
    exact = next(n for n in mixed.sizes() if n.endswith("#exact"))
    grad = {"t": np.array([[1.0, -2.0, 0.5, 0.25]], np.float32)}
    for ids in ([1, 2], [1, 3]):  # id 1 is admitted at its second sighting
        batch = {"t": (np.array(ids, np.int64), np.array([0, 2]))}
        np.testing.assert_array_equal(mixed.forward(batch)["t"], plain.forward(batch)["t"])
        mixed.backward(batch, grad)
        plain.backward(batch, grad)
    assert mixed.sizes()[exact] == 1 and mixed.tables["t"].admission == sc.Admission(count_threshold=2)
    np.testing.assert_allclose(mixed.lookup(exact, np.array([1])), -0.5 * grad["t"])  # from zero, one update
    for i in (1, 2, 3):
        one = {"t": (np.array([i], np.int64), np.array([0, 1]))}
        want = plain.evaluate(one)["t"] + (mixed.lookup(exact, np.array([i])) if i == 1 else 0)
        np.testing.assert_allclose(mixed.evaluate(one)["t"], want, rtol=1e-6)


def test_mixed_table_keeps_the_most_frequent_ids_within_its_capacity(tmp_path):
    cfg = sc.TableConfig(dim=4, shard_bits=0, compression=sc.QuotientRemainder(rows=8),
                         expiry=sc.Expiry(capacity=5, policy="lfu", eviction_headroom=0.0))
    emb = sc.EmbeddingCollection({"t": cfg}, seed=2)
    exact = next(n for n in emb.sizes() if n.endswith("#exact"))
    rng = np.random.default_rng(0)
    for _ in range(30):
        ids = np.concatenate([np.array([7, 7, 8, 9]), rng.integers(100, 10_000, size=4)])
        emb.backward({"t": (ids, np.arange(9))}, {"t": np.ones((8, 4), np.float32)})
    assert emb.sizes()[exact] <= 5
    kept = emb.export(exact)["keys"]
    assert {7, 8, 9} <= set(kept.tolist())
    emb.save(tmp_path / "ck")
    loaded = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert loaded.tables["t"].expiry == cfg.expiry and loaded.names == ["t"]
    probe = {"t": (np.array([7, 8, 12345], np.int64), np.array([0, 3]))}
    np.testing.assert_array_equal(loaded.evaluate(probe)["t"], emb.evaluate(probe)["t"])


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("kind", [sc.QuotientRemainder(rows=8), sc.MultiHash(k=2, rows=16, combine="concat"),
                                  sc.RandomCoding(buckets=11, k=3)], ids=["qr_mul", "multihash_concat", "random"])
def test_compiled_step_equals_the_array_path(kind, pooling):
    """The CPU collection composes and splits inside its forward and backward calls; the
    array path (a core forward, then compose; split, then a core backward) is what other
    backends take. Both run the same compiled composition, so they agree bit for bit."""
    def make():
        cfg = sc.TableConfig(dim=4, compression=kind, pooling=pooling, optimizer=sc.Adam(lr=0.1),
                             admission=sc.Admission(count_threshold=2))
        return sc.EmbeddingCollection({"t": cfg, "plain": sc.TableConfig(dim=2)}, seed=4)

    fused, arrays = make(), make()
    arrays._fuses = lambda expansion: False
    rng = np.random.default_rng(3)
    for _ in range(3):
        ids, offsets, weights = random_batch(rng, 9, 4, np.concatenate([EXTREME_IDS, np.arange(12)]), weighted=True)
        batch = {"plain": (ids, offsets), "t": (ids, offsets, weights)}
        outs = []
        for emb in (fused, arrays):
            prepared = emb.prepare(batch)
            out = emb.forward(prepared)
            outs.append(out)
            got = out["t"][0] if pooling == "none" else out["t"]
            grad = np.linspace(-1, 1, got.size, dtype=np.float32).reshape(got.shape)
            emb.backward(prepared, {"t": grad, "plain": np.ones((len(offsets) - 1, 2), np.float32)})
        for name in batch:
            a, b = (o[name][0] if isinstance(o[name], tuple) else o[name] for o in outs)
            np.testing.assert_array_equal(a, b)
    for name in fused.sizes():
        np.testing.assert_array_equal(fused.export(name)["weights"], arrays.export(name)["weights"])
