"""fp16 row storage of the CPU engine (TableConfig(storage="fp16")): weights stored as IEEE
half floats, optimizer state in float32, pooling in float32, each update computed in float32
and rounded once to nearest even. Checked against the NumPy reference with the weights
rounded to fp16 after every update (np.float16 casts round to nearest even), against the
fp32 engine, through checkpoints, and against the emulated CUDA backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsecore as sc
from reference import EXTREME_IDS, pool, random_batch, train_with_reference
from reference import OPTIMIZERS as ALL_OPTIMIZERS

# Every rule once (FTRL's lr_power variant is covered by the fp32 tests).
OPTIMIZERS = {name: opt for name, opt in ALL_OPTIMIZERS.items() if name != "ftrl_power"}
DIMS = [1, 3, 16, 18, 20, 129]


def as_fp16(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest fp16 (ties to even), back in float64."""
    return np.asarray(x).astype(np.float16).astype(np.float64)


def assert_fp16_exact(values: np.ndarray) -> None:
    """Every value is an fp16 value (stored weights widen exactly)."""
    np.testing.assert_array_equal(values, values.astype(np.float16).astype(np.float32))


def assert_within_fp16_ulps(got: np.ndarray, want: np.ndarray, ulps: float, scale: np.ndarray | None = None) -> None:
    # fp32 math against the float64 reference: a value near a rounding boundary may land on
    # the neighbouring fp16, and one such step moves the later ones a little. An ulp is taken
    # at `scale` when given (the largest magnitude the weight held: a one-ulp step taken while
    # the weight was larger is many ulps of a weight that has since shrunk; the initial value
    # is not enough, a weight may grow and shrink again within the run).
    magnitude = np.abs(want) if scale is None else np.maximum(np.abs(want), np.abs(scale))
    spacing = np.spacing(magnitude.astype(np.float16)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want)
    bad = err > ulps * spacing + 2e-5  # the absolute slack of the fp32 tests (values near zero)
    assert not bad.any(), f"{bad.sum()} values off by more than {ulps} fp16 ulps: got {got[bad][:5]}, want {want[bad][:5]}"


def table(dim: int, storage: str = "fp16", **kw) -> sc.TableConfig:
    return sc.TableConfig(dim=dim, storage=storage, **kw)


@pytest.mark.parametrize("dim", DIMS)
def test_initial_values_are_fp32_initial_values_rounded_once(rng, dim):
    seed = int(rng.integers(1 << 62))
    half = sc.EmbeddingCollection({"t": table(dim, init=sc.Normal(0.5))}, seed)
    full = sc.EmbeddingCollection({"t": table(dim, "fp32", init=sc.Normal(0.5))}, seed)
    ids = np.concatenate([EXTREME_IDS, rng.integers(-(1 << 62), 1 << 62, size=200)])
    got = half.lookup("t", ids, insert=True)
    want = full.lookup("t", ids, insert=True).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("dim", DIMS)
