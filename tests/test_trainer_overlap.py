"""The Trainer's batch path: pooled rows written straight into the one tensor the dense model
gets (no per-group array, no concatenation), its gradient read in place, and the pipeline that
prepares batch k+1 while batch k trains giving the bits of a loop with no overlap at all."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore import _core  # noqa: E402
from sparsecore.data import Batch, SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.embedding import EmbeddingCollection  # noqa: E402
from sparsecore.torch import EmbeddingBagCollection, mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

from _helpers import assert_same_training  # noqa: E402

DIMS = {"g0": 3, "g1": 18, "g2": 1}


def config(compressed_views=1):
    return SyntheticConfig.w2(num_groups=3, num_user_groups=1, vocab_size=300, min_bag=0, max_bag=5,
                              weight_std=0.4, samples_per_view=compressed_views, batch_size=48, seed=7)


def tables(names):
    opts = [sc.Adam(lr=0.05), sc.Adagrad(lr=0.1), sc.SGD(lr=0.1)]
    return {n: sc.TableConfig(dim=DIMS[f"g{i}"], optimizer=opts[i]) for i, n in enumerate(names)}


def batches(n, compressed_views=1, dense=0):
    cfg = config(compressed_views)
    out = list(SyntheticData(cfg, num_samples=48 * n, compressed=compressed_views > 1))
    if dense:
        rng = np.random.default_rng(1)
        out = [Batch(sparse=b.sparse, labels=b.labels, dense=rng.standard_normal((b.num_samples, dense), np.float32),
                     sample_group=b.sample_group, shared=b.shared, num_samples=b.num_samples) for b in out]
    return cfg.names(), out


class BatchList:
    def __init__(self, items):
        self.items, self.i = list(items), 0

    def next_batch(self):
        if self.i == len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]


def model_for(width):
    torch.manual_seed(4)
    return mlp(width, [8])


def per_group_reference(names, items, seed, dense=0):
    """The step written with the per-group forward and torch.cat, no pipeline: what the Trainer
    computed before the single buffer (and what it must still compute, bit for bit)."""
    model = model_for(sum(DIMS.values()) + dense)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ebc = EmbeddingBagCollection(tables(names), seed, threads=None)
    for b in items:
        pooled = ebc(b)
        parts = [pooled[n] for n in names] + ([torch.from_numpy(b.dense)] if dense else [])
        logits = model(torch.cat(parts, dim=1)).reshape(-1)
        labels = torch.from_numpy(np.asarray(b.labels, np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, ebc.collection


def run_trainer(names, items, seed, dense=0, **kwargs):
    model = model_for(sum(DIMS.values()) + dense)
    trainer = Trainer(BatchList(items), model, tables(names), dense_optimizer=torch.optim.Adam(model.parameters(),
                                                                                               lr=1e-2),
                      seed=seed, progress=False, threads=None, use_dense=bool(dense), **kwargs)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("dense", [0, 2])
def test_trainer_with_one_input_buffer_trains_the_bits_of_per_group_outputs_and_cat(dense):
    names, items = batches(8, dense=dense)
    ref_model, ref_coll = per_group_reference(names, items, seed=3, dense=dense)
    trainer = run_trainer(names, items, 3, dense=dense)
    assert trainer.step == 8
    assert_same_training(ref_model, ref_coll, trainer.model, trainer.embedding.collection)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_overlapped_pipeline_gives_the_bits_of_the_loop_without_overlap(prefetch):
    names, items = batches(10)
    ref_model, ref_coll = per_group_reference(names, items, seed=5)
    trainer = run_trainer(names, items, 5, prefetch=prefetch)
    assert_same_training(ref_model, ref_coll, trainer.model, trainer.embedding.collection)


def test_producer_on_the_pool_or_on_its_own_thread_prepares_the_same_steps():
    names, items = batches(6)
    collections = []
    for on_pool in (False, True):
        coll = EmbeddingCollection(tables(names), 2)
        produce_items = iter(items)

        def produce(coll=coll, it=produce_items):
            b = next(it, None)
            if b is None:
                return None
            groups, *_ = coll._core_groups(b.sparse)
            return b, groups

        pipe = _core.StepPipeline(coll._c, produce, groups=names, prefetch=2, prepare_on_pool=on_pool)
        rng = np.random.default_rng(0)
        while (step := pipe.next()) is not None:
            _, prepared, _, _ = step
            outs = coll._c.forward(prepared)
            coll._c.backward(prepared, [rng.standard_normal(o.shape).astype(np.float32) for o in outs])
        pipe.close()
        collections.append(coll)
    for name in names:
        a, b = collections[0].export(name), collections[1].export(name)
        np.testing.assert_array_equal(a["keys"], b["keys"])
        np.testing.assert_array_equal(a["weights"], b["weights"])


def test_pooled_rows_land_in_the_tensor_the_model_gets_and_gradients_are_read_in_place(monkeypatch):
    names, items = batches(3, dense=2)
    seen = {"inputs": [], "pooled": [], "grads": [], "input_grads": []}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model_for(sum(DIMS.values()) + 2)

        def forward(self, x):
            if x.requires_grad:
                seen["inputs"].append((x.data_ptr(), x.shape, x.stride()))
                x.register_hook(lambda g: seen["input_grads"].append((g.data_ptr(), g.shape)))
            return self.inner(x)

    pool_into, backward_rows = EmbeddingCollection.pool_into, EmbeddingCollection.backward_rows

    def spy_pool(self, prepared, outputs):
        seen["pooled"].append([(o.__array_interface__["data"][0], o.shape, o.strides) for o in outputs])
        return pool_into(self, prepared, outputs)

    def spy_backward(self, prepared, grads):
        seen["grads"].append([(g.__array_interface__["data"][0], g.shape, g.strides) for g in grads])
        return backward_rows(self, prepared, grads)

    monkeypatch.setattr(EmbeddingCollection, "pool_into", spy_pool)
    monkeypatch.setattr(EmbeddingCollection, "backward_rows", spy_backward)
    model = Spy()
    trainer = Trainer(BatchList(items), model, tables(names), progress=False, threads=None, use_dense=True)
    trainer.fit()
    assert len(seen["inputs"]) == len(seen["pooled"]) == len(seen["grads"]) == len(seen["input_grads"]) == 3
    width = sum(DIMS.values()) + 2
    starts = np.cumsum([0] + [DIMS[f"g{i}"] for i in range(3)])
    for (ptr, shape, stride), pooled in zip(seen["inputs"], seen["pooled"]):
        assert tuple(shape) == (48, width) and tuple(stride) == (width, 1)
        # Each group was pooled into its own column block of the model's input: same memory.
        for start, (address, block_shape, block_strides) in zip(starts, pooled):
            assert address == ptr + 4 * start
            assert block_strides == (4 * width, 4)
    for (gptr, gshape), grads in zip(seen["input_grads"], seen["grads"]):
        assert tuple(gshape) == (48, width)
        for start, (address, _, block_strides) in zip(starts, grads):
            assert address == gptr + 4 * start and block_strides == (4 * width, 4)


def test_forward_into_checks_its_outputs():
    names, items = batches(1)
    coll = EmbeddingCollection(tables(names), 1)
    prepared = coll.prepare(items[0].sparse, train=True)
    x = np.zeros((48, 22), np.float32)
    blocks = [x[:, 0:3], x[:, 3:21], x[:, 21:22]]
    coll.pool_into(prepared, blocks)
    np.testing.assert_array_equal(np.concatenate(coll.pooled_rows(prepared), axis=1), x)
    with pytest.raises(ValueError, match="shape"):
        coll.pool_into(prepared, [x[:, 0:3], x[:, 3:20], x[:, 21:22]])
    with pytest.raises(TypeError, match="float32"):
        coll.pool_into(prepared, [b.astype(np.float64) for b in blocks])
    with pytest.raises(ValueError, match="contiguous"):
        coll.pool_into(prepared, [np.zeros((3, 48), np.float32).T, blocks[1], blocks[2]])
    readonly = x.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        coll.pool_into(prepared, [readonly[:, 0:3], blocks[1], blocks[2]])
    with pytest.raises(ValueError, match="outputs"):
        coll.pool_into(prepared, blocks[:2])
    bad = np.zeros((48, 22), np.float32)
    bad[7, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        coll.backward_rows(prepared, [bad[:, 0:3], bad[:, 3:21], bad[:, 21:22]])
    assert coll.step == 0


def _wide_batch(num_samples):
    """Three groups (dims 3, 18 and 5: a width pooled in registers between two that are not)
    over more samples than one block of the backward's gather."""
    rng = np.random.default_rng(11)
    sparse = {}
    for name in ("a", "b", "c"):
        lengths = rng.integers(0, 6, num_samples)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        sparse[name] = (rng.integers(0, 400, int(offsets[-1])).astype(np.int64), offsets)
    return sparse


