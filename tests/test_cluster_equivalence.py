"""The embedded collection and the same tables on 1 or 2 ``sparsecore server`` processes give the
same pooled outputs and rows bit for bit, step after step: every pooling mode, with and without
per-id weights, every update rule. The worker sums each row's gradient with the engine's kernel
and the servers apply it once per row, so no arithmetic differs between the two paths."""

import numpy as np
import pytest

import sparsecore as sc

from reference import OPTIMIZERS, random_batch
from test_ps import start_server_process, stop

STEPS = 50
DIM = 5
ID_POOL = np.concatenate([np.arange(-20, 60, dtype=np.int64), np.array([2**63 - 1, -(2**63)], np.int64)])


@pytest.fixture(scope="module", params=[1, 2], ids=["1-server", "2-servers"])
def servers(request):
    n = request.param
    procs = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", n) for i in range(n)]
    yield [address for _, address in procs]
    for p, _ in procs:
        stop(p)


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_cluster_matches_embedded_bit_for_bit(servers, pooling, weighted):
    prefix = f"{len(servers)}-{pooling}-{weighted}-"
    tables = {prefix + name: sc.TableConfig(dim=DIM, optimizer=opt, pooling=pooling) for name, opt in OPTIMIZERS.items()}
    embedded = sc.EmbeddingCollection(tables, seed=11)
    cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect(servers))
    rng = np.random.default_rng(len(servers) * 100 + len(pooling) * 2 + weighted)
    for step in range(STEPS):
        batch, grads = {}, {}
        for name in tables:
            ids, offsets, weights = random_batch(rng, 16, 6, ID_POOL, weighted=weighted)
            batch[name] = (ids, offsets, weights) if weighted else (ids, offsets)
        want = embedded.forward(batch)
        got = cluster.forward(batch)
        for name in tables:
            w, g = (want[name][0], got[name][0]) if pooling == "none" else (want[name], got[name])
            np.testing.assert_array_equal(g, w, err_msg=f"{name} output, step {step}")
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        assert embedded.backward(batch, grads) == cluster.backward(batch, grads) == step + 1
        if step % 10 == 9 or step == STEPS - 1:
            for name in tables:
                want_rows = embedded.lookup(name, ID_POOL)
                got_rows = cluster.cluster.pull(name, ID_POOL, train=False)
                np.testing.assert_array_equal(got_rows, want_rows, err_msg=f"{name} rows, step {step}")
    assert cluster.sizes() == embedded.sizes()


def test_a_pull_and_a_push_of_a_table_are_one_request_per_shard(servers):
    cluster = sc.connect(servers)
    cluster.create_table("counted", sc.TableConfig(dim=DIM), seed=1)
    ids = np.arange(-500, 500, dtype=np.int64)  # rows on every shard

    def counts():
        return [(s["pull_requests"], s["push_requests"]) for s in cluster.stats()]

    before = counts()
    assert len(before) == 2 * len(servers)
    cluster.pull("counted", ids)
    cluster.push("counted", ids, np.ones((ids.size, DIM), np.float32))
    after = counts()
    assert [(p1 - p0, q1 - q0) for (p0, q0), (p1, q1) in zip(before, after)] == [(1, 1)] * len(before)
    # An empty push still reaches every shard (the table's step advances alike everywhere).
    cluster.push("counted", ids[:0], np.zeros((0, DIM), np.float32))
    assert [q for _, q in counts()] == [q + 1 for _, q in after]


def test_pooled_rows_is_the_public_forward_of_both_collections(servers):
    tables = {f"pooled-{len(servers)}": sc.TableConfig(dim=DIM, pooling="mean")}
    embedded = sc.EmbeddingCollection(tables, seed=4)
    cluster = sc.EmbeddingCollection(tables, seed=4, server=sc.connect(servers))
    assert type(cluster) is type(embedded)  # one compiled collection, its rows on the servers
    ids, offsets, weights = random_batch(np.random.default_rng(5), 12, 5, ID_POOL, weighted=True)
    batch = {next(iter(tables)): (ids, offsets, weights)}
    [want] = embedded.pooled_rows(embedded.prepare(batch))
    [got] = cluster.pooled_rows(cluster.prepare(batch))
    np.testing.assert_array_equal(got, want)


def test_embedding_collection_with_a_server_is_the_cluster_collection(servers):
    tables = {f"spelled-{len(servers)}": sc.TableConfig(dim=DIM)}
    cluster = sc.connect(servers)
    with pytest.warns(DeprecationWarning, match="server=cluster"):
        old = cluster.collection(tables, seed=2)
    with pytest.warns(DeprecationWarning, match="server=cluster"):
        sc.server.ClusterCollection(cluster, tables, seed=2)
    new = sc.EmbeddingCollection(tables, 2, server=cluster)
    assert type(new) is type(old) and new.tables == old.tables
    embedded = sc.Server()
    try:
        local = sc.EmbeddingCollection(tables, 2, server=embedded)
        assert local.sizes() == {name: 0 for name in tables}
    finally:
        embedded.stop()
    with pytest.raises(TypeError, match="server"):
        sc.EmbeddingCollection(tables, 2, server="localhost:7000")
