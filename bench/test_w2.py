"""W2 (XDL paper) end to end: 23 feature groups, dim 18, batch 5000, MLP 414-200-80-1.

One round = ``STEPS`` training steps (forward, backward, fused sparse update, dense Adam
step) on batches no peer has seen; every peer gets the same batches, the same MLP init and
the same thread count, and after timing its held-out AUC is stored next to the planted
optimum in ``extra_info`` (so throughput is compared at equal AUC). Groups:

- ``w2-adam``: sparsecore Trainer (lazy Adam, global-step bias correction) embedded, against
  1 and 2 local parameter-server processes, and pure PyTorch (``nn.EmbeddingBag(sparse=True)``
  + ``SparseAdam``), dim 18, uncompressed samples.
- ``w2-adagrad``: Adagrad, the optimizer fbgemm's CPU tables offer: sparsecore at dim 18 and
  20 embedded and at dim 18 against 1 and 2 servers, pure PyTorch and TorchRec
  ``FusedEmbeddingBagCollection`` at dim 20 (fbgemm needs dims that are multiples of 4).
- ``w2-compression``: sparsecore at sample-compression ratios 1, 4, 16, 57 (XDL figure 6):
  the 12 user groups are sent once per page view.
- ``w2-files``: the same training batches written once to a libffm file (``field:id:1``
  tokens, field k = group k), then read by ``sparsecore.data.LibffmReader`` on both sides: the
  Trainer takes the reader as its source, the PyTorch loop calls ``next_batch()`` itself. The
  reader's cost (its own parsing thread) is inside every round.

The cluster cases (``sparsecore-cluster-1``, ``sparsecore-cluster-2``) train the same batches
from the same MLP init with the same hyperparameters and worker threads as the embedded case,
through ``Trainer(..., server=sparsecore.connect(...))``, against ``sparsecore server``
processes on loopback started for the case (``--shards`` and ``SPARSECORE_NUM_THREADS`` from
``SPARSECORE_BENCH_SERVER_THREADS``, default 1 each; stopped when the case ends, failed or not).
They record their samples/s over the embedded case's of the same session (``ratio_to_embedded``,
when the embedded case ran first) and the pull and push requests per training step counted by
the servers. Results are bit-identical to embedded, so the held-out AUC must be the same (checked).

Except in ``w2-files``, batches are generated before timing (no reader is measured). ``SPARSECORE_BENCH_SCALE=tiny``
shrinks everything for the CI smoke run; ``SPARSECORE_BENCH_THREADS`` sets every peer's thread
count (default 2). Peers that are not installed are skipped.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import Batch, LibffmReader, SyntheticConfig, SyntheticData, auc  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

import rpc_bench  # noqa: E402
import workload  # noqa: E402

TINY = os.environ.get("SPARSECORE_BENCH_SCALE", "") == "tiny"
BATCH = 500 if TINY else 5000
VOCAB = 5_000 if TINY else 100_000
STEPS = 2 if TINY else 5  # steps per timed round
ROUNDS = 1 if TINY else 5
WARMUP = 1
EVAL_SAMPLES = 2_000 if TINY else 50_000
THREADS = int(os.environ.get("SPARSECORE_BENCH_THREADS", "2"))  # 2 for every peer (bench/README.md)
SERVER_THREADS = int(os.environ.get("SPARSECORE_BENCH_SERVER_THREADS", "1"))  # per server process
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


_FILES: dict[str, str] = {}


def w2_file() -> str:
    """The training batches of w2_data(1) as one libffm file, written once per session."""
    if "path" not in _FILES:
        folder = tempfile.mkdtemp(prefix="sparsecore-w2-")
        atexit.register(shutil.rmtree, folder, True)
        path = os.path.join(folder, "w2.ffm")
        workload.write_libffm(w2_data(1)[0], w2_config(1).names(), path)
        _FILES["path"] = path
    return _FILES["path"]


def w2_reader(names: list[str]) -> LibffmReader:
    return LibffmReader(w2_file(), fields=names, batch_size=BATCH)


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
    """The sparsecore Trainer on the embedded collection (``server=None``) or a cluster."""

    def __init__(self, names: list[str], dim: int, optimizer: str, server: Any = None, source: Any = None):
        opt = (sc.Adam(lr=SPARSE_LR["adam"], eps=EPS["adam"], use_global_step=True) if optimizer == "adam"
               else sc.Adagrad(lr=SPARSE_LR["adagrad"], eps=EPS["adagrad"]))
        tables = {n: sc.TableConfig(dim=dim, optimizer=opt) for n in names}
        self.model = dense_model(dim * len(names))
        self.source = ListSource() if source is None else source
        self.trainer = Trainer(self.source, self.model, tables, progress=False, log_every=0, server=server,
                               dense_optimizer=torch.optim.Adam(self.model.parameters(), lr=DENSE_LR))

    def train(self, batches: list[Batch]) -> None:
        self.source.feed(batches)
        self.trainer.fit()

    def evaluate(self, batches: list[Batch]) -> dict[str, float]:
        return self.trainer.evaluate(ListSource(batches))

    def close(self) -> None:
        pass


class ClusterPeer(SparsecorePeer):
    """The same Trainer against ``servers`` local ``sparsecore server`` processes."""

    def __init__(self, names: list[str], dim: int, optimizer: str, servers: int):
        self.servers = servers
        self._stack = ExitStack()
        try:
            self.processes = rpc_bench.sparsecore_server_processes(self._stack, servers, shards=SERVER_THREADS,
                                                                   threads=SERVER_THREADS)
            self.cluster = sc.connect([p.endpoint for p in self.processes], timeout=120)
            super().__init__(names, dim, optimizer, server=self.cluster)
        except BaseException:
            self._stack.close()
            raise

    def requests(self) -> tuple[int, int]:
        """(pull, push) row requests the servers have received so far, over all shards."""
        stats = self.cluster.stats()
        return sum(s["pull_requests"] for s in stats), sum(s["push_requests"] for s in stats)

    def servers_cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes)

    def close(self) -> None:
        self._stack.close()


class _TorchLoop:
    """The loop both PyTorch peers share: pooled [B, groups * dim] -> MLP -> logloss."""

    model: torch.nn.Module

    def pooled(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass

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


class FileSparsecorePeer(SparsecorePeer):
    """The sparsecore Trainer reading the W2 file: each round trains the next batches of it."""

    def __init__(self, names: list[str], dim: int, optimizer: str):
        super().__init__(names, dim, optimizer, source=w2_reader(names))

    def train(self, batches: list[Batch]) -> None:
        self.trainer.fit(len(batches))


class FilePyTorchPeer(PyTorchPeer):
    """The PyTorch loop reading the W2 file with the same reader, one batch per step."""

    def __init__(self, names: list[str], dim: int, optimizer: str):
        super().__init__(names, dim, optimizer)
        self.reader = w2_reader(names)

    def train(self, batches: list[Batch]) -> None:
        super().train([self.reader.next_batch() for _ in batches])


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


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


PEERS = {"sparsecore": SparsecorePeer, "pytorch": PyTorchPeer, "torchrec": TorchRecPeer,
         "sparsecore-cluster-1": lambda *a: ClusterPeer(*a, servers=1),
         "sparsecore-cluster-2": lambda *a: ClusterPeer(*a, servers=2),
         "sparsecore-files": FileSparsecorePeer, "pytorch-files": FilePyTorchPeer}

# The embedded case's samples/s and AUC per (optimizer, dim, compression), for the cluster
# cases of the same session.
_EMBEDDED: dict[tuple[str, int, int], dict[str, float]] = {}


def run_w2(benchmark: Any, peer: str, dim: int, optimizer: str, ratio: int = 1) -> None:
    sc.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    train, held_out = w2_data(ratio)
    names = w2_config(ratio).names()
    load_average = os.getloadavg()[0]  # the machine is shared: say how busy it was
    trainer = PEERS[peer](names, dim, optimizer)
    try:
        cluster = trainer if isinstance(trainer, ClusterPeer) else None
        requests_before = cluster.requests() if cluster else (0, 0)
        cpu_before = (self_cpu_seconds(), cluster.servers_cpu_seconds() if cluster else 0.0)
        chunks: Iterator[list[Batch]] = (train[i:i + STEPS] for i in range(0, len(train), STEPS))
        benchmark.pedantic(trainer.train, setup=lambda: ((next(chunks),), {}), rounds=ROUNDS,
                           warmup_rounds=WARMUP, iterations=1)
        for rest in chunks:  # with --benchmark-disable only one round ran: train on the rest untimed
            trainer.train(rest)
        # CPU per step of this process (every thread) and of the servers: steadier than wall
        # time on a shared machine, and it shows what the wall time of a busy machine hides.
        info: dict[str, Any] = {"cpu_ms_per_step": round(1e3 * (self_cpu_seconds() - cpu_before[0]) / len(train), 1)}
        if cluster is not None:
            info["servers_cpu_ms_per_step"] = round(1e3 * (cluster.servers_cpu_seconds() - cpu_before[1]) / len(train), 1)
            pulls, pushes = (after - before for after, before in zip(cluster.requests(), requests_before))
            info.update(servers=cluster.servers, server_threads=SERVER_THREADS,
                        pull_requests_per_step=round(pulls / len(train), 2),
                        push_requests_per_step=round(pushes / len(train), 2))
        metrics = trainer.evaluate(held_out)
    finally:
        trainer.close()
    samples = STEPS * BATCH
    info.update(peer=peer, samples_per_round=samples, auc=round(metrics["auc"], 4),
                planted_auc=round(metrics["planted_auc"], 4), dim=dim, optimizer=optimizer, compression=ratio,
                threads=THREADS, steps=len(train), load_average=round(load_average, 2))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        info["samples_per_s"] = round(samples / stats.stats.median)
    key = (optimizer, dim, ratio)
    if peer == "sparsecore":
        _EMBEDDED[key] = {"auc": metrics["auc"], "samples_per_s": info.get("samples_per_s", 0)}
    elif peer.startswith("sparsecore-cluster") and key in _EMBEDDED:
        embedded = _EMBEDDED[key]
        # Bit-identical training: the held-out AUC must equal the embedded case's.
        info["auc_minus_embedded"] = float(metrics["auc"] - embedded["auc"])
        if embedded["samples_per_s"] and "samples_per_s" in info:
            info["ratio_to_embedded"] = round(info["samples_per_s"] / embedded["samples_per_s"], 3)
    benchmark.extra_info.update(info)
    assert np.isfinite(metrics["auc"])
    # Throughput is compared at equal AUC: a cluster case that trains differently from the
    # embedded one measures something else (the training itself is bit-identical).
    assert abs(info.get("auc_minus_embedded", 0.0)) < 1e-4, f"AUC {metrics['auc']} differs from embedded"


@pytest.mark.benchmark(group="w2-adam")
@pytest.mark.parametrize("peer", ["sparsecore", "sparsecore-cluster-1", "sparsecore-cluster-2", "pytorch"])
def test_w2_adam(benchmark, peer):
    run_w2(benchmark, peer, dim=18, optimizer="adam")


@pytest.mark.benchmark(group="w2-adagrad")
@pytest.mark.parametrize("peer,dim", [("sparsecore", 18), ("sparsecore-cluster-1", 18), ("sparsecore-cluster-2", 18),
                                      ("sparsecore", 20), ("pytorch", 20), ("torchrec", 20)])
def test_w2_adagrad(benchmark, peer, dim):
    run_w2(benchmark, peer, dim=dim, optimizer="adagrad")


@pytest.mark.benchmark(group="w2-files")
@pytest.mark.parametrize("peer", ["sparsecore-files", "pytorch-files"])
def test_w2_files(benchmark, peer):
    run_w2(benchmark, peer, dim=18, optimizer="adam")


@pytest.mark.benchmark(group="w2-compression")
@pytest.mark.parametrize("ratio", [1, 4, 16, 57])
def test_w2_compression(benchmark, ratio):
    run_w2(benchmark, "sparsecore", dim=18, optimizer="adagrad", ratio=ratio)