def _wide_tables():
    return {"a": sc.TableConfig(dim=3, optimizer=sc.Adam(lr=0.05)),
            "b": sc.TableConfig(dim=18, optimizer=sc.Adagrad(lr=0.1)),
            "c": sc.TableConfig(dim=5, optimizer=sc.SGD(lr=0.1))}


def test_strided_forward_and_backward_match_contiguous_bit_for_bit():
    sparse = _wide_batch(300)
    starts, dims = [0, 3, 21], [3, 18, 5]
    strided, contiguous = EmbeddingCollection(_wide_tables(), 3), EmbeddingCollection(_wide_tables(), 3)
    for step in range(3):  # the second and later backward reuse a recycled batch's gather buffer
        p_s, p_c = strided.prepare(sparse, train=True), contiguous.prepare(sparse, train=True)
        x = np.full((300, 26), np.nan, np.float32)
        strided.pool_into(p_s, [x[:, c:c + d] for c, d in zip(starts, dims)])
        np.testing.assert_array_equal(x, np.concatenate(contiguous.pooled_rows(p_c), axis=1))
        grad = np.random.default_rng(step).standard_normal((300, 26)).astype(np.float32)
        strided.backward_rows(p_s, [grad[:, c:c + d] for c, d in zip(starts, dims)])
        contiguous.backward_rows(p_c, [np.ascontiguousarray(grad[:, c:c + d]) for c, d in zip(starts, dims)])
    probe = strided.prepare(sparse, train=False)
    for a, b in zip(strided.pooled_rows(probe), contiguous.pooled_rows(contiguous.prepare(sparse, train=False))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("row", [0, 63, 64, 299])
def test_a_non_finite_strided_gradient_in_any_block_changes_nothing(row):
    sparse = _wide_batch(300)
    coll = EmbeddingCollection(_wide_tables(), 3)
    prepared = coll.prepare(sparse, train=True)
    before = coll.pooled_rows(coll.prepare(sparse, train=False))
    grad = np.zeros((300, 26), np.float32)
    grad[row, 21 + 4] = np.nan
    with pytest.raises(ValueError, match="group 'c'.*NaN or Inf"):
        coll.backward_rows(prepared, [grad[:, 0:3], grad[:, 3:21], grad[:, 21:26]])
    assert coll.step == 0
    for a, b in zip(before, coll.pooled_rows(coll.prepare(sparse, train=False))):
        np.testing.assert_array_equal(a, b)
