"""The Trainer's C++ pipeline (sparsecore._core.StepPipeline): the same bits as a plain
sequential loop over the same batches, whatever drives the source, and errors of the
source surfacing in fit() with their own type."""

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore import _core  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import EmbeddingBagCollection, mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

from _helpers import assert_same_training  # noqa: E402

DIM = 4


def config(seed=5):
    return SyntheticConfig.w2(num_groups=3, num_user_groups=1, vocab_size=200, min_bag=1, max_bag=4,
                              weight_std=0.4, samples_per_view=2, batch_size=64, seed=seed)


def tables(names):
    return {n: sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.2)) for n in names}


class BatchList:
    """A plain Python source: next_batch() over a list, then None."""

    def __init__(self, batches, fail_at=None, error=None):
        self.batches, self.i, self.fail_at, self.error = list(batches), 0, fail_at, error

    def next_batch(self):
        if self.fail_at is not None and self.i == self.fail_at:
            raise self.error
        if self.i == len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]


def read_all(source, n):
    return [source.next_batch() for _ in range(n)]


def model_for(names):
    torch.manual_seed(3)
    return mlp(DIM * len(names), [8])


def reference_run(batches, names, seed):
    """The step with no pipeline at all: prepare, forward, dense step, fused backward in turn."""
    model = model_for(names)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ebc = EmbeddingBagCollection(tables(names), seed, threads=None)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for b in batches:
        sparse = {n: b.sparse[n] for n in names}
        batch = sc.data.Batch(sparse=sparse, labels=b.labels, sample_group=b.sample_group,
                              shared=frozenset(g for g in b.shared if g in names), num_samples=b.num_samples)
        logits = model(ebc.forward_concat(batch)).reshape(-1)
        loss = loss_fn(logits, torch.from_numpy(np.asarray(batch.labels, np.float32)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, ebc.collection


def trainer_run(source, names, seed, **kwargs):
    model = model_for(names)
    trainer = Trainer(source, model, tables(names), dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                      seed=seed, progress=False, threads=None, **kwargs)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("prefetch", [1, 3])
def test_compiled_and_python_sources_give_the_bits_of_a_sequential_loop(prefetch):
    cfg = config()
    names = cfg.names()
    batches = read_all(SyntheticData(cfg, num_samples=64 * 12, compressed=True), 12)
    ref_model, ref_coll = reference_run(batches, names[:2], seed=9)
    compiled = trainer_run(SyntheticData(cfg, num_samples=64 * 12, compressed=True), names[:2], 9, prefetch=prefetch)
    listed = trainer_run(BatchList(batches), names[:2], 9, prefetch=prefetch)
    assert compiled.step == listed.step == 12
    assert_same_training(ref_model, ref_coll, compiled.model, compiled.embedding.collection)
    assert_same_training(ref_model, ref_coll, listed.model, listed.embedding.collection)


class SourceBroke(Exception):
    pass


def test_a_source_error_surfaces_in_fit_with_its_type_after_the_steps_before_it():
    batches = read_all(SyntheticData(config(), num_samples=64 * 6), 6)
    trainer = Trainer(BatchList(batches, fail_at=4, error=SourceBroke("disk went away at batch 4")),
                      model_for(config().names()), tables(config().names()), progress=False, threads=None)
    with pytest.raises(SourceBroke, match="disk went away at batch 4"):
        trainer.fit()
    assert trainer.step == 4  # the batches read before the error were trained


def test_an_error_on_the_training_thread_stops_the_pipeline_without_hanging():
    source = SyntheticData(config(), num_samples=64 * 1000)
    trainer = Trainer(source, model_for(config().names()), tables(config().names()), progress=False,
                      threads=None, prefetch=1)
    errors = []

    def run():
        def stop(t):
            raise KeyError("stop here")

        try:
            trainer.fit(every=1, on_interval=stop)
        except KeyError as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "fit did not return after the training thread raised"
    assert len(errors) == 1 and trainer.step == 1
    # The source was rewound to the one batch trained on: the next fit continues there.
    assert source.state_dict()["position"] == 64


def test_stale_sparse_trains_through_the_compiled_pull():
    cfg = config()
    trainer = trainer_run(SyntheticData(cfg, num_samples=64 * 8), cfg.names(), 1, stale_sparse=True)
    assert trainer.step == 8 and sum(trainer.embedding.collection.sizes().values()) > 0


def test_step_pipeline_rejects_bad_arguments_and_bad_produce_results():
    coll = sc.EmbeddingCollection(tables(["a"]), 1)
    with pytest.raises(ValueError, match="prefetch"):
        _core.StepPipeline(coll._c, lambda: None, prefetch=0)
    with pytest.raises(TypeError, match="callable"):
        _core.StepPipeline(coll._c, 3)
    with pytest.raises(KeyError, match="nope"):
        _core.StepPipeline(coll._c, lambda: None, groups=["nope"])
    p = _core.StepPipeline(coll._c, lambda: "not a tuple")
    with pytest.raises(TypeError, match="produce"):
        p.next()
    p.close()
    ids = np.array([1.5, 2.5])
    p = _core.StepPipeline(coll._c, lambda: (None, [(0, ids, np.array([0, 2], np.int64), None)]))
    with pytest.raises(TypeError, match="int64"):
        p.next()
    p.close()
    p = _core.StepPipeline(coll._c, lambda: (None, [(0, np.array([1, 2], np.int64), np.array([0, 3], np.int64), None)]))
    with pytest.raises(ValueError, match="'a'"):
        p.next()
    assert coll.table_size("a") == 0
    p.close()
    p.close()


def test_step_pipeline_hands_payload_and_prepared_rows_in_order():
    coll = sc.EmbeddingCollection(tables(["a"]), 1)
    items = iter(range(5))

    def produce():
        i = next(items, None)
        if i is None:
            return None
        return {"i": i}, [(0, np.array([i, i + 1], np.int64), np.array([0, 1, 2], np.int64), None)]

    p = _core.StepPipeline(coll._c, produce, prefetch=2, max_steps=4, pull_rows=True)
    seen = []
    while (step := p.next()) is not None:
        payload, prepared, pulled, state = step
        assert state is None
        seen.append(payload["i"])
        assert prepared.num_unique(0) == 2 and pulled[0].shape == (2, DIM)
    assert seen == [0, 1, 2, 3]
    assert p.next() is None
    p.close()


def test_a_pipeline_dropped_without_close_joins_its_thread():
    coll = sc.EmbeddingCollection(tables(["a"]), 1)
    calls = []

    def produce():
        calls.append(1)
        return None, [(0, np.array([len(calls)], np.int64), np.array([0, 1], np.int64), None)]

    p = _core.StepPipeline(coll._c, produce, prefetch=1)
    assert p.next() is not None
    del p  # the producer waits for room in the full queue; the destructor must not deadlock on the GIL
    read = len(calls)
    assert read <= 3
    assert len(calls) == read  # nothing reads after the pipeline is gone


def test_ctrl_c_interrupts_a_wait_for_the_next_step():
    import _thread

    started, release, released = threading.Event(), threading.Event(), []

    def produce():
        started.set()
        released.append(release.wait(timeout=60))  # a source stuck until the interrupt was seen
        return None

    p = _core.StepPipeline(None, produce)
    started.wait()
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        p.next()
    release.set()
    timer.join()
    p.close()
    assert released == [True]  # next() gave up waiting before the source returned


def test_the_compiled_synthetic_source_prepares_the_batches_of_the_python_one():
    import json

    cfg = config()
    names = cfg.names()
    data = SyntheticData(cfg, compressed=True)
    coll = sc.EmbeddingCollection(tables(names), 4)
    ref = sc.EmbeddingCollection(tables(names), 4)
    p = _core.StepPipeline.synthetic(coll._c, data._gen, batch_size=64, start=128, num_batches=3, compressed=True)
    steps = 0
    while (step := p.next()) is not None:
        payload, prepared, pulled, state = step
        batch = sc.data.Batch._from_core(payload)
        expect = data.generate(128 + 64 * steps, 64, True)
        np.testing.assert_array_equal(batch.labels, expect.labels)
        np.testing.assert_array_equal(batch.sample_group, expect.sample_group)
        ref_prepared = ref.prepare(expect.sparse)
        for g, name in enumerate(names):
            np.testing.assert_array_equal(batch.sparse[name][0], expect.sparse[name][0])
            np.testing.assert_array_equal(prepared.unique_ids(g), ref_prepared.unique_ids(name))
        assert pulled is None
        steps += 1
        assert json.loads(state) == {"position": 128 + 64 * steps, "batches": steps}
    assert steps == 3 and coll.sizes() == ref.sizes()
    p.close()


def test_the_compiled_file_source_reads_every_line_once_and_surfaces_bad_data(tmp_path):
    good = tmp_path / "good.libsvm"
    good.write_text("".join(f"{i % 3 == 0:d} {i % 7}:1 {100 + i}:0.5\n" for i in range(25)))
    coll = sc.EmbeddingCollection({"features": sc.TableConfig(dim=DIM)}, 1)
    p = _core.StepPipeline.text_files(coll._c, [str(good)], _core.io.LibsvmFormat(), batch_size=10)
    sizes = []
    while (step := p.next()) is not None:
        sizes.append(step[0]["num_samples"])
    assert sizes == [10, 10, 5] and coll.table_size("features") == 32
    p.close()
    bad = tmp_path / "bad.libsvm"
    bad.write_text("this is not libsvm\n" * 20)
    p = _core.StepPipeline.text_files(coll._c, [str(bad)], _core.io.LibsvmFormat(), batch_size=10)
    with pytest.raises(ValueError, match="bad.libsvm"):
        p.next()
    p.close()
    with pytest.raises(OSError, match="missing"):
        _core.StepPipeline.text_files(coll._c, [str(tmp_path / "missing")], _core.io.LibsvmFormat(), batch_size=10)
