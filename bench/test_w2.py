"""W2 (XDL paper) end to end: 23 feature groups, dim 18, batch 5000, MLP 414-200-80-1.

One round = ``STEPS`` training steps (forward, backward, fused sparse update, dense Adam
step) on batches no peer has seen; every peer gets the same batches, the same MLP init and
the same thread count, and after timing its held-out AUC is stored next to the planted
optimum in ``extra_info`` (so throughput is compared at equal AUC). Groups:

- ``w2-adam``: sparsecore Trainer (lazy Adam, global-step bias correction) vs pure PyTorch
  (``nn.EmbeddingBag(sparse=True)`` + ``SparseAdam``), dim 18, uncompressed samples.
- ``w2-adagrad``: Adagrad, the optimizer fbgemm's CPU tables offer: sparsecore at dim 18 and
  20, pure PyTorch and TorchRec ``FusedEmbeddingBagCollection`` at dim 20 (fbgemm needs
  dims that are multiples of 4).
- ``w2-compression``: sparsecore at sample-compression ratios 1, 4, 16, 57 (XDL figure 6):
  the 12 user groups are sent once per page view.

Batches are generated before timing (the reader is not measured). ``SPARSECORE_BENCH_SCALE=tiny``
shrinks everything for the CI smoke run; ``SPARSECORE_BENCH_THREADS`` sets every peer's thread
count (default 2). Peers that are not installed are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import Batch, SyntheticConfig, SyntheticData, auc  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

TINY = os.environ.get("SPARSECORE_BENCH_SCALE", "") == "tiny"
BATCH = 500 if TINY else 5000
VOCAB = 5_000 if TINY else 100_000
STEPS = 2 if TINY else 5  # steps per timed round
ROUNDS = 1 if TINY else 5
WARMUP = 1
EVAL_SAMPLES = 2_000 if TINY else 50_000
THREADS = int(os.environ.get("SPARSECORE_BENCH_THREADS", "2"))  # 2 for every peer (bench/README.md)
HIDDEN = [200, 80]
DENSE_LR = 1e-3
SPARSE_LR = {"adam": 0.01, "adagrad": 0.05}
EPS = {"adam": 1e-8, "adagrad": 1e-10}


def w2_config(ratio: int) -> SyntheticConfig:
    return SyntheticConfig.w2(vocab_size=VOCAB, zipf_exponent=1.5, samples_per_view=ratio, batch_size=BATCH)


_DATA: dict[int, tuple[list[Batch], list[Batch]]] = {}


def w2_data(ratio: int) -> tuple[list[Batch], list[Batch]]:
    """(training batches for warm-up + rounds, held-out batches), compressed when ratio > 1."""
    if ratio not in _DATA:
        cfg = w2_config(ratio)
        source = SyntheticData(cfg, num_samples=(WARMUP + ROUNDS) * STEPS * BATCH, compressed=ratio > 1)
        start = (1 << 40) // ratio * ratio
        held_out = SyntheticData(cfg, start=start, num_samples=start + EVAL_SAMPLES, compressed=ratio > 1)
        _DATA[ratio] = (list(source), list(held_out))
    return _DATA[ratio]


class ListSource:
    """A data source over batches handed to it between rounds."""

    def __init__(self, batches: list[Batch] = ()):  # type: ignore[assignment]
        self.batches = list(batches)
        self.position = 0

    def feed(self, batches: list[Batch]) -> None:
        self.batches, self.position = list(batches), 0

    def next_batch(self) -> Batch | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "list", "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def dense_model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same MLP init for every peer of a width
    return mlp(width, HIDDEN)


def logloss(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))


class SparsecorePeer:
    def __init__(self, names: list[str], dim: int, optimizer: str):
        opt = (sc.Adam(lr=SPARSE_LR["adam"], eps=EPS["adam"], use_global_step=True) if optimizer == "adam"
               else sc.Adagrad(lr=SPARSE_LR["adagrad"], eps=EPS["adagrad"]))
        tables = {n: sc.TableConfig(dim=dim, optimizer=opt) for n in names}
        self.model = dense_model(dim * len(names))
        self.source = ListSource()
        self.trainer = Trainer(self.source, self.model, tables, progress=False, log_every=0,
                               dense_optimizer=torch.optim.Adam(self.model.parameters(), lr=DENSE_LR))

    def train(self, batches: list[Batch]) -> None:
        self.source.feed(batches)
        self.trainer.fit()

    def evaluate(self, batches: list[Batch]) -> dict[str, float]:
        return self.trainer.evaluate(ListSource(batches))


class _TorchLoop:
    """The loop both PyTorch peers share: pooled [B, groups * dim] -> MLP -> logloss."""

    model: torch.nn.Module

    def pooled(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def train(self, batches: list[Batch]) -> None:
        for batch in batches:
            batch = batch.expand()
            loss = logloss(self.model(self.pooled(batch)).squeeze(1), batch.labels)
            for opt in self.optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in self.optimizers:
                opt.step()

    def evaluate(self, batches: list[Batch]) -> dict[str, float]:
        labels, scores, planted = [], [], []
        with torch.no_grad():
            for batch in batches:
                batch = batch.expand()
                scores.append(self.model(self.pooled(batch)).squeeze(1).numpy())
                labels.append(batch.labels)
                planted.append(batch.probabilities)
        y = np.concatenate(labels)
        return {"auc": auc(y, np.concatenate(scores)), "planted_auc": auc(y, np.concatenate(planted))}


class PyTorchPeer(_TorchLoop):
    """nn.EmbeddingBag(sparse=True) per group + SparseAdam (or sparse Adagrad)."""

    def __init__(self, names: list[str], dim: int, optimizer: str):
        self.names = names
        self.bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(VOCAB, dim, mode="sum", sparse=True) for _ in names])
        with torch.no_grad():
            for bag in self.bags:
                bag.weight.normal_(0.0, 0.01)
        self.model = dense_model(dim * len(names))
        sparse = (torch.optim.SparseAdam(list(self.bags.parameters()), lr=SPARSE_LR["adam"], eps=EPS["adam"])
                  if optimizer == "adam" else
                  torch.optim.Adagrad(self.bags.parameters(), lr=SPARSE_LR["adagrad"], eps=EPS["adagrad"]))
        self.optimizers = [sparse, torch.optim.Adam(self.model.parameters(), lr=DENSE_LR)]

    def pooled(self, batch: Batch) -> torch.Tensor:
        parts = []
        for name, bag in zip(self.names, self.bags):
            ids, offsets = batch.sparse[name][:2]
            parts.append(bag(torch.from_numpy(ids), torch.from_numpy(offsets[:-1])))
        return torch.cat(parts, dim=1)


class TorchRecPeer(_TorchLoop):
    """TorchRec FusedEmbeddingBagCollection (fbgemm CPU tables, Adagrad fused into backward)."""

    def __init__(self, names: list[str], dim: int, optimizer: str):
        modules = pytest.importorskip("torchrec.modules.fused_embedding_modules",
                                      reason="torchrec is not installed (pip install --no-deps torchrec==1.8.0)")
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        if optimizer != "adagrad":
            pytest.skip("fbgemm's CPU tables offer SGD and Adagrad only")
        self.names, self.kjt = names, KeyedJaggedTensor
        tables = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=dim, num_embeddings=VOCAB, feature_names=[n])
                  for n in names]
        self.ebc = modules.FusedEmbeddingBagCollection(
            tables=tables, optimizer_type=torch.optim.Adagrad,
            optimizer_kwargs={"lr": SPARSE_LR["adagrad"], "eps": EPS["adagrad"]}, device=torch.device("cpu"))
        self.model = dense_model(dim * len(names))
        self.optimizers = [torch.optim.Adam(self.model.parameters(), lr=DENSE_LR)]

    def pooled(self, batch: Batch) -> torch.Tensor:
        values = np.concatenate([batch.sparse[n][0] for n in self.names])
        lengths = np.concatenate([np.diff(batch.sparse[n][1]) for n in self.names])
        features = self.kjt.from_lengths_sync(keys=self.names, values=torch.from_numpy(values),
                                              lengths=torch.from_numpy(lengths))
        return self.ebc(features).values()


PEERS = {"sparsecore": SparsecorePeer, "pytorch": PyTorchPeer, "torchrec": TorchRecPeer}


def run_w2(benchmark: Any, peer: str, dim: int, optimizer: str, ratio: int = 1) -> None:
    sc.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    train, held_out = w2_data(ratio)
    names = w2_config(ratio).names()
    trainer = PEERS[peer](names, dim, optimizer)
    chunks: Iterator[list[Batch]] = (train[i:i + STEPS] for i in range(0, len(train), STEPS))
    benchmark.pedantic(trainer.train, setup=lambda: ((next(chunks),), {}), rounds=ROUNDS, warmup_rounds=WARMUP,
                       iterations=1)
    for rest in chunks:  # with --benchmark-disable only one round ran: train on the rest untimed
        trainer.train(rest)
    metrics = trainer.evaluate(held_out)
    samples = STEPS * BATCH
    benchmark.extra_info.update(samples_per_round=samples, auc=round(metrics["auc"], 4),
                                planted_auc=round(metrics["planted_auc"], 4), dim=dim, optimizer=optimizer,
                                compression=ratio, threads=THREADS)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["samples_per_s"] = round(samples / stats.stats.median)
    assert np.isfinite(metrics["auc"])


@pytest.mark.benchmark(group="w2-adam")
@pytest.mark.parametrize("peer", ["sparsecore", "pytorch"])
def test_w2_adam(benchmark, peer):
    run_w2(benchmark, peer, dim=18, optimizer="adam")


@pytest.mark.benchmark(group="w2-adagrad")
@pytest.mark.parametrize("peer,dim", [("sparsecore", 18), ("sparsecore", 20), ("pytorch", 20), ("torchrec", 20)])
def test_w2_adagrad(benchmark, peer, dim):
    run_w2(benchmark, peer, dim=dim, optimizer="adagrad")


@pytest.mark.benchmark(group="w2-compression")
@pytest.mark.parametrize("ratio", [1, 4, 16, 57])
def test_w2_compression(benchmark, ratio):
    run_w2(benchmark, "sparsecore", dim=18, optimizer="adagrad", ratio=ratio)
