"""Stream ordering of the device backend, tested without a device: the emulator's deferred
side stream plays a producer whose writes land only once a consumer orders itself after them
(an event wait) or the stream is synchronised. Arrays whose ``__cuda_array_interface__`` names
that stream must be read after its queued writes; a call that ignored the stream would read
the zeros the buffers start with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import _core
from sparsecore import cuda as sc_cuda

from test_cuda import random_batch
from test_cuda_zero_copy import FakeCudaArray

TABLES = {"a": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
          "b": sc.TableConfig(dim=3, pooling="mean", optimizer=sc.SGD(lr=0.1))}
KERNEL_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"


@pytest.fixture
def side_stream():
    stream = _core.cuda_emulator_side_stream()
    yield stream
    _core.cuda_emulator_release_stream(stream)


def produced_on(stream: int, a: np.ndarray) -> FakeCudaArray:
    """A zeroed device array whose contents `a` are written by work queued on `stream`."""
    src = np.ascontiguousarray(a)
    out = FakeCudaArray(np.zeros_like(src), stream=stream)
    out.source = src  # alive until the queued copy runs
    _core.cuda_emulator_enqueue_copy(stream, out.host.ctypes.data, src.ctypes.data, src.nbytes)
    return out


def test_a_batch_produced_on_a_side_stream_is_read_after_the_producer(rng, side_stream):
    seed = 17
    host, dev = (sc_cuda.DeviceEmbeddingCollection(TABLES, seed, emulate=True) for _ in range(2))
    batch = {n: random_batch(rng, 6, 4, 20, weighted=i == 1) for i, n in enumerate(TABLES)}
    device_batch = {n: tuple(produced_on(side_stream, a) for a in g) for n, g in batch.items()}
    assert _core.cuda_emulator_pending_work(side_stream) == 5  # nothing written yet
    prepared = dev.prepare(device_batch)
    assert _core.cuda_emulator_pending_work(side_stream) == 0
    want, got = host.forward(batch), dev.forward(prepared)
    grads = {}
    for n in TABLES:
        np.testing.assert_array_equal(got[n], want[n])
        grads[n] = rng.standard_normal(want[n].shape).astype(np.float32)
    device_grads = {n: produced_on(side_stream, g) for n, g in grads.items()}
    assert dev.backward(prepared, device_grads) == host.backward(batch, grads)
    assert _core.cuda_emulator_pending_work(side_stream) == 0
    for n in TABLES:
        np.testing.assert_array_equal(dev.export(n)["weights"], host.export(n)["weights"])


def test_lookup_and_erase_follow_the_stream_of_their_ids(rng, side_stream):
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 3, emulate=True)
    ids = rng.integers(1, 1000, size=9).astype(np.int64)
    want = dev.lookup("a", ids, insert=True)
    np.testing.assert_array_equal(dev.lookup("a", produced_on(side_stream, ids)), want)
    assert dev.erase("a", produced_on(side_stream, ids)) == np.unique(ids).size
    assert _core.cuda_emulator_pending_work(side_stream) == 0


def test_an_interface_stream_of_zero_is_refused(rng):
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 3, emulate=True)
    ids = FakeCudaArray(np.arange(4, dtype=np.int64), stream=0)
    with pytest.raises(ValueError, match="'stream' must be None or a positive stream handle"):
        dev.lookup("a", ids)


def test_a_zero_copy_training_step_waits_for_the_host_twice_at_most(rng):
    # Device inputs: one wait in prepare (the offsets, validated on the host, and the weights'
    # finiteness), one in backward (the gradients' finiteness); forward writes device outputs
    # without waiting.
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 3, emulate=True)
    batch = {n: random_batch(rng, 6, 4, 20, weighted=i == 1) for i, n in enumerate(TABLES)}
    dev.backward(dev.prepare(batch), {n: np.ones(o.shape, np.float32) for n, o in dev.forward(batch).items()})
    sc_cuda.reset_emulator_counters()
    prepared = dev.prepare({n: tuple(FakeCudaArray(a) for a in g) for n, g in batch.items()})
    assert sc_cuda.emulator_counters()["host_syncs"] == 1
    out = dev.forward(prepared)
    assert sc_cuda.emulator_counters()["host_syncs"] == 1
    dev.backward(prepared, {n: FakeCudaArray(np.ones(o.shape, np.float32)) for n, o in out.items()})
    assert sc_cuda.emulator_counters()["host_syncs"] == 2


def test_no_kernel_source_synchronises_the_whole_device():
    offenders = [p.name for p in KERNEL_DIR.rglob("*") if p.suffix in (".cu", ".cuh", ".cpp", ".h")
                 and "cudaDeviceSynchronize" in p.read_text()]
    assert not offenders


def test_forward_of_a_prepared_batch_into_device_outputs_is_launches_only(rng):
    # What CUDA-graph capture of a forward needs: no copy, memset, wait or allocation, only
    # the launch (output pointers travel in the launch's parameters).
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 3, emulate=True)
    batch = {n: random_batch(rng, 6, 4, 20, weighted=i == 1) for i, n in enumerate(TABLES)}
    want = dev.forward(batch)
    prepared = dev.prepare({n: tuple(FakeCudaArray(a) for a in g) for n, g in batch.items()})
    cache = sc_cuda.memory_cache_stats(emulate=True)
    sc_cuda.reset_emulator_counters()
    got = dev.forward(prepared)
    c = sc_cuda.emulator_counters()
    assert c["launches"] == 1 and list(c["kernels"]) == ["pool_kernel<T>"]
    assert c["host_syncs"] == c["h2d_copies"] == c["d2h_copies"] == c["d2d_copies"] == c["memsets"] == 0
    after = sc_cuda.memory_cache_stats(emulate=True)
    assert (after["hits"], after["misses"]) == (cache["hits"], cache["misses"])
    for n in TABLES:
        np.testing.assert_array_equal(got[n], want[n])


def test_batches_of_more_groups_than_travel_inline_pass_the_rest_in_device_memory(rng):
    tables = {f"t{i}": sc.TableConfig(dim=2 + i % 3, optimizer=sc.SGD(lr=0.1)) for i in range(40)}
    host, dev = (sc_cuda.DeviceEmbeddingCollection(tables, 9, emulate=True) for _ in range(2))
    batch = {n: random_batch(rng, 3, 3, 10, weighted=False) for n in tables}
    prepared = dev.prepare({n: tuple(FakeCudaArray(a) for a in g) for n, g in batch.items()})
    want, got = host.forward(batch), dev.forward(prepared)
    grads = {n: rng.standard_normal(want[n].shape).astype(np.float32) for n in tables}
    assert dev.backward(prepared, {n: FakeCudaArray(g) for n, g in grads.items()}) == host.backward(batch, grads)
    for n in tables:
        np.testing.assert_array_equal(got[n], want[n])
        np.testing.assert_array_equal(dev.export(n)["weights"], host.export(n)["weights"])
