"""Results are identical (bit for bit) for any thread count."""

import numpy as np

import sparsecore as sc
from reference import random_batch


def run(num_threads, batches, grads):
    old = sc.num_threads()
    sc.set_num_threads(num_threads)
    try:
        emb = sc.EmbeddingCollection({
            "a": sc.TableConfig(dim=16, optimizer=sc.Adagrad(lr=0.1)),
            "b": sc.TableConfig(dim=18, optimizer=sc.Adam(lr=0.01), pooling="mean"),
            "c": sc.TableConfig(dim=5, optimizer=sc.FTRL(lr=0.1), pooling="none"),
        }, seed=4)
        outs = []
        for batch, grad in zip(batches, grads):
            out = emb.forward(batch)
            outs.append({k: (v[0] if isinstance(v, tuple) else v).copy() for k, v in out.items()})
            emb.backward(batch, grad)
        return outs, {n: emb.export(n) for n in emb.names}
    finally:
        sc.set_num_threads(old)


def test_one_and_two_threads_give_identical_results(rng):
    batches, grads = [], []
    for _ in range(3):
        batch = {n: random_batch(rng, 700, 20, rng.integers(0, 3000, 5000), weighted=(n == "a")) for n in "abc"}
        batch = {n: (b if n == "a" else b[:2]) for n, b in batch.items()}
        batches.append(batch)
        lmax = int(np.diff(batch["c"][1]).max())
        grads.append({"a": rng.normal(size=(700, 16)).astype(np.float32),
                      "b": rng.normal(size=(700, 18)).astype(np.float32),
                      "c": rng.normal(size=(700, lmax, 5)).astype(np.float32)})
    outs1, tables1 = run(1, batches, grads)
    outs2, tables2 = run(2, batches, grads)
    for o1, o2 in zip(outs1, outs2):
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
    for n in tables1:
        o1, o2 = np.argsort(tables1[n]["keys"]), np.argsort(tables2[n]["keys"])
        for k in tables1[n]:
            np.testing.assert_array_equal(tables1[n][k][o1], tables2[n][k][o2])
