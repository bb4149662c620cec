"""The synthetic generator: determinism, the planted model and optimum, Zipf ids, sample
compression."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import sparsecore.data as scd


def small_config(**kw) -> scd.SyntheticConfig:
    base = dict(num_groups=5, vocab_size=1000, min_bag=0, max_bag=6, seed=int(np.random.default_rng().integers(1 << 62)),
                weight_std=0.3, batch_size=300)
    return scd.SyntheticConfig(**{**base, **kw})


def assert_same_sparse(a: scd.Batch, b: scd.Batch) -> None:
    assert list(a.sparse) == list(b.sparse)
    for name in a.sparse:
        for x, y in zip(a.sparse[name], b.sparse[name]):
            np.testing.assert_array_equal(x, y)


def test_same_seed_same_stream_for_any_batch_size():
    cfg = small_config()
    a = scd.concat_batches(scd.SyntheticData(cfg, num_samples=1000))
    sizes = scd.SyntheticData(cfg, num_samples=1000)
    parts = []
    rng = np.random.default_rng()
    while (b := sizes.next_batch(int(rng.integers(1, 250)))) is not None:
        parts.append(b)
    b = scd.concat_batches(parts)
    assert a.num_samples == b.num_samples == 1000
    assert_same_sparse(a, b)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_other_seed_other_stream():
    a = scd.SyntheticData(small_config(seed=1)).next_batch()
    b = scd.SyntheticData(small_config(seed=2)).next_batch()
    assert not np.array_equal(a.sparse["f0"][0], b.sparse["f0"][0])


def test_bags_ids_and_labels_are_in_range():
    cfg = small_config(min_bag=2, max_bag=4)
    b = scd.SyntheticData(cfg).next_batch(2000)
    for ids, offsets in b.sparse.values():
        lengths = np.diff(offsets)
        assert lengths.min() >= 2 and lengths.max() <= 4 and offsets[0] == 0
        assert set(np.unique(lengths)) == {2, 3, 4}
        assert ids.min() >= 0 and ids.max() < cfg.vocab_size
    assert set(np.unique(b.labels)) <= {0.0, 1.0}
    assert b.labels.dtype == np.float32 and b.sparse["f0"][0].dtype == np.int64


def test_planted_probabilities_follow_the_logistic_model():
    data = scd.SyntheticData(small_config())
    b = data.next_batch(400)
    logits = np.full(b.num_samples, data.config.bias)
    for g, name in enumerate(data.group_names):
        ids, offsets = b.sparse[name]
        for i in range(b.num_samples):
            logits[i] += sum(data.planted_weight(g, int(x)) for x in ids[offsets[i]:offsets[i + 1]])
    np.testing.assert_allclose(b.probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-12)
    np.testing.assert_array_equal(data.true_probabilities(b), b.probabilities)


def test_labels_are_bernoulli_of_the_planted_probability():
    b = scd.SyntheticData(small_config()).next_batch(40000)
    # calibration: within probability deciles, the click rate matches the mean probability
    edges = np.quantile(b.probabilities, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, b.probabilities, side="right") - 1, 0, 9)
    for d in range(10):
        sel = which == d
        p = b.probabilities[sel].mean()
        assert abs(b.labels[sel].mean() - p) < 5 * np.sqrt(p * (1 - p) / sel.sum()) + 1e-3


def test_planted_auc_matches_sklearn_on_true_probabilities():
    data = scd.SyntheticData(scd.SyntheticConfig.w2(vocab_size=50_000, seed=int(np.random.default_rng().integers(1000))),
                             num_samples=12000)
    batches = list(data)
    y = np.concatenate([b.labels for b in batches])
    p = np.concatenate([b.probabilities for b in batches])
    assert data.planted_auc(batches) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert 0.65 < data.planted_auc(batches) < 0.95  # a learnable but noisy CTR task


def test_ids_follow_zipf_over_a_permutation():
    cfg = small_config(vocab_size=200, zipf_exponent=1.1, min_bag=10, max_bag=10)
    data = scd.SyntheticData(cfg)
    ids = np.concatenate([b.sparse[n][0] for b in [data.next_batch(5000)] for n in data.group_names])
    # rank -> id is a bijection of [0, vocab)
    rank_ids = [data._gen.rank_to_id(k) for k in range(1, 201)]
    assert sorted(rank_ids) == list(range(200))
    counts = np.bincount(ids, minlength=200)[rank_ids]  # by rank
    expected = np.arange(1, 201) ** -1.1
    expected = expected / expected.sum() * len(ids)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 200 + 6 * np.sqrt(2 * 200)  # 199 degrees of freedom, far in the tail otherwise


def test_w1_and_w2_presets():
    w1, w2 = scd.SyntheticConfig.w1(), scd.SyntheticConfig.w2()
    assert (w1.num_groups, w1.vocab_size, w1.min_bag, w1.max_bag, w1.batch_size, w1.permutation_seed) == \
        (26, 1_000_000, 1, 20, 4096, 1234)
    assert (w2.num_groups, w2.batch_size) == (23, 5000)
    b = scd.SyntheticData(w2).next_batch()
    assert b.num_samples == 5000 and len(b.sparse) == 23


def test_drift_replaces_each_rank_id_once_per_period():
    period, vocab = int(np.random.default_rng().integers(2, 60)), 300
    gen = scd.SyntheticData(small_config(vocab_size=vocab, drift_period=period))._gen
    s0 = int(np.random.default_rng().integers(1 << 30))
    table = np.array([[gen.id_at(k, s) for k in range(1, vocab + 1)] for s in range(s0, s0 + 2 * period + 1)])
    assert (table >= 0).all()
    for row in table:
        assert len(set(row.tolist())) == vocab  # the ids in use at one sample are distinct
    changes = (table[1:] != table[:-1])
    # every slot changes exactly once per period, to an id never used before
    assert (changes[:period].sum(axis=0) == 1).all() and (changes[period:2 * period].sum(axis=0) == 1).all()
    assert len(set(table.ravel().tolist())) == 3 * vocab
    # the changes are staggered over the period, not all at once
    assert changes.sum(axis=1).max() < vocab


def test_a_drifting_stream_draws_each_batch_from_the_ids_in_use():
    period, vocab = 400, 50
    cfg = small_config(vocab_size=vocab, drift_period=period, batch_size=1, num_user_groups=2, samples_per_view=4)
    data = scd.SyntheticData(cfg, num_samples=period * 3)
    seen: set[int] = set()
    for s, batch in enumerate(data):
        allowed = {data._gen.id_at(k, s - s % 4) for k in range(1, vocab + 1)} | \
            {data._gen.id_at(k, s) for k in range(1, vocab + 1)}
        ids = set(np.concatenate([batch.sparse[n][0] for n in data.group_names]).tolist())
        assert ids <= allowed
        seen |= ids
    assert len(seen) > 2 * vocab  # new ids keep appearing
    # compressed and plain batches still carry the same samples
    cfg = dataclasses.replace(cfg, batch_size=period)
    comp = scd.SyntheticData(cfg, compressed=True, num_samples=period * 3)
    for c, p in zip(comp, scd.SyntheticData(cfg, num_samples=period * 3)):
        assert_same_sparse(c.expand(), p)
        np.testing.assert_array_equal(c.labels, p.labels)


def test_no_drift_is_the_stationary_stream():
    cfg = small_config()
    a = scd.SyntheticData(cfg).next_batch()
    b = scd.SyntheticData(dataclasses.replace(cfg, drift_period=0)).next_batch()
    assert_same_sparse(a, b)
    gen = scd.SyntheticData(cfg)._gen
    assert all(gen.id_at(k, 10**9) == gen.rank_to_id(k) for k in range(1, 50))


@pytest.mark.parametrize("ratio", [2, 4, 57])
def test_compressed_batches_expand_to_the_uncompressed_stream(ratio):
    cfg = small_config(num_user_groups=2, samples_per_view=ratio)
    comp = scd.SyntheticData(cfg, compressed=True, num_samples=700)
    plain = scd.SyntheticData(cfg, num_samples=700)
    for c, p in zip(comp, plain):
        assert c.compressed and not p.compressed
        assert c.shared == {"f0", "f1"}
        assert c.num_views == len(c.sparse["f0"][1]) - 1 < c.num_samples or c.num_samples == 1
        np.testing.assert_array_equal(c.users, p.users)
        np.testing.assert_array_equal(c.sample_group, c.users - c.users[0])
        assert_same_sparse(c.expand(), p)
        np.testing.assert_array_equal(c.labels, p.labels)
        np.testing.assert_array_equal(c.probabilities, p.probabilities)
        np.testing.assert_array_equal(comp.true_probabilities(c), c.probabilities)


def test_users_share_user_features_within_a_page_view():
    cfg = small_config(num_user_groups=2, samples_per_view=4)
    b = scd.SyntheticData(cfg).next_batch(40)
    for name in ("f0", "f1"):
        ids, off = b.sparse[name]
        bags = [tuple(ids[off[i]:off[i + 1]]) for i in range(40)]
        for v in range(10):
            assert len(set(bags[4 * v:4 * v + 4])) == 1


def test_state_dict_resumes_the_stream():
    cfg = small_config()
    a = scd.SyntheticData(cfg)
    a.next_batch(123)
    state = a.state_dict()
    expected = a.next_batch(77)
    b = scd.SyntheticData(cfg)
    b.load_state_dict(state)
    assert_same_sparse(b.next_batch(77), expected)
    with pytest.raises(ValueError, match="another config"):
        scd.SyntheticData(small_config(seed=cfg.seed + 1)).load_state_dict(state)


@pytest.mark.parametrize("kw, match", [
    (dict(num_groups=0), "group_names"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(min_bag=3, max_bag=2), "min_bag"),
    (dict(zipf_exponent=0.0), "zipf_exponent"),
    (dict(weight_std=-1.0), "weight_std"),
    (dict(num_user_groups=9), "num_user_groups"),
    (dict(samples_per_view=0), "samples_per_view"),
    (dict(drift_period=-1), "drift_period"),
])
def test_bad_config_raises_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        scd.SyntheticData(small_config(**kw))
