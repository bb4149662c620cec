"""Batch helpers: expansion of compressed batches, slicing, concatenation, rebatching, dedup."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore.data as scd


def random_bags(rng, bags: int, weighted: bool):
    lengths = rng.integers(0, 5, bags)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(-(2**63), 2**63 - 1, offsets[-1], dtype=np.int64)
    return (ids, offsets, rng.normal(size=offsets[-1]).astype(np.float32)) if weighted else (ids, offsets)


def random_compressed(rng, views: int, per_view_max: int = 4) -> scd.Batch:
    sample_group = np.repeat(np.arange(views), rng.integers(1, per_view_max + 1, views)).astype(np.int64)
    b = len(sample_group)
    return scd.Batch(sparse={"user": random_bags(rng, views, True), "ad": random_bags(rng, b, False),
                             "ctx": random_bags(rng, views, False)},
                     labels=rng.integers(0, 2, b).astype(np.float32), sample_group=sample_group,
                     shared=frozenset({"user", "ctx"}), num_samples=b)


def test_expand_matches_per_sample_reference():
    rng = np.random.default_rng()
    c = random_compressed(rng, 30)
    e = c.expand()
    assert not e.compressed and e.shared == frozenset()
    for name in ("user", "ctx"):
        ids, offsets, *w = c.sparse[name]
        eids, eoff, *ew = e.sparse[name]
        assert len(eoff) == c.num_samples + 1
        for i, v in enumerate(c.sample_group):
            np.testing.assert_array_equal(eids[eoff[i]:eoff[i + 1]], ids[offsets[v]:offsets[v + 1]])
            for a, b in zip(ew, w):
                np.testing.assert_array_equal(a[eoff[i]:eoff[i + 1]], b[offsets[v]:offsets[v + 1]])
    assert e.sparse["ad"] is c.sparse["ad"]


def test_slice_concat_and_rebatch_round_trip():
    rng = np.random.default_rng()
    whole = random_compressed(rng, 40).expand()
    cuts = np.sort(rng.choice(np.arange(1, whole.num_samples), 4, replace=False))
    pieces = [whole.slice(a, b) for a, b in zip([0, *cuts], [*cuts, whole.num_samples])]
    back = scd.concat_batches(pieces)
    for name in whole.sparse:
        for x, y in zip(whole.sparse[name], back.sparse[name]):
            np.testing.assert_array_equal(x, y)
    sizes = [b.num_samples for b in scd.rebatch(pieces, 7)]
    assert sum(sizes) == whole.num_samples and all(s == 7 for s in sizes[:-1]) and 0 < sizes[-1] <= 7
    again = scd.concat_batches(scd.rebatch(pieces, 7))
    np.testing.assert_array_equal(again.labels, whole.labels)
    np.testing.assert_array_equal(again.sparse["user"][0], whole.sparse["user"][0])


def test_slice_rejects_compressed_and_bad_ranges():
    rng = np.random.default_rng()
    c = random_compressed(rng, 3)
    with pytest.raises(ValueError, match="expand"):
        c.slice(0, 1)
    with pytest.raises(ValueError, match="outside"):
        c.expand().slice(2, c.num_samples + 1)


@pytest.mark.parametrize("n, high", [(0, 1), (1, 1), (1000, 50), (100000, 2**63 - 1)])
def test_dedup_ids_matches_numpy(n, high):
    rng = np.random.default_rng()
    ids = rng.integers(-high, high, n, dtype=np.int64)
    if n:
        ids[0] = np.iinfo(np.int64).min  # any value is a legal id
        ids[-1] = -1
    unique, inverse = scd.dedup_ids(ids)
    np.testing.assert_array_equal(unique[inverse], ids)
    assert len(unique) == len(np.unique(ids))
    _, first = np.unique(ids, return_index=True)
    np.testing.assert_array_equal(unique, ids[np.sort(first)])


def test_dedup_ids_requires_int64():
    with pytest.raises(TypeError, match="int64"):
        scd.dedup_ids(np.arange(3, dtype=np.int32))


def test_batches_feed_the_embedding_collection():
    import sparsecore as sc

    data = scd.SyntheticData(scd.SyntheticConfig.w2(vocab_size=1000, samples_per_view=4), compressed=True)
    batch = data.next_batch(64)
    emb = sc.EmbeddingCollection({n: sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1)) for n in data.group_names}, seed=3)
    plain = batch.expand()
    out = emb.forward(plain.sparse)
    assert set(out) == set(data.group_names) and all(v.shape == (64, 3) for v in out.values())
    # a shared group pooled once per page view, then taken per sample, equals the expanded pooling
    per_view = emb.forward({"f0": batch.sparse["f0"]})["f0"]
    np.testing.assert_array_equal(per_view[batch.sample_group], out["f0"])
