"""NumPy references for every engine op: pooling, unpooling (segment sums) and the update
rules. Written for clarity, not speed; float64 throughout so the tolerance in the tests
measures the engine's float32 rounding only."""

from __future__ import annotations

import numpy as np

import sparsecore as sc


def pool(rows_of_ids: np.ndarray, offsets: np.ndarray, weights: np.ndarray | None, mode: str):
    """rows_of_ids: float[n, dim] (the row of each position). Returns the pooled output."""
    n, dim = rows_of_ids.shape
    B = len(offsets) - 1
    w = np.ones(n) if weights is None else weights.astype(np.float64)
    if mode == "none":
        lengths = np.diff(offsets)
        L = int(lengths.max()) if B else 0
        out = np.zeros((B, L, dim))
        for b in range(B):
            s, e = offsets[b], offsets[b + 1]
            out[b, : e - s] = rows_of_ids[s:e] * w[s:e, None]
        return out
    out = np.zeros((B, dim))
    for b in range(B):
        s, e = offsets[b], offsets[b + 1]
        acc = (rows_of_ids[s:e] * w[s:e, None]).sum(axis=0) if e > s else np.zeros(dim)
        if mode == "mean":
            denom = w[s:e].sum() if weights is not None else e - s
            acc = acc / denom if denom != 0 else np.zeros(dim)
        out[b] = acc
    return out


def position_grads(offsets: np.ndarray, weights: np.ndarray | None, mode: str, grad: np.ndarray) -> np.ndarray:
    """Gradient reaching each position of the batch from the pooled gradient: float64[n, dim]
    (the bag's gradient, scaled by the position's weight and, for mean, 1 / the bag's size
    or weight sum; zeros for a mean bag whose weights sum to 0)."""
    n = int(offsets[-1]) if len(offsets) else 0
    w = np.ones(n) if weights is None else weights.astype(np.float64)
    out = np.zeros((n, grad.shape[-1]))
    for b in range(len(offsets) - 1):
        s, e = offsets[b], offsets[b + 1]
        scale = 1.0
        if mode == "mean":
            denom = w[s:e].sum() if weights is not None else e - s
            scale = 1.0 / denom if denom != 0 else 0.0
        for p in range(s, e):
            g = grad[b, p - s] if mode == "none" else grad[b]
            out[p] = scale * w[p] * g.astype(np.float64)
    return out


def unpool(ids: np.ndarray, offsets: np.ndarray, weights: np.ndarray | None, mode: str, grad: np.ndarray):
    """Gradient of each distinct id: dict id -> float64[dim] (the segment sum, in position order)."""
    out: dict[int, np.ndarray] = {}
    for i, g in zip(ids.tolist(), position_grads(offsets, weights, mode, grad)):
        out[i] = out[i] + g if i in out else np.zeros(grad.shape[-1]) + g
    return out


def frequency_scaled_l1(strength: float, n0: float, count: int) -> float:
    """The L1 strength of a row updated `count` times (this update included):
    strength * min(1, sqrt(n0 / count)), or strength itself when n0 is 0."""
    if n0 <= 0 or strength == 0 or count <= n0:
        return strength
    return strength * np.sqrt(n0 / count)


class RowState:
    """Reference state of one row: weights, optimizer state, update count."""

    def __init__(self, w: np.ndarray, opt):
        dim = len(w)
        self.w = w.astype(np.float64)
        self.peak = np.abs(self.w)  # the largest magnitude each weight has held
        self.count = 0
        acc = getattr(opt, "initial_accumulator", 0.0)
        if isinstance(opt, sc.RowwiseAdagrad):
            self.s = np.full(1, acc)
        elif isinstance(opt, sc.FTRL):
            self.z = np.zeros(dim)
            self.n = np.full(dim, acc)
        elif isinstance(opt, sc.Adam):
            self.m = np.zeros(dim)
            self.v = np.zeros(dim)
        else:
            self.s = np.full(dim, acc)  # Adagrad / GroupLasso accumulator; Momentum buffer
            if isinstance(opt, sc.Momentum):
                self.s = np.zeros(dim)

    def apply(self, opt, g: np.ndarray, global_step: int) -> None:
        self.count += 1
        w = self.w
        wd = opt.weight_decay
        if isinstance(opt, sc.SGD):
            self.w = w - opt.lr * (g + wd * w)
        elif isinstance(opt, sc.Momentum):
            g = g + wd * w
            self.s = opt.momentum * self.s + g
            step = g + opt.momentum * self.s if opt.nesterov else self.s
            self.w = w - opt.lr * step
        elif isinstance(opt, (sc.Adagrad, sc.GroupLasso)):
            g = g + wd * w
            self.s = self.s + g * g
            self.w = w - opt.lr * g / (np.sqrt(self.s) + opt.eps)
            if isinstance(opt, sc.GroupLasso) and opt.group_lambda:
                lam = frequency_scaled_l1(opt.group_lambda, opt.l1_reference_count, self.count)
                norm = np.linalg.norm(self.w)
                scale = max(0.0, 1 - opt.lr * lam * np.sqrt(len(w)) / norm) if norm > 0 else 0.0
                self.w = self.w * scale
        elif isinstance(opt, sc.RowwiseAdagrad):
            g = g + wd * w
            self.s = self.s + np.mean(g * g)
            self.w = w - opt.lr * g / (np.sqrt(self.s[0]) + opt.eps)
        elif isinstance(opt, sc.Adam):
            t = global_step if opt.use_global_step else self.count
            b1, b2 = opt.betas
            if opt.decoupled_weight_decay:
                w = w * (1 - opt.lr * wd)
            else:
                g = g + wd * w
            self.m = b1 * self.m + (1 - b1) * g
            self.v = b2 * self.v + (1 - b2) * g * g
            denom = np.sqrt(self.v) / np.sqrt(1 - b2**t) + opt.eps
            self.w = w - (opt.lr / (1 - b1**t)) * self.m / denom
        elif isinstance(opt, sc.FTRL):
            g = g + wd * w
            p = -opt.lr_power
            n_new = self.n + g * g
            sigma = (n_new**p - self.n**p) / opt.lr
            self.z = self.z + g - sigma * w
            self.n = n_new
            denom = (opt.beta + self.n**p) / opt.lr + opt.l2
            l1 = frequency_scaled_l1(opt.l1, opt.l1_reference_count, self.count)
            self.w = np.where(np.abs(self.z) <= l1, 0.0, -(self.z - np.sign(self.z) * l1) / denom)
        else:
            raise TypeError(opt)


