"""Workload W1 (bench/README.md) and the peers that run it, shared by the pytest-benchmark suite
(test_w1.py) and the per-peer memory probe (peak_memory.py).

W1, Criteo-like: 26 tables of dim 16, ids 0..1M-1, batch 4096, 1-20 ids per bag, ids
Zipf(1.1) scattered by a fixed permutation (seed 1234). One step = forward (sum pooling) +
backward + optimizer update. Every peer gets the same batches, the same gradients of the
pooled outputs and the same hyperparameters.

``SPARSECORE_BENCH_SCALE`` picks the size: ``tiny`` (a CI smoke in seconds), ``small``, or
``full`` (the workload as specified).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

THREADS = 2
DIM = 16
ADAGRAD_LR, ADAGRAD_EPS = 0.05, 1e-8
SGD_LR = 0.05
ADAM_LR, ADAM_EPS = 1e-3, 1e-8
# sparsecore's tables use 4 shards (the default is 64): at W1's million ids per table each
# shard's hash index then passes 2 MiB and lives on huge pages like the rows, which cuts the
# TLB misses of random probes (see README, "sparsecore configuration").
SHARD_BITS = 2


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    tables: int
    vocab: int
    batch_size: int
    num_batches: int      # distinct batches cycled through by the timed steps
    rounds: int           # timed rounds per case (medians are over these)
    first_pass_steps: int  # steps on empty tables per first-pass round


SCALES = {
    "tiny": Scale("tiny", tables=4, vocab=20_000, batch_size=256, num_batches=2, rounds=3, first_pass_steps=2),
    "small": Scale("small", tables=26, vocab=100_000, batch_size=1024, num_batches=4, rounds=10, first_pass_steps=4),
    "full": Scale("full", tables=26, vocab=1_000_000, batch_size=4096, num_batches=8, rounds=15, first_pass_steps=8),
}


def current_scale() -> Scale:
    name = os.environ.get("SPARSECORE_BENCH_SCALE", "small")
    if name not in SCALES:
        raise ValueError(f"SPARSECORE_BENCH_SCALE must be one of {sorted(SCALES)}, got {name!r}")
    return SCALES[name]


def limit_threads() -> None:
    """Every peer gets THREADS threads; idle OpenMP workers sleep instead of spinning on the
    cores the next case needs. Must run before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@dataclasses.dataclass
class Batches:
    """The workload's batches in each peer's input form, built once and shared."""
    names: list[str]
    sparse: list[dict[str, tuple[np.ndarray, np.ndarray]]]  # sparsecore: name -> (ids, offsets)
    grads: list[dict[str, np.ndarray]]                      # name -> float32[B, DIM]
    batch_size: int
    ids_per_batch: list[int]

    def __len__(self) -> int:
        return len(self.sparse)


def make_batches(scale: Scale) -> Batches:
    from sparsecore.data import SyntheticConfig, SyntheticData

    config = SyntheticConfig.w1(num_groups=scale.tables, vocab_size=scale.vocab, batch_size=scale.batch_size)
    data = SyntheticData(config)
    rng = np.random.default_rng(7)
    sparse, grads, ids = [], [], []
    for _ in range(scale.num_batches):
        b = data.next_batch()
        groups = {n: (np.ascontiguousarray(g[0], np.int64), np.ascontiguousarray(g[1], np.int64))
                  for n, g in b.sparse.items()}
        sparse.append(groups)
        grads.append({n: rng.standard_normal((scale.batch_size, DIM), dtype=np.float32) * 0.1 for n in groups})
        ids.append(sum(len(g[0]) for g in groups.values()))
    return Batches(list(sparse[0]), sparse, grads, scale.batch_size, ids)


# --------------------------------------------------------------------------------- peers
class Peer:
    """One contender holding W1's tables. ``step(i)`` runs forward + backward + update on
    batch i; ``forward(i, train)`` only the forward (train: what a training step would run)."""

    name = "?"

    def step(self, i: int) -> None:
        raise NotImplementedError

    def forward(self, i: int, train: bool) -> Any:
        raise NotImplementedError


