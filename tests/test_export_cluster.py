"""Incremental export on parameter servers, against 2 real ``sparsecore server`` processes:
every shard writes its part at the worker's step, the parts are one export, and full +
deltas applied by a Subscriber equal a fresh full export and the embedded collection trained
the same way, bit for bit."""

import numpy as np
import pytest

import sparsecore as sc
from test_ps import start_server_process, stop



def tables(prefix):
    """Tables of their own per test: the servers live for the whole module."""
    return {f"{prefix}-a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
            f"{prefix}-b": sc.TableConfig(dim=18, optimizer=sc.SGD(lr=0.5))}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("exports")
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2, "--export-dir", export_dir)
             for i in range(2)]
    yield [address for _, address in procs], export_dir
    for p, _ in procs:
        stop(p)


def _step(emb, rng):
    batch, grads = {}, {}
    for name, cfg in emb.tables.items():
        ids = np.unique(rng.integers(-100, 300, int(rng.integers(1, 40)))).astype(np.int64)
        batch[name] = (ids, np.array([0, len(ids)], np.int64))
        grads[name] = rng.standard_normal((1, cfg.dim)).astype(np.float32)
    emb.forward(batch)
    emb.backward(batch, grads)


def _rows(export):
    return {name: (t["keys"][np.argsort(t["keys"])], t["weights"][np.argsort(t["keys"])])
            for name, t in export["tables"].items()}


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_cluster_full_plus_deltas_equal_a_fresh_full_export(cluster, dtype):
    addresses, export_dir = cluster
    ps = sc.connect(addresses, timeout=60)
    stream = f"stream-{dtype}"
    remote = sc.EmbeddingCollection(tables(stream), seed=5, server=ps)
    rng = np.random.default_rng(1)
    for _ in range(3):
        _step(remote, rng)
    version = remote.export_full(stream, dtype=dtype)
    assert version == remote.step
    sub = sc.Subscriber(export_dir / stream)
    assert sub.poll() == 1
    parts = sorted(p.name for p in (export_dir / stream / f"full-{version:020d}").iterdir())
    assert parts == [f"part-{i}-of-4" for i in range(4)]
    for round_ in range(4):
        for _ in range(int(rng.integers(0, 3))):
            _step(remote, rng)
        ids = np.array([1000 + round_, 2000 + round_], np.int64)
        remote.lookup(f"{stream}-a", ids, insert=True)  # inserted without an update: must travel too
        version = remote.export_delta(stream, since=version, dtype=dtype)
        assert sub.poll() == 1 and sub.version == version
    ps.export_full(f"fresh-{dtype}", version=version, dtype=dtype)
    fresh = _rows(sc.read_export(export_dir / f"fresh-{dtype}" / f"full-{version:020d}"))
    for name in remote.names:
        keys, weights = sub.rows(name)
        np.testing.assert_array_equal(keys, fresh[name][0])
        assert weights.tobytes() == fresh[name][1].tobytes(), name


def test_cluster_export_equals_the_embedded_export(cluster, tmp_path):
    addresses, export_dir = cluster
    ps = sc.connect(addresses, timeout=60)
    remote = sc.EmbeddingCollection(tables("same"), seed=9, server=ps)
    local = sc.EmbeddingCollection(tables("same"), seed=9)
    for seed in range(4):
        _step(remote, np.random.default_rng(seed))
        _step(local, np.random.default_rng(seed))
    v = remote.export_full("same")
    assert local.export_full(tmp_path) == v
    got = _rows(sc.read_export(export_dir / "same" / f"full-{v:020d}"))
    want = _rows(sc.read_export(tmp_path / f"full-{v:020d}"))
    for name in local.names:
        np.testing.assert_array_equal(got[name][0], want[name][0])
        assert got[name][1].tobytes() == want[name][1].tobytes()


def test_cluster_exports_are_confined_and_refused_without_a_directory(cluster):
    addresses, _ = cluster
    ps = sc.connect(addresses, timeout=60)
    ps.create_table("confined", sc.TableConfig(dim=2), seed=1)
    with pytest.raises(ValueError, match="plain name"):
        ps.export_full("../escape", version=0)
    with pytest.raises(ValueError, match="since"):
        ps.export_delta("s", since=5, version=2)
    with sc.Server() as embedded:
        client = embedded.client()
        client.create_table("a", sc.TableConfig(dim=2), seed=1)
        with pytest.raises(ValueError, match="--export-dir"):
            client.export_full("s", version=0)