def random_batch(rng: np.random.Generator, batch_size: int, max_len: int, id_pool: np.ndarray,
                 weighted: bool = False, empty_fraction: float = 0.2):
    """CSR bags with duplicates (ids drawn from a small pool) and some empty bags."""
    lengths = rng.integers(1, max_len + 1, size=batch_size)
    lengths[rng.random(batch_size) < empty_fraction] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.choice(id_pool, size=int(offsets[-1])).astype(np.int64)
    weights = rng.uniform(0.1, 2.0, size=len(ids)).astype(np.float32) if weighted else None
    return ids, offsets, weights


# One configuration of every update rule (and variants: Nesterov, global-step Adam, FTRL's
# lr_power), shared by the reference tests of the fp32 and fp16 engines.
OPTIMIZERS = {
    "sgd": sc.SGD(lr=0.1, weight_decay=0.01),
    "momentum": sc.Momentum(lr=0.05, momentum=0.9),
    "nesterov": sc.Momentum(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
    "adagrad": sc.Adagrad(lr=0.1, eps=1e-10, initial_accumulator=0.1),
    "rowwise_adagrad": sc.RowwiseAdagrad(lr=0.1, eps=1e-8),
    "adam": sc.Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    "adam_global_step": sc.Adam(lr=0.01, use_global_step=True),
    "adamw": sc.AdamW(lr=0.01, weight_decay=0.1),
    "ftrl": sc.FTRL(lr=0.1, beta=1.0, l1=0.01, l2=0.01),
    "ftrl_power": sc.FTRL(lr=0.1, beta=0.5, l1=0.0, l2=0.1, lr_power=-0.7),
    "group_lasso": sc.GroupLasso(lr=0.1, group_lambda=0.05),
    # L1 strength scaled by each row's update count (full up to 1.5 updates, then sqrt(1.5 / c)).
    "ftrl_frequency_l1": sc.FTRL(lr=0.1, beta=1.0, l1=0.05, l2=0.01, l1_reference_count=1.5),
    "group_lasso_frequency_l1": sc.GroupLasso(lr=0.1, group_lambda=0.05, l1_reference_count=1.5),
}


EXTREME_IDS = np.array([0, -1, 2**63 - 1, -(2**63), 1, 42, -(2**62), 2**40 + 7], dtype=np.int64)


def train_with_reference(rng: np.random.Generator, emb, opt, pooling: str, steps: int = 3,
                         round_weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Trains table "t" of `emb` for `steps` random batches (the second weighted) and applies
    the same gradients to a RowState per id. `round_weights` (e.g. a cast to fp16) is applied
    to each reference row after its update, as the table's storage does. Returns the ids seen,
    the table's rows and the reference rows of those ids, and the RowState per id."""
    id_pool = np.concatenate([EXTREME_IDS, rng.integers(-1000, 1000, size=20)])
    ref: dict[int, RowState] = {}
    for step in range(1, steps + 1):
        weighted = step == 2
        ids, offsets, weights = random_batch(rng, 23, 6, id_pool, weighted=weighted)
        for k, row in zip(ids, emb.lookup("t", ids, insert=True)):  # creates rows with their initial values
            ref.setdefault(int(k), RowState(row, opt))
        batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
        out = emb.forward(batch)["t"]
        out = out[0] if pooling == "none" else out
        grad = rng.normal(size=out.shape).astype(np.float32)
        assert emb.backward(batch, {"t": grad}) == step
        for k, g in unpool(ids, offsets, weights, pooling, grad).items():
            ref[k].apply(opt, g, step)
            if round_weights is not None:
                ref[k].w = round_weights(ref[k].w)
            ref[k].peak = np.maximum(ref[k].peak, np.abs(ref[k].w))
    keys = np.array(list(ref), dtype=np.int64)
    return keys, emb.lookup("t", keys), np.stack([ref[int(k)].w for k in keys]), ref


def assert_pooled(out, rows: np.ndarray, offsets: np.ndarray, weights: np.ndarray | None, pooling: str) -> None:
    """`out` (a forward or evaluate output of one group) equals the NumPy pooling of `rows`."""
    expect = pool(rows.astype(np.float64), offsets, weights, pooling)
    if pooling == "none":
        out, lengths = out
        np.testing.assert_array_equal(lengths, np.diff(offsets))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expect, rtol=2e-5, atol=2e-6)


def assert_close_to_scale(actual, desired, rtol: float = 1e-5, err_msg: str = "") -> None:
    """Elementwise closeness with the absolute tolerance scaled to the largest magnitude of
    `desired`: two float32 computations that sum in different orders differ by a few ulps of
    the largest term, which is far more than `rtol` of an element that happens to be near zero."""
    desired = np.asarray(desired)
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=err_msg)
