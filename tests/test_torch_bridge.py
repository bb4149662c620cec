"""sparsecore.torch.EmbeddingBagCollection against a pure-PyTorch nn.EmbeddingBag model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.torch import EmbeddingBagCollection, mlp  # noqa: E402

from reference import assert_close_to_scale  # noqa: E402


def random_group(rng, batch, vocab, weighted):
    lengths = rng.integers(0, 6, size=batch)  # empty bags included
    offsets = np.zeros(batch + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(-vocab, vocab, size=offsets[-1]).astype(np.int64)  # duplicates, negative ids
    ids[::7] = 2**62 + ids[::7]  # huge ids
    if weighted:
        return ids, offsets, rng.uniform(0.1, 2.0, size=offsets[-1]).astype(np.float32)
    return ids, offsets


def reference_bags(ebc, name, group, mode):
    """An nn.EmbeddingBag holding the sparsecore rows of the group's unique ids."""
    ids = group[0]
    unique, inverse = np.unique(ids, return_inverse=True)
    rows = ebc.collection.lookup(name, unique, insert=True)
    bag = torch.nn.EmbeddingBag(len(unique), rows.shape[1], mode=mode)
    with torch.no_grad():
        bag.weight.copy_(torch.from_numpy(np.asarray(rows)))
    return bag, unique, torch.from_numpy(inverse.astype(np.int64))


# nn.EmbeddingBag takes per-sample weights with mode="sum" only.
@pytest.mark.parametrize("pooling,weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("dims", [(1, 3), (18, 5)])
def test_gradients_match_pure_pytorch_embedding_bag(rng, pooling, dims, weighted):
    batch, lr = 17, 0.5
    tables = {f"t{i}": sc.TableConfig(dim=d, optimizer=sc.SGD(lr=lr), init=sc.Normal(0.1), pooling=pooling)
              for i, d in enumerate(dims)}
    ebc = EmbeddingBagCollection(tables, seed=int(rng.integers(1 << 30)))
    groups = {name: random_group(rng, batch, 50, weighted) for name in tables}
    bags = {name: reference_bags(ebc, name, g, pooling) for name, g in groups.items()}
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = mlp(sum(dims), [8])
    twin = mlp(sum(dims), [8])
    twin.load_state_dict(model.state_dict())
    labels = torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32))

    pooled = ebc(groups)
    logits = model(torch.cat([pooled[n] for n in tables], 1)).reshape(-1)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()  # fused SGD update

    ref_pooled = {}
    for name, (bag, _, inverse) in bags.items():
        weights = torch.from_numpy(groups[name][2]) if weighted else None
        ref_pooled[name] = bag(inverse, torch.from_numpy(groups[name][1][:-1]), per_sample_weights=weights)
        np.testing.assert_allclose(pooled[name].detach().numpy(), ref_pooled[name].detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
    ref_logits = twin(torch.cat([ref_pooled[n] for n in tables], 1)).reshape(-1)
    torch.nn.functional.binary_cross_entropy_with_logits(ref_logits, labels).backward()

    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close_to_scale(p.grad.numpy(), q.grad.numpy(), rtol=1e-4)
    for name, (bag, unique, _) in bags.items():
        before = bag.weight.detach().numpy()
        after = np.asarray(ebc.collection.lookup(name, unique))
        expected = before - lr * bag.weight.grad.numpy()
        np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)


def test_hand_written_loop_trains_and_eval_does_not_insert(rng):
    ebc = EmbeddingBagCollection({"a": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1))}, seed=3)
    model = mlp(4, [4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    group = random_group(rng, 8, 20, False)
    for _ in range(3):
        loss = model(ebc({"a": group})["a"]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = ebc.collection.table_size("a")
    assert rows == len(np.unique(group[0]))
    ebc.eval()
    out = ebc({"a": (np.array([123456789], np.int64), np.array([0, 1], np.int64))})["a"]
    assert not out.requires_grad
    assert torch.count_nonzero(out) == 0  # unknown id reads as zeros
    assert ebc.collection.table_size("a") == rows


def test_sequence_output_carries_lengths_and_gradients(rng):
    ebc = EmbeddingBagCollection({"seq": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=1.0), pooling="none")}, seed=1)
    ids = np.array([5, 6, 7, 5], np.int64)
    offsets = np.array([0, 3, 3, 4], np.int64)
    values, lengths = ebc({"seq": (ids, offsets)})["seq"]
    assert tuple(values.shape) == (3, 3, 3) and lengths.tolist() == [3, 0, 1]
    before = np.asarray(ebc.collection.lookup("seq", np.array([5], np.int64)))
    values.sum().backward()
    after = np.asarray(ebc.collection.lookup("seq", np.array([5], np.int64)))
    np.testing.assert_allclose(after, before - 2.0, rtol=1e-6)  # id 5 appears twice


def test_forward_concat_never_overwrites_a_tensor_still_in_use(rng):
    """forward_concat reuses its output's memory only once nothing can see the previous output:
    a kept reference, a view, a NumPy array over it or autograd's saved input each keep it."""
    ebc = EmbeddingBagCollection({"a": sc.TableConfig(dim=3), "b": sc.TableConfig(dim=2)}, threads=None)
    torch.manual_seed(0)
    model = mlp(5, [4])
    batches = [{"a": random_group(rng, 9, 50, False), "b": random_group(rng, 9, 50, True)} for _ in range(8)]

    def call(i):
        return ebc.forward_concat(batches[i])

    for mode in ("train", "eval"):
        getattr(ebc, mode)()
        kept = call(0)
        view = call(1)[2:, 1:]
        array = call(2).detach().numpy()
        x3 = call(3)
        want = x3.detach().clone()
        pending = model(x3).sum()  # the first Linear saved its input; no backward yet
        del x3
        saved = [kept.detach().clone(), view.detach().clone(), array.copy()]
        for i in range(4, 8):
            call(i)  # dropped at once: its memory may serve the next call
        np.testing.assert_array_equal(kept.detach().numpy(), saved[0].numpy())
        np.testing.assert_array_equal(view.detach().numpy(), saved[1].numpy())
        np.testing.assert_array_equal(array, saved[2])
        # The first layer's weight gradient is computed from the saved input: the same as from
        # a copy of the input taken before the other calls.
        model.zero_grad()
        pending.backward()
        got = model[0].weight.grad.clone()
        model.zero_grad()
        model(want).sum().backward()
        torch.testing.assert_close(got, model[0].weight.grad, rtol=0, atol=0)
        del pending
        x = call(7)
        ptr = x.data_ptr()
        del x
        assert call(7).data_ptr() == ptr  # nothing held it: the memory is reused
