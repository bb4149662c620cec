"""Sample compression (XDL): shared user groups pooled once per page view and expanded give
the same outputs and gradients as the uncompressed batch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import EmbeddingBagCollection, mlp  # noqa: E402

from reference import assert_close_to_scale  # noqa: E402


def make(seed, names, pooling):
    tables = {n: sc.TableConfig(dim=5, optimizer=sc.SGD(lr=0.3), init=sc.Normal(0.1), pooling=pooling)
              for n in names}
    return EmbeddingBagCollection(tables, seed=seed)


def table_rows(ebc, name):
    e = ebc.collection.export(name)
    order = np.argsort(e["keys"])
    return e["keys"][order], e["weights"][order]


@pytest.mark.parametrize("ratio", [2, 5])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_compressed_and_uncompressed_batches_give_the_same_gradients(rng, ratio, pooling):
    cfg = SyntheticConfig.w2(num_groups=5, num_user_groups=3, vocab_size=300, samples_per_view=ratio,
                             batch_size=40, seed=int(rng.integers(1 << 30)))
    first = int(rng.integers(0, 1000)) * ratio
    data = SyntheticData(cfg)
    compressed = data.generate(first, 40, compressed=True)
    plain = data.generate(first, 40, compressed=False)
    assert compressed.shared and compressed.num_views < plain.num_samples
    expanded = compressed.expand()
    for name in plain.sparse:  # the generator's uncompressed stream is the expansion
        for a, b in zip(plain.sparse[name], expanded.sparse[name]):
            np.testing.assert_array_equal(a, b)

    seed = int(rng.integers(1 << 30))
    a, b = make(seed, cfg.names(), pooling), make(seed, cfg.names(), pooling)
    torch.manual_seed(seed)
    model_a = mlp(5 * cfg.num_groups, [6])
    model_b = mlp(5 * cfg.num_groups, [6])
    model_b.load_state_dict(model_a.state_dict())
    labels = torch.from_numpy(plain.labels)
    for ebc, model, batch in ((a, model_a, compressed), (b, model_b, plain)):
        pooled = ebc(batch)
        logits = model(torch.cat([pooled[n] for n in cfg.names()], 1)).reshape(-1)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert_close_to_scale(p.grad.numpy(), q.grad.numpy(), rtol=1e-4)
    for name in cfg.names():
        keys_a, rows_a = table_rows(a, name)
        keys_b, rows_b = table_rows(b, name)
        np.testing.assert_array_equal(keys_a, keys_b)
        assert_close_to_scale(rows_a, rows_b)


def test_compressed_batch_pools_user_groups_once_per_view():
    cfg = SyntheticConfig.w2(num_groups=4, num_user_groups=2, vocab_size=100, samples_per_view=4, batch_size=32)
    batch = SyntheticData(cfg, compressed=True).next_batch()
    ebc = make(1, cfg.names(), "sum")
    prepared = ebc.prepare(batch)
    assert [len(o) - 1 for o in prepared.offsets] == [8, 8, 32, 32]
    pooled = ebc(batch, prepared=prepared)
    assert all(tuple(pooled[n].shape) == (32, 5) for n in cfg.names())


@pytest.mark.parametrize("shuffle", [False, True])  # page views contiguous or not
def test_forward_concat_equals_forward_then_cat(rng, shuffle):
    cfg = SyntheticConfig.w2(num_groups=4, num_user_groups=2, vocab_size=200, samples_per_view=3, batch_size=30,
                             seed=int(rng.integers(1 << 30)))
    batch = SyntheticData(cfg, compressed=True).next_batch()
    if shuffle:
        order = rng.permutation(batch.num_samples)
        batch.sample_group, batch.labels = batch.sample_group[order], batch.labels[order]
        for name in set(cfg.names()) - set(batch.shared):
            ids, offsets = batch.sparse[name]
            lengths = np.diff(offsets)[order]
            starts = offsets[:-1][order]
            batch.sparse[name] = (np.concatenate([ids[s:s + n] for s, n in zip(starts, lengths)]).astype(np.int64),
                                  np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    seed = int(rng.integers(1 << 30))
    a, b = make(seed, cfg.names(), "sum"), make(seed, cfg.names(), "sum")
    weight = torch.from_numpy(rng.normal(size=(5 * cfg.num_groups,)).astype(np.float32))
    x = a.forward_concat(batch)
    pooled = b(batch)
    y = torch.cat([pooled[n] for n in cfg.names()], 1)
    np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), rtol=1e-6)
    (x @ weight).square().sum().backward()
    (y @ weight).square().sum().backward()
    for name in cfg.names():
        keys_a, rows_a = table_rows(a, name)
        keys_b, rows_b = table_rows(b, name)
        np.testing.assert_array_equal(keys_a, keys_b)
        assert_close_to_scale(rows_a, rows_b)
    a.eval()
    np.testing.assert_array_equal(a.forward_concat(batch).numpy(),
                                  torch.cat([a(batch)[n] for n in cfg.names()], 1).numpy())
