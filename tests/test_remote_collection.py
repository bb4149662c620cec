"""``sc.EmbeddingCollection(tables, seed, server=...)``: the compiled collection with its rows on
parameter servers. Snapshots instead of checkpoint directories, sizes summed over the servers,
evaluation that inserts nothing, a clear error from the calls that need rows in this process,
and the Trainer's prefetching pipeline (``stale_sparse`` included) unchanged."""

import numpy as np
import pytest

import sparsecore as sc

TABLES = {"a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
          "b": sc.TableConfig(dim=2, optimizer=sc.SGD(lr=0.2), pooling="mean")}
BATCH = {"a": (np.array([1, 2, 1, -7], np.int64), np.array([0, 2, 4], np.int64)),
         "b": (np.array([5, 2**63 - 1], np.int64), np.array([0, 1, 2], np.int64))}
GRADS = {"a": np.full((2, 3), 0.5, np.float32), "b": np.full((2, 2), -0.25, np.float32)}


@pytest.fixture
def server(tmp_path):
    s = sc.Server(snapshot_dir=str(tmp_path / "snapshots"))
    yield s
    s.stop()


def test_it_is_the_compiled_collection_and_names_its_server(server):
    coll = sc.EmbeddingCollection(TABLES, seed=3, server=server)
    assert type(coll) is sc.EmbeddingCollection
    assert coll.server is not None and sc.EmbeddingCollection(TABLES, seed=3).server is None
    assert coll.names == ["a", "b"] and {n: c.dim for n, c in coll.tables.items()} == {"a": 3, "b": 2}
    assert "servers=embedded" in repr(coll)
    with pytest.warns(DeprecationWarning, match="EmbeddingCollection.server"):
        assert coll.cluster is coll.server  # the old name of the property


def test_sizes_count_the_servers_rows_and_evaluation_inserts_none(server):
    coll = sc.EmbeddingCollection(TABLES, seed=3, server=server)
    coll.evaluate(BATCH)
    assert coll.sizes() == {"a": 0, "b": 0}
    coll.backward(BATCH, GRADS)
    assert coll.sizes() == {"a": 3, "b": 2}
    assert coll.table_size("a") == 3


@pytest.mark.parametrize("call", ["export", "memory_bytes", "bytes_per_row"])
def test_calls_that_need_local_rows_say_the_tables_live_on_servers(server, call):
    coll = sc.EmbeddingCollection(TABLES, seed=3, server=server)
    args = {"export": ("a",), "memory_bytes": (), "bytes_per_row": ("a",)}
    with pytest.raises(ValueError, match=rf"EmbeddingCollection\.{call}: .*parameter servers"):
        getattr(coll, call)(*args[call])


def test_save_and_restore_name_server_snapshots(server):
    coll = sc.EmbeddingCollection(TABLES, seed=3, server=server)
    coll.backward(BATCH, GRADS)
    coll.backward(BATCH, GRADS)
    assert coll.save() == "step-2"
    saved = coll.lookup("a", np.array([1, 2, -7], np.int64))
    coll.backward(BATCH, GRADS)
    assert coll.step == 3
    coll.restore("step-2")
    assert coll.step == 2
    np.testing.assert_array_equal(coll.lookup("a", np.array([1, 2, -7], np.int64)), saved)
    with pytest.raises(ValueError):
        coll.save()  # step-2 exists: refused unless overwrite
    assert coll.save(overwrite=True) == "step-2"


def test_a_batch_prepared_ahead_reads_rows_at_its_forward(server):
    embedded = sc.EmbeddingCollection(TABLES, seed=3)
    remote = sc.EmbeddingCollection(TABLES, seed=3, server=server)
    outs = []
    for coll in (embedded, remote):
        first, ahead = coll.prepare(BATCH), coll.prepare(BATCH)
        coll.backward(first, GRADS)
        outs.append(coll.pooled_rows(ahead))
    for want, got in zip(*outs):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stale_sparse", [False, True], ids=["fresh", "stale"])
def test_trainer_pipeline_over_servers_matches_embedded(stale_sparse):
    torch = pytest.importorskip("torch")
    from sparsecore.data import SyntheticConfig, SyntheticData

    data = SyntheticConfig(num_groups=2, vocab_size=200, min_bag=0, max_bag=5, batch_size=32, seed=4)
    tables = {"f0": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
              "f1": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1), pooling="mean")}

    def run(**where):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 1))
        trainer = sc.Trainer(SyntheticData(data), model, tables, seed=2, progress=False, deterministic=True,
                             stale_sparse=stale_sparse, **where)
        trainer.fit(steps=5)
        return trainer

    server = sc.Server(port=0)
    try:
        ref, got = run(), run(server=sc.connect([server.endpoint]))
        assert got.step == ref.step == 5
        assert got.embedding.collection.sizes() == ref.embedding.collection.sizes()
        ids = np.arange(data.vocab_size, dtype=np.int64)
        for name in tables:
            rows = got.embedding.collection.lookup(name, ids)
            assert np.isfinite(rows).all()
            if not stale_sparse:  # stale rows are read whenever the pipeline gets to them: not reproducible
                np.testing.assert_allclose(rows, ref.embedding.collection.lookup(name, ids), rtol=1e-5, atol=1e-6)
    finally:
        server.stop()
