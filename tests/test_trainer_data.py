"""In-memory data for the Trainer (arrays, DataFrames, lists of batches; epochs and seeded
shuffling) and the vectorised feature hashing of sparsecore.data."""

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.data import ArrayData, BatchList, as_source, feature_id, hash_feature_bags, hash_features


# ------------------------------------------------------------------------------ hashing
@pytest.mark.parametrize("values", [
    ["a", "bb", "", "héllo wörld", "x" * 40, "12345678", "123456789"],
    [b"\x01\x02", b"", b"abcdefgh", b"\xff" * 17],
    [0, 1, -1, 2**62, -(2**63), 10**12],
])
def test_hash_features_equals_feature_id_elementwise(values):
    got = hash_features("feat", np.array(values) if not isinstance(values[0], bytes) else values)
    want = [feature_id("feat", v if isinstance(v, (str, bytes)) else str(v)) for v in values]
    assert got.dtype == np.int64
    assert got.tolist() == want


def test_hash_features_of_object_values_and_random_strings(rng):
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789é"), size=rng.integers(0, 30)))
             for _ in range(500)]
    mixed = np.array(words + [7, b"raw"], dtype=object)
    want = [feature_id("w", w) for w in words] + [feature_id("w", "7"), feature_id("w", b"raw")]
    assert hash_features("w", mixed).tolist() == want


def test_hash_features_depends_on_the_feature_name():
    assert hash_features("a", np.array(["x"]))[0] != hash_features("b", np.array(["x"]))[0]


@pytest.mark.parametrize("values, error", [
    (np.array([1.5, 2.0]), TypeError),
    (np.array([True, False]), TypeError),
    (np.array([["a"]]), ValueError),
    (np.array(["a", None], dtype=object), ValueError),
    (np.array([1.5], dtype=object), TypeError),
])
def test_hash_features_refuses_what_has_no_text(values, error):
    with pytest.raises(error):
        hash_features("f", values)


def test_hash_feature_bags_gives_missing_values_empty_bags():
    ids, offsets = hash_feature_bags("f", np.array(["a", None, "", float("nan"), "b"], dtype=object))
    assert offsets.tolist() == [0, 1, 1, 1, 1, 2]
    assert ids.tolist() == [feature_id("f", "a"), feature_id("f", "b")]


# ------------------------------------------------------------------------------ ArrayData
def features(n=10):
    return {"user": np.arange(n) * 10, "pair": np.arange(2 * n).reshape(n, 2),
            "bag": (np.arange(n * (n - 1) // 2), np.concatenate([[0], np.cumsum(np.arange(n))]))}


def test_array_data_batches_every_column_form():
    src = ArrayData(features(), np.arange(10, dtype=np.float32), batch_size=4)
    batches = list(src)
    assert [b.num_samples for b in batches] == [4, 4, 2]
    b = batches[1]  # samples 4..7
    assert b.sparse["user"][0].tolist() == [40, 50, 60, 70] and b.sparse["user"][1].tolist() == [0, 1, 2, 3, 4]
    assert b.sparse["pair"][0].tolist() == list(range(8, 16)) and b.sparse["pair"][1].tolist() == [0, 2, 4, 6, 8]
    assert b.sparse["bag"][1].tolist() == [0, 4, 9, 15, 22]
    assert b.sparse["bag"][0].tolist() == list(range(6, 28))
    assert b.labels.tolist() == [4, 5, 6, 7]


def test_epochs_and_seeded_shuffle():
    def order(seed):
        src = ArrayData({"u": np.arange(10)}, np.zeros(10), batch_size=3, epochs=2, shuffle=True, seed=seed)
        return [b.sparse["u"][0].tolist() for b in src]

    first = order(1)
    flat = sum(first, [])
    assert len(flat) == 20
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))  # each epoch whole
    assert flat[:10] != list(range(10)) and flat[:10] != flat[10:]  # shuffled, a new order per epoch
    assert order(1) == first  # seeded
    assert order(2) != first


def test_array_data_resumes_from_its_state():
    def make():
        return ArrayData({"u": np.arange(10)}, np.zeros(10), batch_size=3, epochs=2, shuffle=True, seed=5)

    src = make()
    for _ in range(5):  # into the second epoch
        src.next_batch()
    state = src.state_dict()
    rest = [b.sparse["u"][0].tolist() for b in src]
    other = make()
    other.load_state_dict(state)
    assert [b.sparse["u"][0].tolist() for b in other] == rest


@pytest.mark.parametrize("kwargs, error, match", [
    ({"features": {"a": np.arange(3), "b": np.arange(4)}}, ValueError, "different numbers of samples"),
    ({"features": {"a": np.arange(3)}, "labels": np.zeros(2)}, ValueError, "labels"),
    ({"features": {"a": np.arange(3.0)}}, TypeError, "dtype"),
    ({"features": {"a": (np.arange(3), np.array([0, 1, 5]))}}, ValueError, "offsets"),
    ({"features": {"a": np.arange(3)}, "batch_size": 0}, ValueError, "batch_size"),
    ({"features": {"a": np.arange(3)}, "epochs": 0}, ValueError, "epochs"),
    ({"features": {}}, TypeError, "non-empty"),
])
def test_array_data_refuses_inconsistent_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArrayData(**kwargs)


def test_state_of_another_source_is_refused():
    src = ArrayData({"a": np.arange(3)}, batch_size=2)
    with pytest.raises(ValueError):
        src.load_state_dict(ArrayData({"a": np.arange(4)}, batch_size=2).state_dict())


def test_batch_list_epochs_and_shuffle():
    batches = [({"a": (np.array([i]), np.array([0, 1]))}, np.array([1.0])) for i in range(6)]
    src = BatchList(batches, epochs=3, shuffle=True, seed=3)
    seen = [int(b.sparse["a"][0][0]) for b in src]
    assert len(seen) == 18 and sorted(seen[:6]) == list(range(6))
    assert seen[:6] != seen[6:12] or seen[6:12] != seen[12:]
    with pytest.raises(TypeError, match="batch 0"):
        BatchList([42])


def test_a_reader_is_kept_and_refuses_epochs():
    reader = sc.data.SyntheticData(sc.data.SyntheticConfig.w2(num_groups=2, num_user_groups=1, batch_size=8), num_samples=16)
    assert as_source(reader) is reader
    for kwargs in ({"epochs": 2}, {"shuffle": True}, {"batch_size": 4}):
        with pytest.raises(ValueError, match="apply to in-memory data"):
            as_source(reader, **kwargs)
    with pytest.raises(TypeError, match="cannot train on"):
        as_source(42)


def test_dataframe_columns_are_groups_and_strings_are_hashed():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": [3, 4, 5], "city": ["paris", None, "oslo"], "price": [1.0, 2.0, 3.0],
                       "click": [1, 0, 1]})
    src = ArrayData(df, batch_size=8, dense=["price"], label="click")
    (b,) = list(src)
    assert set(b.sparse) == {"user", "city"}
    assert b.sparse["user"][0].tolist() == [3, 4, 5]
    assert b.sparse["city"][0].tolist() == [feature_id("city", "paris"), feature_id("city", "oslo")]
    assert b.sparse["city"][1].tolist() == [0, 1, 1, 2]
    assert b.labels.tolist() == [1, 0, 1] and b.dense.tolist() == [[1.0], [2.0], [3.0]]
    with pytest.raises(ValueError, match="label column"):
        ArrayData(df)