def test_forward_pools_the_stored_rows_in_fp32(rng, pooling, dim):
    emb = sc.EmbeddingCollection({"t": table(dim, pooling=pooling, init=sc.Uniform(-1.0, 1.0))},
                                 int(rng.integers(1 << 62)))
    id_pool = np.concatenate([EXTREME_IDS, rng.integers(-1000, 1000, size=30)])
    for weighted in (False, True):
        ids, offsets, weights = random_batch(rng, 17, 6, id_pool, weighted=weighted)
        batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
        out = emb.forward(batch)["t"]
        out = out[0] if pooling == "none" else out
        rows = emb.lookup("t", ids).astype(np.float64)
        assert_fp16_exact(rows.astype(np.float32))
        np.testing.assert_allclose(out, pool(rows, offsets, weights, pooling), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(emb.evaluate(batch)["t"][0] if pooling == "none" else emb.evaluate(batch)["t"],
                                   out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("dim", DIMS)
def test_update_matches_reference_rounded_to_fp16_each_step(rng, opt_name, dim):
    opt = OPTIMIZERS[opt_name]
    pooling = ["sum", "mean", "none"][int(rng.integers(3))]
    tables = {"t": table(dim, optimizer=opt, init=sc.Normal(0.3), pooling=pooling)}
    seed = int(rng.integers(1 << 62))
    emb = sc.EmbeddingCollection(tables, seed)
    keys, got, want, ref = train_with_reference(rng, emb, opt, pooling, round_weights=as_fp16)
    assert_fp16_exact(got)
    assert_within_fp16_ulps(got, want, ulps=4, scale=np.stack([ref[int(k)].peak for k in keys]))
    exported = emb.export("t")
    assert exported["weights"].dtype == np.float32 and exported["state"].dtype == np.float32
    counts = dict(zip(exported["keys"].tolist(), exported["update_count"].tolist()))
    assert all(counts[int(k)] == ref[int(k)].count for k in keys)


def test_update_rounds_once_to_nearest_even():
    # SGD lr = 1 from zeros: the new weight is fp16(0 - g) with g exact in fp32, so each value
    # below sits exactly between two fp16 values (or just off it) and must land on the even one.
    g = np.array([[1 + 2**-11, 1 + 3 * 2**-11, 2048 + 1, 2048 + 3, 1 + 2**-11 + 2**-20, 2**-25, 3 * 2**-26, 65519.0]],
                 np.float32)
    emb = sc.EmbeddingCollection({"t": table(g.shape[1], optimizer=sc.SGD(lr=1.0), init=sc.Zeros())})
    batch = {"t": (np.array([5], np.int64), np.array([0, 1], np.int64))}
    emb.forward(batch)
    emb.backward(batch, {"t": g})
    got = emb.lookup("t", np.array([5], np.int64))
    np.testing.assert_array_equal(got, (-g).astype(np.float16).astype(np.float32))


def test_update_beyond_the_fp16_range_raises_and_changes_nothing():
    emb = sc.EmbeddingCollection({"t": table(2, optimizer=sc.SGD(lr=1.0), init=sc.Zeros())})
    batch = {"t": (np.array([5], np.int64), np.array([0, 1], np.int64))}
    emb.forward(batch)
    with pytest.raises(ValueError, match="non-finite"):
        emb.backward(batch, {"t": np.array([[1.0, 70000.0]], np.float32)})  # -70000 is -inf in fp16
    np.testing.assert_array_equal(emb.lookup("t", np.array([5], np.int64)), np.zeros((1, 2), np.float32))
    assert emb.export("t")["update_count"][0] == 0


def test_state_stays_fp32():
    # Adagrad's accumulator keeps what fp16 would lose: 1 + 1e-4 is not an fp16 value.
    emb = sc.EmbeddingCollection({"t": table(2, optimizer=sc.Adagrad(lr=0.1, initial_accumulator=1.0))})
    batch = {"t": (np.array([3], np.int64), np.array([0, 1], np.int64))}
    emb.forward(batch)
    emb.backward(batch, {"t": np.full((1, 2), 0.01, np.float32)})
    np.testing.assert_array_equal(emb.export("t")["state"], np.full((1, 2), np.float32(1.0) + np.float32(1e-4)))


def test_rows_take_less_memory():
    opt = sc.Adagrad(lr=0.1)
    full = sc.EmbeddingCollection({"t": table(16, "fp32", optimizer=opt)})
    half = sc.EmbeddingCollection({"t": table(16, "fp16", optimizer=opt)})
    # weights | state | 8 bytes of metadata, padded to 8
    assert full.bytes_per_row("t") == 16 * 4 + 16 * 4 + 8
    assert half.bytes_per_row("t") == 16 * 2 + 16 * 4 + 8
    assert sc.EmbeddingCollection({"t": table(3, optimizer=sc.SGD())}).bytes_per_row("t") == 16  # 6 + pad 2 + 8
    ids = np.arange(20000, dtype=np.int64)
    full.lookup("t", ids, insert=True)
    half.lookup("t", ids, insert=True)
    assert half.memory_bytes() < full.memory_bytes()


def train(emb: sc.EmbeddingCollection, rng: np.random.Generator, steps: int, names=("a", "b")) -> None:
    id_pool = np.concatenate([EXTREME_IDS, rng.integers(-500, 500, size=40)])
    for _ in range(steps):
        batch = {n: random_batch(rng, 11, 5, id_pool)[:2] for n in names}
        out = emb.forward(batch)
        emb.backward(batch, {n: rng.normal(size=out[n].shape).astype(np.float32) for n in names})


def exports_equal(x: sc.EmbeddingCollection, y: sc.EmbeddingCollection) -> None:
    for name in x.names:
        ex, ey = x.export(name), y.export(name)
        ox, oy = np.argsort(ex["keys"]), np.argsort(ey["keys"])
        for field in ("keys", "weights", "state", "update_count", "last_step"):
            np.testing.assert_array_equal(ex[field][ox], ey[field][oy], err_msg=f"{name}.{field}")


def test_checkpoint_round_trip_is_bit_exact_and_keeps_the_storage(rng, tmp_path):
    tables = {"a": table(18, optimizer=sc.Adam(lr=0.01)), "b": table(3, "fp32", pooling="mean")}
    emb = sc.EmbeddingCollection(tables, int(rng.integers(1 << 62)))
    train(emb, rng, 3)
    emb.save(tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert [t["config"]["storage"] for t in manifest["tables"]] == ["fp16", "fp32"]
    loaded = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert loaded.tables["a"].storage == "fp16" and loaded.tables["b"].storage == "fp32"
    assert loaded.bytes_per_row("a") == emb.bytes_per_row("a")
    exports_equal(emb, loaded)
    # Training goes on identically from the loaded copy.
    seed = int(rng.integers(1 << 62))
    train(emb, np.random.default_rng(seed), 2)
    train(loaded, np.random.default_rng(seed), 2)
    exports_equal(emb, loaded)


def test_checkpoint_without_storage_field_loads_as_fp32(rng, tmp_path):
    emb = sc.EmbeddingCollection({"a": table(4, "fp32"), "b": table(5, "fp32")}, 7)
    train(emb, rng, 2)
    emb.save(tmp_path / "ck")
    path = tmp_path / "ck" / "manifest.json"
    manifest = json.loads(path.read_text())
    for t in manifest["tables"]:
        del t["config"]["storage"]  # as checkpoints written before the field existed
    path.write_text(json.dumps(manifest))
    loaded = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert loaded.tables["a"].storage == "fp32"
    exports_equal(emb, loaded)


def test_restore_takes_the_checkpoint_storage(rng, tmp_path):
    emb = sc.EmbeddingCollection({"a": table(6), "b": table(2)}, 11)
    train(emb, rng, 2)
    emb.save(tmp_path / "ck")
    other = sc.EmbeddingCollection({"a": table(6, "fp32"), "b": table(2, "fp32")}, 11)
    other.restore(tmp_path / "ck")
    assert other.tables["a"].storage == "fp16"
    exports_equal(emb, other)


@pytest.mark.parametrize("storage", ["bf16", "FP16", "", "half"])
def test_unknown_storage_name_is_refused(storage):
    with pytest.raises(ValueError, match="unknown row storage"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, storage=storage)})


def test_storage_config_round_trips_through_json():
    cfg = sc.TableConfig(dim=4, storage="fp16")
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg
    emb = sc.EmbeddingCollection({"t": cfg})
    assert emb.tables["t"].storage == "fp16"
    assert "fp16" in repr(emb)


def cuda_or_skip():
    try:
        from sparsecore import cuda as sc_cuda
    except ImportError:
        pytest.skip("the CUDA backend is not in this build")
    return sc_cuda


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl", "group_lasso"])
def test_cpu_and_emulated_cuda_agree_bit_for_bit(rng, opt_name):
    sc_cuda = cuda_or_skip()
    opt = OPTIMIZERS[opt_name]
    tables = {"a": table(3, optimizer=opt, init=sc.Uniform(-1.0, 1.0)),
              "b": table(16, optimizer=opt, pooling="mean"),
              "c": table(18, optimizer=opt, pooling="none")}
    seed = int(rng.integers(1 << 62))
    cpu = sc.EmbeddingCollection(tables, seed)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, seed, storage="fp16", emulate=True)
    id_pool = np.concatenate([EXTREME_IDS, rng.integers(-300, 300, size=40)])
    for step in range(3):
        batch = {n: random_batch(rng, 9, 5, id_pool, weighted=step == 1) for n in tables}
        batch = {n: b if step == 1 else b[:2] for n, b in batch.items()}
        want, got = cpu.forward(batch), dev.forward(batch)
        grads = {}
        for n in tables:
            w = want[n][0] if isinstance(want[n], tuple) else want[n]
            g = got[n][0] if isinstance(got[n], tuple) else got[n]
            np.testing.assert_array_equal(g, w, err_msg=f"forward of {n}, step {step}")
            grads[n] = rng.normal(size=w.shape).astype(np.float32)
        assert dev.backward(batch, grads) == cpu.backward(batch, grads)
    for n in tables:
        c, e = cpu.export(n), dev.export(n)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(e["keys"], c["keys"][order])
        np.testing.assert_array_equal(e["weights"], c["weights"][order], err_msg=f"weights of {n}")
        np.testing.assert_array_equal(e["update_count"], c["update_count"][order])


def test_device_collection_takes_storage_from_the_table_configs():
    sc_cuda = cuda_or_skip()
    half = {"a": sc.TableConfig(dim=4, storage="fp16"), "b": sc.TableConfig(dim=3, storage="fp16")}
    assert sc_cuda.DeviceEmbeddingCollection(half, 1, emulate=True).storage == "fp16"
    assert sc_cuda.DeviceEmbeddingCollection({"a": sc.TableConfig(dim=4)}, 1, emulate=True).storage == "fp32"
    mixed = {"a": sc.TableConfig(dim=4, storage="fp16"), "b": sc.TableConfig(dim=3)}
    with pytest.raises(ValueError, match="storage"):
        sc_cuda.DeviceEmbeddingCollection(mixed, 1, emulate=True)
    assert sc_cuda.DeviceEmbeddingCollection(mixed, 1, storage="fp32", emulate=True).storage == "fp32"
