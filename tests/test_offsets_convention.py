"""Offsets: the CSR form (B+1) and torch's EmbeddingBag start offsets (B) give the same bags;
dtype conversions are the documented ones."""

import numpy as np
import pytest

import sparsecore as sc


def collection(pooling="sum"):
    return sc.EmbeddingCollection({"a": sc.TableConfig(dim=3, pooling=pooling, init=sc.Normal(0.1))}, seed=2)


IDS = np.array([5, 6, 7, 8, 9], dtype=np.int64)
CSR = np.array([0, 2, 2, 5], dtype=np.int64)  # bags [5, 6], [], [7, 8, 9]


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_start_offsets_of_length_b_give_the_csr_result(pooling):
    emb = collection(pooling)
    want = emb.forward({"a": (IDS, CSR)}, train=False)["a"]
    got = emb.forward({"a": (IDS, CSR[:-1])}, train=False)["a"]
    for w, g in zip(*(x if isinstance(x, tuple) else (x,) for x in (want, got))):
        np.testing.assert_array_equal(w, g)


def test_start_offsets_in_training_update_the_same_rows():
    a, b = collection(), collection()
    grads = {"a": np.ones((3, 3), np.float32)}
    a.backward({"a": (IDS, CSR)}, grads)
    b.backward({"a": (IDS, CSR[:-1])}, grads)
    np.testing.assert_array_equal(a.lookup("a", IDS), b.lookup("a", IDS))


def test_torch_start_offsets_match_torch_embedding_bag():
    torch = pytest.importorskip("torch")
    emb = collection()
    ids, starts = torch.tensor(IDS), torch.tensor(CSR[:-1])
    weight = torch.from_numpy(emb.lookup("a", np.arange(10), insert=True))
    want = torch.nn.functional.embedding_bag(ids, weight, starts, mode="sum")
    got = emb.forward({"a": (ids, starts)}, train=False)["a"]
    torch.testing.assert_close(got, want)


def test_explicit_keyword_resolves_an_empty_last_bag():
    emb = collection()
    starts = np.array([0, 2, 5], dtype=np.int64)  # torch: three bags, the last one empty
    assert emb.forward({"a": (IDS, starts)}, train=False)["a"].shape == (2, 3)  # read as CSR
    out = emb.forward({"a": (IDS, starts)}, train=False, include_last_offset=False)["a"]
    assert out.shape == (3, 3) and not out[2].any()


def test_include_last_offset_true_requires_csr_and_names_both_conventions():
    emb = collection()
    with pytest.raises(ValueError, match=r"must equal the number of ids \(5\) for CSR offsets \(B\+1 entries\)"
                                         r".*start offsets.*append len\(ids\)"):
        emb.forward({"a": (IDS, CSR[:-1])}, include_last_offset=True)
    assert emb.table_size("a") == 0


def test_offsets_past_the_ids_name_the_conventions():
    emb = collection()
    with pytest.raises(ValueError, match="group 'a': the last offset, 7, must equal the number of ids \\(5\\)"):
        emb.forward({"a": (IDS, [0, 7])})
    with pytest.raises(TypeError, match="include_last_offset"):
        emb.forward({"a": (IDS, CSR)}, include_last_offset="yes")


@pytest.mark.parametrize("ids", [IDS.astype(np.int32), IDS.astype(np.uint64), IDS.tolist(), tuple(IDS.tolist())])
def test_integer_ids_of_any_dtype_and_lists_are_converted(ids):
    emb = collection()
    want = emb.forward({"a": (IDS, CSR)}, train=False)["a"]
    np.testing.assert_array_equal(emb.forward({"a": (ids, CSR.astype(np.int32))}, train=False)["a"], want)


def test_uint64_ids_keep_their_bits():
    emb = collection()
    big = np.array([2**64 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(emb.lookup("a", big, insert=True), emb.lookup("a", np.array([-1])))


@pytest.mark.parametrize("ids", [IDS.astype(np.float64), np.array(["5", "6", "7", "8", "9"]), [5.0, 6.0, 7.0, 8.0, 9.0]])
def test_non_integer_ids_raise_type_error(ids):
    with pytest.raises(TypeError, match="integer"):
        collection().forward({"a": (ids, CSR)})


def test_weights_and_gradients_must_be_float32():
    emb = collection()
    with pytest.raises(TypeError, match="float32"):
        emb.forward({"a": (IDS, CSR, np.ones(5))})
    with pytest.raises(TypeError, match="float32"):
        emb.backward({"a": (IDS, CSR)}, {"a": np.ones((3, 3))})


def test_offsets_ending_before_the_ids_are_start_offsets_not_an_error():
    # [0, 2, 2] over 3 ids: CSR would need a last entry of 3; as start offsets it is three bags.
    emb = collection()
    out = emb.forward({"a": (IDS[:3], np.array([0, 2, 2]))}, train=False)["a"]
    assert out.shape == (3, 3) and not out[1].any()
