"""Train a logistic-regression CTR model whose features are hashed ids in growable tables.

Synthetic data with a planted model: each of 8 feature groups draws Zipf-distributed ids; the
true click probability is sigmoid(sum of hidden per-id weights). The model learns one weight
per id (dim-1 tables with FTRL-Proximal, the classic online-learning setup) and a bias, with the
loss written in NumPy. Prints the test AUC next to the planted optimum.
"""

import numpy as np

import sparsecore as sc


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def make_batch(rng, hidden, groups, batch_size, vocab):
    batch, logit = {}, np.zeros(batch_size)
    for g in range(groups):
        lengths = rng.integers(1, 4, size=batch_size)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = (rng.zipf(1.2, size=offsets[-1]) % vocab).astype(np.int64) + g * vocab
        np.add.at(logit, np.repeat(np.arange(batch_size), lengths), hidden[ids])
        batch[f"f{g}"] = (ids, offsets)
    p = 1 / (1 + np.exp(-logit))
    return batch, (rng.random(batch_size) < p).astype(np.float32), p


def main(steps: int = 300, batch_size: int = 1024, groups: int = 8, vocab: int = 20000) -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(0, 0.6, size=groups * vocab)
    wide = sc.EmbeddingCollection({f"f{g}": sc.TableConfig(dim=1, optimizer=sc.FTRL(lr=0.2, l1=0.5), init=sc.Zeros())
                                   for g in range(groups)}, seed=1)
    bias = 0.0
    for step in range(1, steps + 1):
        batch, y, _ = make_batch(rng, hidden, groups, batch_size, vocab)
        prepared = wide.prepare(batch)
        out = wide.forward(prepared)
        logit = sum(o[:, 0] for o in out.values()) + bias
        p = 1 / (1 + np.exp(-logit))
        dlogit = (p - y).astype(np.float32)[:, None]  # d(summed logloss)/d(logit): FTRL is per coordinate
        wide.backward(prepared, {name: dlogit for name in out})
        bias -= 0.1 * float(dlogit.mean())
        if step % 100 == 0:
            print(f"step {step}: logloss {float(-np.mean(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))):.4f}, "
                  f"rows {sum(wide.sizes().values())}")
    batch, y, p_true = make_batch(rng, hidden, groups, 20000, vocab)
    logit = sum(o[:, 0] for o in wide.evaluate(batch).values()) + bias
    print(f"test AUC {auc(y, logit):.4f} (planted optimum {auc(y, p_true):.4f})")


if __name__ == "__main__":
    main()