class SparsecorePeer(Peer):
    name = "sparsecore"

    # Tables with a known size (ids dense in [0, vocab), rows by index): the "sparsecore-dense" peer.
    known_size = False

    def __init__(self, batches: Batches, optimizer: str, vocab: int):
        import sparsecore as sc

        sc.set_num_threads(THREADS)
        opt = {"adagrad": sc.Adagrad(lr=ADAGRAD_LR, eps=ADAGRAD_EPS),
               "rowwise_adagrad": sc.RowwiseAdagrad(lr=ADAGRAD_LR, eps=ADAGRAD_EPS),
               "sgd": sc.SGD(lr=SGD_LR),
               "adam": sc.Adam(lr=ADAM_LR, eps=ADAM_EPS)}[optimizer]
        size = {"num_embeddings": vocab} if self.known_size else {}
        tables = {n: sc.TableConfig(dim=DIM, optimizer=opt, init=sc.Uniform(-0.01, 0.01), shard_bits=SHARD_BITS,
                                    **size) for n in batches.names}
        self.emb = sc.EmbeddingCollection(tables, seed=1)
        self.batches = batches
        self.vocab = vocab

    def fill(self, chunk: int = 1 << 18, on_chunk: Callable[[], None] | None = None) -> None:
        """Inserts ids 0..vocab-1 into every table (steady state: all keys present)."""
        for n in self.batches.names:
            for lo in range(0, self.vocab, chunk):
                self.emb.lookup(n, np.arange(lo, min(lo + chunk, self.vocab), dtype=np.int64), insert=True)
                if on_chunk:
                    on_chunk()

    def step(self, i: int) -> None:
        p = self.emb.prepare(self.batches.sparse[i], train=True)
        self.emb.forward(p)
        self.emb.backward(p, self.batches.grads[i])

    def forward(self, i: int, train: bool) -> Any:
        return self.emb.forward(self.batches.sparse[i], train=train)

    def rows(self) -> int:
        return sum(self.emb.sizes().values())


class DenseSparsecorePeer(SparsecorePeer):
    """sparsecore with TableConfig(num_embeddings=vocab): W1's ids are already in [0, vocab)."""
    name = "sparsecore-dense"
    known_size = True


def _torch():
    import torch

    torch.set_num_threads(THREADS)
    return torch


class TorchPeer(Peer):
    """nn.EmbeddingBag(mode="sum", sparse=True) per table + a torch sparse optimizer."""

    name = "torch"

    def __init__(self, batches: Batches, optimizer: str, vocab: int):
        torch = _torch()
        from torch import nn

        self.torch = torch
        torch.manual_seed(0)
        self.bags = nn.ModuleList(nn.EmbeddingBag(vocab, DIM, mode="sum", sparse=True, include_last_offset=True)
                                  for _ in batches.names)
        with torch.no_grad():
            for bag in self.bags:
                bag.weight.uniform_(-0.01, 0.01)
        params = list(self.bags.parameters())
        if optimizer == "adagrad":
            self.opt = torch.optim.Adagrad(params, lr=ADAGRAD_LR, eps=ADAGRAD_EPS)
        elif optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=SGD_LR)
        elif optimizer == "adam":
            self.opt = torch.optim.SparseAdam(params, lr=ADAM_LR, eps=ADAM_EPS)
        else:
            raise ValueError(f"torch has no sparse {optimizer}")
        self.inputs = [[(torch.from_numpy(b[n][0]), torch.from_numpy(b[n][1])) for n in batches.names]
                       for b in batches.sparse]
        self.grads = [[torch.from_numpy(g[n]) for n in batches.names] for g in batches.grads]

    def _pool(self, i: int) -> list:
        return [bag(ids, offs) for bag, (ids, offs) in zip(self.bags, self.inputs[i])]

    def step(self, i: int) -> None:
        outs = self._pool(i)
        self.torch.autograd.backward(outs, self.grads[i])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def forward(self, i: int, train: bool) -> Any:
        if train:
            return self._pool(i)
        with self.torch.no_grad():
            return self._pool(i)


