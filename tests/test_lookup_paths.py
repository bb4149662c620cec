"""The lookup paths of a forward give the same bits: evaluation pools straight from the ids
(hashed probes pipelined ahead of the pooling, or rows by index), the training forward pools
the rows its plan resolved (dedup by shard, rows prefetched ahead). Checked with bags longer
than every prefetch distance, ids of every shard, duplicates, unknown ids, the key equal to the
hash index's empty marker and tables that grow while a batch is planned."""

import numpy as np
import pytest

import sparsecore as sc
from reference import EXTREME_IDS, assert_pooled

EMPTY_MARKER = -(2**63)  # the hash index's empty-slot key: held out of band, still a legal id
MASK = (1 << 64) - 1


def fmix64(key: int) -> int:
    k = key & MASK
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK
    k ^= k >> 33
    return k


def make(shard_bits, dim=16, pooling="sum", **size):
    return sc.EmbeddingCollection(
        {"t": sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1), init=sc.Normal(0.5), pooling=pooling,
                             shard_bits=shard_bits, **size)}, seed=3)


def long_bags(rng, id_pool, batch_size=40, max_len=120):
    """Bags of 0 to max_len ids (most longer than the prefetch distances), ids with repeats."""
    lengths = rng.integers(0, max_len + 1, size=batch_size)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.choice(id_pool, size=int(offsets[-1])).astype(np.int64), offsets


@pytest.mark.parametrize("shard_bits", [0, 3, 6])
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_evaluate_equals_the_planned_forward_bit_for_bit_across_shards(rng, shard_bits, pooling):
    emb = make(shard_bits, pooling=pooling)
    pool_ids = np.concatenate([EXTREME_IDS, rng.integers(-2**63, 2**63 - 1, size=3000, dtype=np.int64)])
    known = pool_ids[rng.random(len(pool_ids)) < 0.7]
    known = np.union1d(known, [EMPTY_MARKER])
    emb.lookup("t", known, insert=True)
    ids, offsets = long_bags(rng, pool_ids)
    ids[::97] = EMPTY_MARKER  # repeated, in several bags
    direct = emb.evaluate({"t": (ids, offsets)})["t"]
    planned = emb.forward(emb.prepare({"t": (ids, offsets)}, train=False))["t"]
    if pooling == "none":
        np.testing.assert_array_equal(direct[0], planned[0])
        np.testing.assert_array_equal(direct[1], planned[1])
    else:
        np.testing.assert_array_equal(direct, planned)
    rows = emb.lookup("t", ids)
    assert not rows[~np.isin(ids, known)].any()  # unknown ids read as zeros
    assert rows[ids == EMPTY_MARKER].any()  # the out-of-band key has its own row
    assert_pooled(direct, rows, offsets, None, pooling)


@pytest.mark.parametrize("shard_bits", [0, 2, 5])
def test_training_plan_keeps_first_occurrence_order_within_each_shard(rng, shard_bits):
    emb = make(shard_bits)
    pool_ids = np.concatenate([EXTREME_IDS, rng.integers(-2**63, 2**63 - 1, size=500, dtype=np.int64)])
    ids, offsets = long_bags(rng, pool_ids)
    prepared = emb.prepare({"t": (ids, offsets)}, train=True)
    shard = {}
    expected = []
    for key in ids.tolist():
        if key not in shard:
            shard[key] = fmix64(key) >> (64 - shard_bits) if shard_bits else 0
            expected.append(key)
    expected.sort(key=lambda k: shard[k])  # stable: first occurrence order inside a shard
    np.testing.assert_array_equal(prepared.unique_ids("t"), np.array(expected, dtype=np.int64))


@pytest.mark.parametrize("shard_bits", [0, 4])
def test_forward_paths_of_hashed_and_known_size_tables_agree_while_tables_grow(rng, shard_bits):
    n = 5000
    hashed = make(shard_bits)
    known = make(shard_bits, num_embeddings=n)
    for step in range(4):  # every batch inserts new ids, so the hash index grows during planning
        ids, offsets = long_bags(rng, np.arange(min(n, 800 * (step + 1)), dtype=np.int64))
        batch = {"t": (ids, offsets)}
        outs = [emb.forward(batch, train=True)["t"] for emb in (hashed, known)]
        np.testing.assert_array_equal(outs[0], outs[1])
        evals = [emb.evaluate(batch)["t"] for emb in (hashed, known)]
        np.testing.assert_array_equal(evals[0], evals[1])
        np.testing.assert_array_equal(evals[0], outs[0])
        grads = rng.standard_normal(outs[0].shape).astype(np.float32)
        for emb in (hashed, known):
            emb.backward(emb.prepare(batch, train=True), {"t": grads})
    probe = np.arange(n, dtype=np.int64)
    np.testing.assert_array_equal(hashed.lookup("t", probe), known.lookup("t", probe))