# ------------------------------------------------------------------------------ the Trainer
torch = pytest.importorskip("torch")


def planted(n, seed=0):
    weights = np.random.default_rng(99)
    w_user, w_item = weights.normal(0, 1.5, 200), weights.normal(0, 1.5, 50)
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 200, n), rng.integers(0, 50, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(w_user[user] + w_item[item])))).astype(np.float32)
    return {"user": user, "item": item.astype(np.int32)}, labels


def make_trainer(data, **kw):
    from sparsecore.torch import mlp

    torch.manual_seed(0)
    tables = {"user": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
              "item": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1))}
    return sc.Trainer(data, mlp(8, [8]), tables, progress=False, log_every=0, **kw)


def test_trainer_fits_arrays_for_epochs_and_learns():
    feats, labels = planted(6000)
    trainer = make_trainer((feats, labels), batch_size=500, epochs=3, shuffle=True, seed=1)
    result = trainer.fit()
    assert (result.steps, result.samples) == (36, 18000)
    m = trainer.evaluate(planted(3000, seed=7))
    assert m["samples"] == 3000 and m["auc"] > 0.6


def test_trainer_shuffle_is_seeded():
    feats, labels = planted(2000)

    def final_rows(seed):
        trainer = make_trainer((feats, labels), batch_size=200, epochs=2, shuffle=True, seed=seed,
                               deterministic=False)
        trainer.fit()
        return trainer.embedding.collection.lookup("user", np.arange(5))

    np.testing.assert_array_equal(final_rows(3), final_rows(3))


def test_trainer_fits_a_list_of_batches():
    feats, labels = planted(400)
    batches = [({g: (v[i:i + 100].astype(np.int64), np.arange(101)) for g, v in feats.items()}, labels[i:i + 100])
               for i in range(0, 400, 100)]
    result = make_trainer(batches, epochs=2).fit()
    assert (result.steps, result.samples) == (8, 800)


def test_trainer_fits_a_dataframe():
    pd = pytest.importorskip("pandas")
    feats, labels = planted(1000)
    df = pd.DataFrame({**feats, "clicked": labels})
    result = make_trainer(df, label="clicked", batch_size=250).fit()
    assert (result.steps, result.samples) == (4, 1000)


def test_trainer_names_a_missing_group_of_in_memory_data():
    feats, labels = planted(100)
    del feats["item"]
    with pytest.raises(ValueError, match="unknown columns"):
        make_trainer((feats, labels), batch_size=50).fit()


def test_trainer_on_arrays_evaluates_a_reader_too():
    feats, labels = planted(400)
    trainer = make_trainer((feats, labels), batch_size=100)
    trainer.fit()
    reader = sc.data.BatchList([({g: (v[:50].astype(np.int64), np.arange(51)) for g, v in feats.items()}, labels[:50])])
    assert trainer.evaluate(reader)["samples"] == 50