def fbgemm_available() -> bool:
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return False
    return True


class FbgemmPeer(Peer):
    """fbgemm-gpu-cpu table-batched embedding (TBE): one fused op over all tables, the
    optimizer applied inside its backward."""

    name = "fbgemm"

    def __init__(self, batches: Batches, optimizer: str, vocab: int):
        torch = _torch()
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)

        self.torch = torch
        opt = {"adagrad": EmbOptimType.EXACT_ADAGRAD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
               "sgd": EmbOptimType.EXACT_SGD}.get(optimizer)
        if opt is None:
            raise ValueError(f"fbgemm has no CPU {optimizer}")
        lr = SGD_LR if optimizer == "sgd" else ADAGRAD_LR
        specs = [(vocab, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU) for _ in batches.names]
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            specs, optimizer=opt, learning_rate=lr, eps=ADAGRAD_EPS, pooling_mode=PoolingMode.SUM,
            device="cpu")
        self.inputs = []
        for b in batches.sparse:
            ids = [b[n][0] for n in batches.names]
            offsets, base = [np.zeros(1, np.int64)], 0
            for n in batches.names:
                offsets.append(b[n][1][1:] + base)
                base += len(b[n][0])
            self.inputs.append((torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(offsets))))
        self.grads = [torch.from_numpy(np.concatenate([g[n] for n in batches.names], axis=1)) for g in batches.grads]

    def step(self, i: int) -> None:
        out = self.tbe(*self.inputs[i])
        out.backward(self.grads[i])

    def forward(self, i: int, train: bool) -> Any:
        if train:
            return self.tbe(*self.inputs[i])
        with self.torch.no_grad():
            return self.tbe(*self.inputs[i])


PEERS: dict[str, type[Peer]] = {"sparsecore": SparsecorePeer, "sparsecore-dense": DenseSparsecorePeer,
                                "torch": TorchPeer, "fbgemm": FbgemmPeer}


def peer_available(peer: str) -> str | None:
    """None when `peer` can run here, else why not."""
    if peer == "fbgemm" and not fbgemm_available():
        return "fbgemm-gpu-cpu is not installed (pip install fbgemm-gpu-cpu==1.8.0)"
    if peer in ("torch", "fbgemm"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install torch==2.13.0)"
    return None


def make_peer(peer: str, optimizer: str, batches: Batches, vocab: int, *, fill: bool = True) -> Peer:
    p = PEERS[peer](batches, optimizer, vocab)
    if fill and isinstance(p, SparsecorePeer):
        p.fill()
    return p


# --------------------------------------------------------------------------------- W2 files
def write_libffm(batches: list, names: list[str], path: str) -> None:
    """Writes W2 batches (uncompressed ``sparsecore.data.Batch``) as libffm text, one sample a
    line: ``label field:id:1 ...`` with field k = group ``names[k]``, so ``LibffmReader(path,
    fields=names)`` reads back the same ids per group (with weights 1.0). Written to a
    temporary name and renamed, so a half-written file is never read."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for b in batches:
            groups = []
            for k, name in enumerate(names):
                ids, offsets = b.sparse[name][0], b.sparse[name][1]
                tokens = np.char.add(np.char.add(f"{k}:", np.asarray(ids, np.int64).astype(str)), ":1")
                groups.append((tokens.tolist(), np.asarray(offsets, np.int64).tolist()))
            labels = np.asarray(b.labels).astype(np.int64).tolist()
            lines = []
            for i, label in enumerate(labels):
                parts = [str(label)]
                for tokens, offsets in groups:
                    parts += tokens[offsets[i]:offsets[i + 1]]
                lines.append(" ".join(parts))
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
