"""The backward's gradient sums on the device store: each unique id's occurrences are summed
in chunks of sparsecore's gradient chunk (128 occurrences), the chunks in parallel, and the
chunk sums added in chunk order; the CPU engine sums in that very order, so a Zipf head id
(seen thousands of times in a batch) neither serialises the device nor costs the bits. Each
case trains the CPU collection and the device collection (emulated, and a real one where a
GPU is present) on batches where one id takes 30% of the positions, and compares exactly."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

BACKENDS = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]
HOT = 424242


def _hot_batch(rng, bags, max_len, hot_share, weighted):
    lengths = rng.integers(0, max_len + 1, size=bags)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(-500, 500, size=int(offsets[-1])).astype(np.int64)
    ids[rng.random(ids.size) < hot_share] = HOT
    if weighted:
        return ids, offsets, rng.uniform(0.1, 2.0, ids.size).astype(np.float32)
    return ids, offsets


def _assert_same_rows(cpu, dev):
    for name in cpu.names:
        e, c = dev.export(name), cpu.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(e["keys"], c["keys"][order])
        np.testing.assert_array_equal(e["weights"], c["weights"][order], err_msg=name)
        np.testing.assert_array_equal(e["state"], c["state"][order], err_msg=name)


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
@pytest.mark.parametrize("opt", [sc.SGD(lr=0.05), sc.RowwiseAdagrad(lr=0.1), sc.Adam(lr=0.01)],
                         ids=lambda o: type(o).__name__)
def test_a_hot_id_in_30_percent_of_the_positions_gives_the_cpu_bits(emulate, storage, opt):
    rng = np.random.default_rng(30)
    tables = {"sum": sc.TableConfig(dim=8, optimizer=opt, pooling="sum", storage=storage),
              "mean": sc.TableConfig(dim=5, optimizer=opt, pooling="mean", storage=storage),
              "none": sc.TableConfig(dim=4, optimizer=opt, pooling="none", storage=storage)}
    cpu = sc.EmbeddingCollection(tables, 3)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 3, storage=storage, emulate=emulate)
    for step in range(2):
        # ~1,400 ids per group: the hot id's list is several chunks long, with a short last one.
        batch = {name: _hot_batch(rng, 300, 9, 0.3, weighted=(step == 1 and name != "none")) for name in tables}
        assert np.count_nonzero(batch["sum"][0] == HOT) > 3 * 128
        want = cpu.forward(batch)
        got = dev.forward(batch)
        for name in tables:  # pooling "none" gives (padded rows, lengths)
            for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (got[name], want[name]))):
                np.testing.assert_array_equal(a, b)
        grads = {n: rng.standard_normal((w[0] if isinstance(w, tuple) else w).shape).astype(np.float32)
                 for n, w in want.items()}
        assert dev.backward(batch, grads) == cpu.backward(batch, grads)
    _assert_same_rows(cpu, dev)


def test_the_cpu_sums_a_long_occurrence_list_chunk_by_chunk():
    # SGD with lr = 1 on a zero row: the row becomes minus the summed gradient. The hot id
    # appears once in each of 300 bags; the NumPy sum of its 300 gradients in the chunk order
    # (two chunks of 128 and one of 44, each summed from zero, then added in order) must be
    # the CPU engine's bits, whatever the order of a plain running sum would give.
    rng = np.random.default_rng(4)
    tables = {"t": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=1.0), init=sc.Constant(0.0))}
    cpu = sc.EmbeddingCollection(tables, 1)
    offsets = np.arange(301, dtype=np.int64)
    ids = np.full(300, HOT, np.int64)
    grads = (rng.standard_normal((300, 3)) * 10.0 ** rng.integers(-3, 4, (300, 1))).astype(np.float32)
    cpu.forward({"t": (ids, offsets)})
    cpu.backward({"t": (ids, offsets)}, {"t": grads})
    chunks = [grads[i:i + 128] for i in range(0, 300, 128)]
    total = np.zeros(3, np.float32)
    for k, chunk in enumerate(chunks):
        part = np.zeros(3, np.float32)
        for row in chunk:
            part = (part + row).astype(np.float32)
        total = part if k == 0 else (total + part).astype(np.float32)
    np.testing.assert_array_equal(cpu.lookup("t", np.array([HOT], np.int64))[0], -total)
