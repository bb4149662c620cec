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
                got_rows = cluster.lookup(name, ID_POOL)
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
    cluster.lookup("counted", ids, insert=True)
    cluster.push("counted", ids, np.ones((ids.size, DIM), np.float32))
    after = counts()
    assert [(p1 - p0, q1 - q0) for (p0, q0), (p1, q1) in zip(before, after)] == [(1, 1)] * len(before)
    # An empty push still reaches every shard (the table's step advances alike everywhere).
    cluster.push("counted", ids[:0], np.zeros((0, DIM), np.float32))
    assert [q for _, q in counts()] == [q + 1 for _, q in after]


def test_a_training_step_of_every_table_is_one_pull_and_one_push_per_shard(servers):
    """However many tables a collection has, a step sends each server shard one pull (its forward)
    and one push (its backward): all tables ride in the same request."""
    tables = {f"{len(servers)}-step-{name}": sc.TableConfig(dim=DIM, optimizer=opt) for name, opt in OPTIMIZERS.items()}
    cluster = sc.connect(servers)
    coll = sc.EmbeddingCollection(tables, seed=5, server=cluster)
    rng = np.random.default_rng(7)

    def counts():
        return [(s["pull_requests"], s["push_requests"]) for s in cluster.stats()]

    steps = 4
    before = counts()
    for _ in range(steps):
        batch = {name: random_batch(rng, 64, 6, np.arange(-1000, 1000, dtype=np.int64))[:2] for name in tables}
        out = coll.forward(batch)
        coll.backward(batch, {name: np.ones_like(o) for name, o in out.items()})
    after = counts()
    assert len(tables) > 1 and len(after) == 2 * len(servers)
    assert [(p1 - p0, q1 - q0) for (p0, q0), (p1, q1) in zip(before, after)] == [(steps, steps)] * len(after)


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


def _concat_groups(parts):
    """One batch holding the bags of every part, in order (ids, offsets, weights or None)."""
    ids = np.concatenate([p[0] for p in parts])
    offsets, base = [np.zeros(1, np.int64)], 0
    for p in parts:
        offsets.append(p[1][1:] + base)
        base += p[1][-1]
    weights = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return ids, np.concatenate(offsets), weights


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_two_synchronous_workers_match_one_embedded_collection(servers, pooling):
    """Two workers in synchronous mode (``num_workers=2``), each training its own bags with
    ids the other never sees, give the rows of one embedded collection trained on both
    workers' bags together: the pooled outputs, the step and every row, bit for bit."""
    import threading

    prefix = f"sync-{len(servers)}-{pooling}-"
    opts = {k: OPTIMIZERS[k] for k in ("sgd", "adagrad", "adam_global_step", "ftrl")}
    tables = {prefix + name: sc.TableConfig(dim=DIM, optimizer=opt, pooling=pooling) for name, opt in opts.items()}
    embedded = sc.EmbeddingCollection(tables, seed=5)
    workers = [sc.EmbeddingCollection(tables, seed=5, server=sc.connect(servers, worker=w, num_workers=2, timeout=60))
               for w in range(2)]
    pools = [ID_POOL[ID_POOL >= 0], ID_POOL[ID_POOL < 0]]  # disjoint: no row is summed across workers
    rng = np.random.default_rng(17 + len(servers))
    for step in range(8):
        parts = {name: [random_batch(rng, 6, 5, pools[w], weighted=True) for w in range(2)] for name in tables}
        outs = [workers[w].forward({n: parts[n][w] for n in tables}) for w in range(2)]
        want = embedded.forward({n: _concat_groups(parts[n]) for n in tables})
        grads = [{}, {}]
        full = {}
        for name in tables:
            pieces = []
            for w in range(2):
                out = outs[w][name][0] if pooling == "none" else outs[w][name]
                grads[w][name] = rng.standard_normal(out.shape).astype(np.float32)
                piece = grads[w][name]
                if pooling == "none":  # the embedded batch pads to the longest bag of both
                    width = (want[name][0].shape[1])
                    piece = np.pad(piece, ((0, 0), (0, width - piece.shape[1]), (0, 0)))
                    np.testing.assert_array_equal(out, want[name][0][w * 6:(w + 1) * 6, :out.shape[1]])
                else:
                    np.testing.assert_array_equal(out, want[name][w * 6:(w + 1) * 6])
                pieces.append(piece)
            full[name] = np.concatenate(pieces)
        results = [None, None]

        def push(w):
            results[w] = workers[w].backward({n: parts[n][w] for n in tables}, grads[w])

        threads = [threading.Thread(target=push, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [step + 1, step + 1]
        embedded.backward({n: _concat_groups(parts[n]) for n in tables}, full)
    for name in tables:
        np.testing.assert_array_equal(workers[0].lookup(name, ID_POOL), embedded.lookup(name, ID_POOL), err_msg=name)
