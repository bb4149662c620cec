"""Compressed tables behind every store and front end: parameter servers (a real
``sparsecore server`` process; cluster equals embedded), the CUDA backend (emulated, and on a
device where there is one), the torch bridge, the Trainer, serving exports and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

from reference import random_batch
from test_ps import start_server_process, stop

TABLES = {
    "mh": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2, rows=32, combine="sum"), optimizer=sc.Adagrad(lr=0.1)),
    "qr": sc.TableConfig(dim=4, pooling="mean", compression=sc.QuotientRemainder(rows=8), optimizer=sc.Adam(lr=0.01)),
    "cat": sc.TableConfig(dim=6, compression=sc.BinaryCodeHash(bits=8, block=4, combine="concat"),
                          optimizer=sc.FTRL(lr=0.1, l1=0.001)),
    "rc": sc.TableConfig(dim=3, pooling="none", compression=sc.RandomCoding(buckets=16, k=2),
                         optimizer=sc.SGD(lr=0.1)),
    "plain": sc.TableConfig(dim=4),
}
ID_POOL = np.concatenate([np.arange(-30, 90, dtype=np.int64), np.array([2**63 - 1, -(2**63)], np.int64)])


def train_side_by_side(a, b, steps: int, seed: int, exact: bool) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        batch = {}
        for i, name in enumerate(TABLES):
            ids, offsets, weights = random_batch(rng, 9, 5, ID_POOL, weighted=(step + i) % 2 == 1)
            batch[name] = (ids, offsets) if weights is None else (ids, offsets, weights)
        want, got = a.forward(batch), b.forward(batch)
        grads = {}
        for name in TABLES:
            w = want[name][0] if isinstance(want[name], tuple) else want[name]
            g = got[name][0] if isinstance(got[name], tuple) else got[name]
            if exact:
                np.testing.assert_array_equal(g, w, err_msg=f"{name}, step {step}")
            else:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{name}, step {step}")
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        assert a.backward(batch, grads) == b.backward(batch, grads) == step + 1


@pytest.fixture(scope="module")
def server():
    proc, address = start_server_process("--shards", 2)
    yield address
    stop(proc)


def test_cluster_equals_embedded(server):
    embedded = sc.EmbeddingCollection(TABLES, seed=5)
    cluster = sc.EmbeddingCollection(TABLES, seed=5, server=sc.connect([server]))
    assert cluster.names == embedded.names == list(TABLES)
    train_side_by_side(embedded, cluster, steps=6, seed=1, exact=True)
    assert cluster.sizes() == embedded.sizes()
    probe = {n: (ID_POOL, np.arange(len(ID_POOL) + 1)) for n in TABLES}
    for name, out in embedded.evaluate(probe).items():
        other = cluster.evaluate(probe)[name]
        np.testing.assert_array_equal(other[0] if isinstance(other, tuple) else other,
                                      out[0] if isinstance(out, tuple) else out)


CUDA_BACKENDS = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device",
                 marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]


@pytest.mark.parametrize("emulate", CUDA_BACKENDS)
def test_cuda_backend_trains_compressed_tables_like_the_cpu(emulate):
    cpu = sc.EmbeddingCollection(TABLES, seed=2)
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, seed=2, emulate=emulate)
    assert dev.names == list(TABLES)
    train_side_by_side(cpu, dev, steps=4, seed=3, exact=False)


def test_torch_bridge_trains_compressed_tables():
    torch = pytest.importorskip("torch")
    from sparsecore.torch import EmbeddingBagCollection

    tables = {n: TABLES[n] for n in ("mh", "qr", "cat")}
    ebc = EmbeddingBagCollection(tables, seed=4)
    twin = sc.EmbeddingCollection(tables, seed=4)
    assert ebc.output_dims == {"mh": 4, "qr": 4, "cat": 6}
    rng = np.random.default_rng(0)
    batch = {n: random_batch(rng, 8, 4, ID_POOL)[:2] for n in tables}
    pooled = ebc(batch)
    loss = sum((p * (i + 1)).sum() for i, p in enumerate(pooled.values()))
    loss.backward()
    twin.backward(batch, {n: np.full(pooled[n].shape, i + 1, np.float32) for i, n in enumerate(tables)})
    for name, out in twin.evaluate(batch).items():
        np.testing.assert_array_equal(ebc.collection.evaluate(batch)[name], out)
    assert isinstance(pooled["mh"], torch.Tensor)


def test_trainer_learns_with_compressed_tables():
    torch = pytest.importorskip("torch")
    from sparsecore.data import SyntheticConfig, SyntheticData
    from sparsecore.torch import mlp
    from sparsecore.trainer import Trainer

    cfg = SyntheticConfig.w2(num_groups=3, num_user_groups=1, vocab_size=400, min_bag=1, max_bag=3,
                             weight_std=0.4, batch_size=250, seed=3)
    names = cfg.names()
    tables = {n: sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.3),
                                compression=sc.QuotientRemainder(rows=32, combine="mul")) for n in names}
    torch.manual_seed(0)
    model = mlp(4 * len(names), [8])
    trainer = Trainer(SyntheticData(cfg, num_samples=10_000), model, tables,
                      dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), progress=False)
    result = trainer.fit()
    assert result.steps == 40
    collection = trainer.embedding.collection
    assert collection.names == names and all(v["rows"] == 64 for v in collection.compression_info().values())
    assert all(size <= 32 for size in collection.sizes().values())
    metrics = trainer.evaluate(SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 5000))
    assert metrics["auc"] > 0.55, metrics


def test_export_holds_only_the_component_tables(tmp_path):
    emb = sc.EmbeddingCollection({n: TABLES[n] for n in ("mh", "plain")}, seed=1)
    emb.forward({"mh": (np.arange(100), np.arange(101)), "plain": (np.arange(5), np.arange(6))})
    version = emb.export_full(tmp_path / "stream")
    names = set(sc.read_export(tmp_path / "stream" / f"full-{version:020d}")["tables"])
    assert "mh" not in names and "plain" in names
    assert all(n.startswith("mh@") for n in names - {"plain"}) and len(names) == 3


CLI_SMALL = ["train", "--vocab-size", "300", "--batch-size", "200", "--steps", "3", "--eval-samples", "400",
             "--hidden", "8", "--dim", "4", "--no-progress", "--threads", "2"]


def test_cli_trains_with_embedding_compression(capsys):
    pytest.importorskip("torch")
    from sparsecore import cli

    assert cli.main(CLI_SMALL + ["--embedding-compression", "multihash:k=2,rows=1024", "-q"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out
    assert "compressed tables (multihash:k=2,rows=1024,combine=sum,seed=0), 2,048 rows each at most" in out


def test_cli_refuses_a_bad_compression_spec(capsys):
    pytest.importorskip("torch")
    from sparsecore import cli

    assert cli.main(CLI_SMALL + ["--embedding-compression", "multihash:k=0"]) == 2
    assert "k must be in" in capsys.readouterr().err


@pytest.mark.parametrize("compression", [sc.MultiHash(k=2, rows=64, combine="concat"),
                                         sc.QuotientRemainder(rows=16, combine="mul"),
                                         sc.RandomCoding(buckets=40, k=3)], ids=lambda c: c.name)
def test_predictor_composes_compressed_rows_like_the_training_forward(tmp_path, compression):
    torch = pytest.importorskip("torch")
    from sparsecore.data import SyntheticConfig, SyntheticData
    from sparsecore.torch import mlp

    cfg = SyntheticConfig.w2(num_groups=3, vocab_size=300, zipf_exponent=1.2, batch_size=128, seed=2,
                             num_user_groups=0, samples_per_view=1)
    admission = sc.Admission(count_threshold=3) if compression.name == "qr" else None  # one mixed table
    tables = {g: sc.TableConfig(dim=6, optimizer=sc.Adagrad(lr=0.05), pooling="mean" if i else "sum",
                                compression=compression, admission=admission if i == 2 else None)
              for i, g in enumerate(cfg.names())}
    trainer = sc.Trainer(SyntheticData(cfg, num_samples=128 * 20), mlp(18, [7]), tables, progress=False)
    trainer.fit()
    sc.export_model(tmp_path / "model", trainer, trainer.model)
    doc = json.loads((tmp_path / "model" / "model.json").read_text())
    assert set(doc["compressed_tables"]) == set(cfg.names())
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 200).next_batch(200)
    with sc.Predictor(tmp_path / "model") as p:
        got = p.predict(held)
    trainer.model.eval()
    trainer.embedding.eval()
    with torch.no_grad():
        ref = trainer._logits(held).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * (1 + np.abs(ref).max()))


def test_a_model_with_a_damaged_compressed_table_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from sparsecore.torch import mlp

    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, compression=sc.MultiHash(k=2, rows=8))}, seed=1)
    emb.forward({"t": (np.arange(10), np.arange(11))})
    torch.manual_seed(0)
    sc.export_model(tmp_path / "model", emb, mlp(4, [3]))
    path = tmp_path / "model" / "model.json"
    good = json.loads(path.read_text())
    for damage in ({"components": good["compressed_tables"]["t"]["components"][:1]},
                   {"spec": {"kind": "multihash", "k": 0, "rows": 8}}, {"dim": 5}):
        doc = json.loads(json.dumps(good))
        doc["compressed_tables"]["t"].update(damage)
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="t"):
            sc.Predictor(tmp_path / "model")
