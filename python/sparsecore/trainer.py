"""Trainer: end-to-end CTR training on the embedded default (XDL's SparseNet + DenseNet).

The step is the data path of docs/architecture.md, pipelined as XDL's is: the C++ training
pipeline (``csrc/sparsecore/train``) reads the next batches on its own thread and prepares them
(validate, dedup, pull = lookup-or-insert) while the main thread runs the dense step of the
current one. Only the call into the Python source holds the GIL; the compiled readers and the
engine release it, so the stages run in parallel; the queue is bounded (``prefetch``).

Row values are read at forward time, after the previous batch's update, so prefetching does
not make training stale. ``stale_sparse=True`` also pulls the values of batch k+1 during the
dense step of batch k (one step of staleness, more overlap).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from . import _core
from ._deprecated import warn
from .config import TableConfig
from .data import auc, gauc, logloss
from .data.memory import as_source, is_source
from .embedding import EmbeddingCollection, PreparedBatch
from .threads import ThreadsSpec, apply_default_split
from .torch import EmbeddingBagCollection

__all__ = ["Trainer", "TrainResult", "describe_metrics", "describe_tables"]

log = logging.getLogger("sparsecore.trainer")

_MARKER = "trainer.json"
# What a trainer checkpoint directory holds; an existing directory with anything else is not
# replaced by a save.
_CHECKPOINT_ENTRIES = {_MARKER, "dense.pt", "embedding", _MARKER + ".tmp", "dense.pt.tmp"}


def _check_replaceable(path: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise ValueError(f"'{path}' exists and is not a directory")
    entries = set(os.listdir(path))
    if _MARKER in entries and not overwrite:
        raise ValueError(f"a finished trainer checkpoint already exists at '{path}'")
    foreign = sorted(entries - _CHECKPOINT_ENTRIES)
    if foreign:
        raise ValueError(f"'{path}' holds {foreign[:3]}, which are not part of a trainer checkpoint; "
                         "refusing to replace it")


@dataclass
class TrainResult:
    steps: int
    samples: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """Trains a sparse embedding collection and a dense PyTorch model together.

    Args:
        source: a data source from :mod:`sparsecore.data` (``next_batch()``, ``state_dict()``,
            ``load_state_dict()``), e.g. ``SyntheticData`` or ``CriteoReader``; or in-memory
            data, read ``batch_size`` samples at a time for ``epochs`` epochs (``shuffle``: a
            new order each epoch, drawn from ``seed``): a pandas DataFrame (labels from its
            ``label`` column), a mapping group -> column of ids, ``(features, labels)`` or
            ``(features, labels, dense)``, or a list of batches (see
            :class:`sparsecore.data.ArrayData` and :class:`sparsecore.data.BatchList`).
        model: the dense network. With ``model_input="concat"`` it gets one float32 tensor
            [B, sum of pooled dims (+ dense features)]; with ``"dict"`` it is called as
            ``model(pooled: dict, dense: Tensor | None)``. It returns logits [B] or [B, 1].
        tables: the feature spec: source group name -> TableConfig (dim, optimizer, pooling).
            Groups of the source that are not listed are not read into the model.
        dense_optimizer: a torch optimizer over ``model``'s parameters (default Adam, lr 1e-3).
        use_dense: feed the source's dense float features to the model (concat mode).
        prefetch: batches read and prepared ahead of the dense step.
        stale_sparse: also pull batch k+1's rows during the dense step of batch k.
        deterministic: seeds torch and asks it for deterministic kernels; with
            ``stale_sparse=False`` a run is then bit-reproducible, resumed or not.
        batch_size: samples per step of in-memory data (default 1024; not for readers or a
            list of batches, which are batched already).
        epochs: passes over in-memory data.
        shuffle: a new order of in-memory data each epoch, drawn from (``seed``, epoch).
        label: the label column of a DataFrame.
        threads: how torch's intra-op pool and sparsecore's pool share the cores: ``"auto"``
            (default: half each, unless a count was already chosen; see
            :mod:`sparsecore.threads`), ``(torch_threads, sparse_threads)``, or None to leave
            both as they are.
        progressive: progressive validation over a :class:`sparsecore.data.FollowDirectory`
            source: :meth:`fit` evaluates each new partition with the model trained on every
            partition before it, then trains on it; AUC and logloss per partition go to the log
            and to :attr:`history` (entries with ``partition``).

    Every ``log_every`` steps the log and :attr:`history` get the loss, the throughput and
    each table's statistics (``rows``, and ``tables``: :meth:`table_stats`).
    """

    def __init__(self, source: Any, model: nn.Module, tables: Mapping[str, TableConfig], *,
                 dense_optimizer: Optional[torch.optim.Optimizer] = None,
                 loss: Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = "logloss",
                 model_input: str = "concat", use_dense: bool = False, seed: int = 0,
                 prefetch: int = 2, stale_sparse: bool = False, deterministic: bool = False,
                 log_every: int = 100, progress: bool = True,
                 embedding: Optional[EmbeddingBagCollection] = None, server: Any = None,
                 batch_size: Optional[int] = None, epochs: int = 1, shuffle: bool = False, label: str = "label",
                 threads: ThreadsSpec = "auto", progressive: bool = False):
        if model_input not in ("concat", "dict"):
            raise ValueError(f"model_input must be 'concat' or 'dict', got {model_input!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if progressive and not hasattr(source, "advance"):
            raise ValueError("progressive=True needs a source that follows partitions "
                             f"(sparsecore.data.FollowDirectory), got {type(source).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        source = as_source(source, batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=seed, label=label)
        self._batch_size, self._label = batch_size, label
        apply_default_split(threads)
        if deterministic:
            torch.manual_seed(seed)
            torch.use_deterministic_algorithms(True)
        self.source = source
        self.model = model
        self.tables = dict(tables)
        if not self.tables:
            raise ValueError("tables (the feature spec) must name at least one group")
        if embedding is None and server is not None:  # a sparsecore.connect(...) cluster
            embedding = EmbeddingBagCollection(collection=EmbeddingCollection(self.tables, seed, server=server),
                                               threads=None)
        self.embedding = embedding or EmbeddingBagCollection(self.tables, seed, threads=None)
        self.dense_optimizer = dense_optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
        self._loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if loss == "logloss":
            self._loss = nn.BCEWithLogitsLoss()
            self._binary = True
        elif callable(loss):
            self._loss = loss
            self._binary = False
        else:
            raise ValueError(f"loss must be 'logloss' or a callable, got {loss!r}")
        self.model_input = model_input
        self.use_dense = use_dense
        self.prefetch = prefetch
        self.stale_sparse = stale_sparse
        self.progressive = bool(progressive)
        if self.progressive:
            source.stop_at_partition_end = True
        self.log_every = log_every
        self.progress = progress
        self.step = 0
        self.samples = 0
        self.history: list[dict[str, Any]] = []
        self._reader_state = source.state_dict() if hasattr(source, "state_dict") else None
        self._checked = False

    # ------------------------------------------------------------------------------ checks
    def _check_spec(self, batch: Any) -> None:
        """Errors that must stop a run before its first update."""
        unknown = [g for g in self.tables if g not in batch.sparse]
        if unknown:
            raise ValueError(f"feature spec names unknown columns {unknown}; the data has {list(batch.sparse)}")
        if self.use_dense and batch.dense is None:
            raise ValueError("use_dense=True but the data has no dense features")
        if self.model_input == "concat":
            sequence = [g for g, c in self.tables.items() if c.pooling == "none"]
            if sequence:
                raise ValueError(f"groups {sequence} use pooling 'none' (sequences); use model_input='dict'")
            width = sum(c.dim for c in self.tables.values())
            if self.use_dense:
                width += batch.dense.shape[1]
            try:
                with torch.no_grad():
                    self.model.eval()
                    out = self.model(torch.zeros(2, width))
            except RuntimeError as e:
                raise ValueError(f"the dense model does not take the pooled width {width} "
                                 f"({' + '.join(f'{g}:{c.dim}' for g, c in self.tables.items())}"
                                 f"{' + dense' if self.use_dense else ''}): {e}") from None
            finally:
                self.model.train()
            if out.numel() != 2:
                raise ValueError(f"the dense model must return one logit per sample, got shape {tuple(out.shape)}")
        self._checked = True

    def _check_labels(self, batch: Any) -> None:
        if batch.labels is None:
            raise ValueError("the data has no labels")
        if self._binary:
            labels = np.asarray(batch.labels)
            if not np.all((labels == 0) | (labels == 1)):
                bad = labels[(labels != 0) & (labels != 1)][:5]
                raise ValueError(f"logloss needs labels in {{0, 1}}, got {bad.tolist()} "
                                 f"in the batch after step {self.step}")

    # ------------------------------------------------------------------------------ pipeline
    def _select(self, batch: Any) -> Any:
        """The batch restricted to the feature spec's groups."""
        from .data import Batch

        sparse = {g: batch.sparse[g] for g in self.tables}
        return Batch(sparse=sparse, labels=batch.labels, dense=batch.dense, sample_group=batch.sample_group,
                     shared=frozenset(g for g in batch.shared if g in self.tables),
                     probabilities=batch.probabilities, users=batch.users, num_samples=batch.num_samples)

    def _native(self) -> Any:
        """The compiled collection the C++ pipeline prepares on, or None when the collection
        plans by itself (the CUDA twin): then ``produce`` prepares in Python. A collection on
        parameter servers is compiled too: its pipeline plans on the C++ thread. A collection
        with compressed tables prepares in Python too."""
        collection = self.embedding.collection
        core = getattr(collection, "_c", None)
        if getattr(collection, "_compressed", None):
            return None  # compressed groups are planned by the collection's prepare (ops/compressed_batch.h)
        return core if type(collection) is EmbeddingCollection and type(core) is _core.EmbeddingCollection else None

    def _produce(self, native: Any) -> Callable[[], Any]:
        """What the pipeline's thread calls for each batch (under the GIL): read, check and
        select it; return ``(payload, groups)`` with the groups the C++ side prepares, or None
        at the end of the data."""
        collection = self.embedding.collection

        def produce() -> Any:
            batch = self.source.next_batch()
            if batch is None:
                return None
            state = self.source.state_dict() if hasattr(self.source, "state_dict") else None
            if not self._checked:  # before the first prepare inserts a row
                self._check_spec(batch)
            self._check_labels(batch)
            batch = self._select(batch)
            if native is not None:
                groups, names, offsets, torch_out = collection._core_groups(batch.sparse)
                return (batch, state, names, offsets, torch_out), groups
            prepared = collection.prepare(batch.sparse, train=True)
            pulled = collection.pooled_rows(prepared) if self.stale_sparse else None
            return (batch, prepared, pulled, state), []

        return produce

    def _pipeline(self, max_steps: Optional[int]) -> Any:
        """The C++ training pipeline (sparsecore.train): a thread reads, checks and prepares
        up to ``prefetch`` batches ahead of the dense step; with ``stale_sparse`` it also pulls
        their rows."""
        native = self._native()
        return _core.StepPipeline(native, self._produce(native), groups=list(self.tables) if native else [],
                                  prefetch=self.prefetch, max_steps=-1 if max_steps is None else max_steps,
                                  pull_rows=bool(self.stale_sparse and native is not None))

    def _next_step(self, pipeline: Any) -> Any:
        """(batch, prepared, pulled, state) of the next step, or None at the end."""
        item = pipeline.next()
        if item is None:
            return None
        payload, core_prepared, pulled, _ = item
        if core_prepared is None:
            return payload
        batch, state, names, offsets, torch_out = payload
        return batch, PreparedBatch(core_prepared, names, offsets, torch_out, True), pulled, state

    def _logits(self, batch: Any, prepared: Any = None, pulled: Any = None) -> torch.Tensor:
        # np.require copies only arrays torch cannot share (read-only ones, e.g. from pandas/Arrow).
        dense = torch.from_numpy(np.require(batch.dense, np.float32, ["C", "W"])) if (
            self.use_dense and batch.dense is not None) else None
        if self.model_input == "dict":
            out = self.model(self.embedding(batch, prepared=prepared, pulled=pulled), dense)
        else:
            # The pooled rows (and dense features) are written straight into the model's input.
            out = self.model(self.embedding.forward_concat(batch, prepared=prepared, pulled=pulled, dense=dense))
        return out.reshape(-1)

    def fit(self, steps: Optional[int] = None, *, every: int = 0,
            on_interval: Optional[Callable[["Trainer"], None]] = None) -> TrainResult:
        """Trains for ``steps`` batches (None: until the source ends).

        ``on_interval(trainer)`` runs on the training thread after every ``every``-th global
        step (evaluation, checkpoints); the reader keeps preparing batches meanwhile.

        With ``progressive=True`` each partition of the followed directory is first evaluated
        (:meth:`validate_partition`), then trained on; batches are not read ahead across a
        partition's end, so the evaluation sees the model of every earlier partition only.
        """
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        if not self.progressive:
            return self._fit_steps(steps, every, on_interval)
        start = time.perf_counter()
        done_steps = done_samples = 0
        # A resumed (or second) fit goes on with the partition it is in; else the next one.
        need_next = self.source.partition is None
        while steps is None or done_steps < steps:
            if need_next and self.source.advance() is None:
                break  # no new partition within the source's timeout
            if not self.source.evaluated:
                self.validate_partition()
            part = self._fit_steps(None if steps is None else steps - done_steps, every, on_interval)
            done_steps += part.steps
            done_samples += part.samples
            need_next = True  # the partition ended (or the steps did, which ends the loop)
        return TrainResult(done_steps, done_samples, time.perf_counter() - start, list(self.history))

    def validate_partition(self) -> Optional[dict[str, Any]]:
        """Progressive validation of the source's current partition: AUC, logloss (and GAUC
        when the data names users) of the model as it is, on the partition's samples, before
        any training on them. Recorded in :attr:`history` as ``{"partition", "step", "auc",
        "logloss", "samples", ...}`` and logged; returns that entry (None for a partition
        without samples)."""
        reader = self.source.partition_reader()
        metrics = self._evaluate(reader) if reader is not None else None
        entry = None
        if metrics is not None:
            entry = {"partition": self.source.partition, "step": self.step, **metrics}
            self.history.append(entry)
            log.info("partition %s progressive %s", self.source.partition, describe_metrics(metrics))
        self.source.evaluated = True
        self._reader_state = self.source.state_dict()
        return entry

    def _fit_steps(self, steps: Optional[int], every: int,
                   on_interval: Optional[Callable[["Trainer"], None]]) -> TrainResult:
        self.model.train()
        self.embedding.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", dynamic_ncols=True, leave=False)
        start = time.perf_counter()
        window_start, window_samples, window_loss, window_n = start, 0, 0.0, 0
        done_steps = done_samples = 0
        pipeline = self._pipeline(steps)
        try:
            while True:
                item = self._next_step(pipeline)
                if item is None:
                    break
                batch, prepared, pulled, state = item
                logits = self._logits(batch, prepared, pulled)
                labels = torch.from_numpy(np.require(batch.labels, np.float32, ["C", "W"]))
                loss = self._loss(logits, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step + 1}")
                self.dense_optimizer.zero_grad(set_to_none=True)
                loss.backward()  # also applies the fused sparse update
                self.dense_optimizer.step()
                self.step += 1
                self.samples += batch.num_samples
                self._reader_state = state
                done_steps += 1
                done_samples += batch.num_samples
                window_samples += batch.num_samples
                window_loss += loss.item() * batch.num_samples
                window_n += batch.num_samples
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if self.log_every and self.step % self.log_every == 0:
                    now = time.perf_counter()
                    tables = self.table_stats()
                    entry = {"step": self.step, "loss": window_loss / max(window_n, 1),
                             "samples_per_s": window_samples / max(now - window_start, 1e-9),
                             "rows": {name: t["rows"] for name, t in tables.items()}, "tables": tables}
                    self.history.append(entry)
                    log.info("step %d loss %.4f %.0f samples/s rows %d", self.step, entry["loss"],
                             entry["samples_per_s"], sum(entry["rows"].values()))
                    log.info("step %d tables: %s", self.step, describe_tables(tables))
                    window_start, window_samples, window_loss, window_n = now, 0, 0.0, 0
                if on_interval is not None and every and self.step % every == 0:
                    on_interval(self)
        finally:
            pipeline.close()
            if bar is not None:
                if steps is not None and done_steps < steps:
                    bar.total = done_steps  # the source ended first: the bar shows what was trained
                    bar.refresh()
                bar.close()
            # Batches read ahead were not trained on: the source goes back to the last one used.
            if self._reader_state is not None and hasattr(self.source, "load_state_dict"):
                self.source.load_state_dict(self._reader_state)
        return TrainResult(done_steps, done_samples, time.perf_counter() - start, list(self.history))

    def table_stats(self) -> dict[str, dict[str, int]]:
        """Statistics of every table now (:meth:`EmbeddingCollection.table_stats`: rows, bytes
        and the admission counts); a collection without them (the CUDA twin) gives rows only."""
        collection = self.embedding.collection
        if hasattr(collection, "table_stats"):
            return collection.table_stats()
        return {name: {"rows": int(rows)} for name, rows in collection.sizes().items()}

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, source: Any, max_batches: Optional[int] = None) -> dict[str, float]:
        """AUC, GAUC (when the data names users) and logloss of the model on ``source``.
        Evaluation never inserts rows: ids not seen in training read as zeros.

        Synthetic data also gives the planted optimum on the same samples: ``planted_auc``
        (and ``planted_gauc``), the scores of the true click probabilities. ``source`` may be
        in-memory data, as for the constructor (read once, in order)."""
        if not is_source(source):
            source = as_source(source, batch_size=self._batch_size, label=self._label)
        out = self._evaluate(source, max_batches)
        if out is None:
            raise ValueError("the evaluation source yielded no batch")
        return out

    def _evaluate(self, source: Any, max_batches: Optional[int] = None) -> Optional[dict[str, float]]:
        """:meth:`evaluate` of a source; None when it yields no batch."""
        self.model.eval()
        self.embedding.eval()
        labels, scores, users, planted = [], [], [], []
        try:
            with torch.no_grad():
                n = 0
                while max_batches is None or n < max_batches:
                    batch = source.next_batch()
                    if batch is None:
                        break
                    batch = self._select(batch)
                    logits = self._logits(batch)
                    labels.append(np.asarray(batch.labels, np.float64))
                    scores.append(torch.sigmoid(logits).double().numpy())
                    if batch.users is not None:
                        users.append(np.asarray(batch.users, np.int64))
                    if batch.probabilities is not None:
                        planted.append(np.asarray(batch.probabilities, np.float64))
                    n += 1
        finally:
            self.model.train()
            self.embedding.train()
        if not labels:
            return None
        y, p = np.concatenate(labels), np.concatenate(scores)
        out = {"auc": auc(y, p), "logloss": logloss(y, p), "samples": float(len(y))}
        u = np.concatenate(users) if len(users) == len(labels) else None
        if u is not None:
            out["gauc"] = gauc(y, p, u)
        if len(planted) == len(labels):
            truth = np.concatenate(planted)
            out["planted_auc"] = auc(y, truth)
            if u is not None:
                out["planted_gauc"] = gauc(y, truth, u)
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, path: Union[str, os.PathLike], *, overwrite: bool = False) -> None:
        """Tables, dense model, dense optimizer, step, reader position and RNG state, as the
        directory ``path`` (``trainer.json``, ``dense.pt``, ``embedding/``).

        Everything is written to a fresh directory beside ``path`` that then replaces it in one
        atomic step, so a crash at any instant leaves the previous checkpoint loadable. With a
        cluster (``Trainer(server=...)``) the tables go to a server snapshot named
        ``step-<step>`` (the servers need a ``--snapshot-dir``) that ``trainer.json`` names.
        Refuses to replace a finished checkpoint unless ``overwrite``, and never replaces a
        directory that holds anything else. One save at a time per ``path``."""
        path = os.path.normpath(os.fspath(path))
        parent, base = os.path.split(os.path.abspath(path))
        _check_replaceable(path, overwrite)
        os.makedirs(parent, exist_ok=True)
        _core.remove_stale_stagings(parent, f".{base}.saving-")  # saves that died before their switch
        staging = os.path.join(parent, f".{base}.saving-{secrets.token_hex(8)}")
        os.mkdir(staging)
        try:
            meta = {"format": "sparsecore.trainer", "format_version": 1, "step": self.step, "samples": self.samples,
                    "reader": self._reader_state, "history": self.history}
            collection = self.embedding.collection
            if getattr(collection, "server", None) is not None:
                meta["server_snapshot"] = collection.save(f"step-{self.step}", overwrite=True)
            else:
                collection.save(os.path.join(staging, "embedding"))
            dense = {"model": self.model.state_dict(), "optimizer": self.dense_optimizer.state_dict(),
                     "torch_rng": torch.get_rng_state()}
            with open(os.path.join(staging, "dense.pt"), "wb") as f:
                torch.save(dense, f)
                f.flush()
                os.fsync(f.fileno())
            with open(os.path.join(staging, _MARKER), "w") as f:
                json.dump(meta, f, default=_json_default)
                f.flush()
                os.fsync(f.fileno())
            # Every file is synced (the tables by their own save): the switch syncs the
            # directories, then renames once.
            _core.commit_directory(staging, path, files_synced=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("saved checkpoint %s at step %d", path, self.step)

    def load(self, path: Union[str, os.PathLike]) -> None:
        """Deprecated: :meth:`restore` (``load`` names constructors across sparsecore)."""
        warn("Trainer.load(path)", "Trainer.restore(path)")
        self.restore(path)

    def restore(self, path: Union[str, os.PathLike]) -> None:
        """Restores, in place, everything :meth:`save` wrote; the next :meth:`fit` continues
        exactly."""
        path = os.fspath(path)
        where = _core.committed_directory(path)
        marker = os.path.join(where, _MARKER) if where else ""
        if not marker or not os.path.isfile(marker):
            raise FileNotFoundError(f"no finished trainer checkpoint at '{path}'")
        try:
            with open(marker) as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or meta.get("format") != "sparsecore.trainer":
                raise ValueError("not a trainer checkpoint")
            step, samples = int(meta["step"]), int(meta["samples"])
        except (ValueError, KeyError, TypeError) as e:
            raise _core.CorruptDataError(f"trainer checkpoint '{marker}' is damaged: {e}") from None
        dense = torch.load(os.path.join(where, "dense.pt"), weights_only=False)
        if "server_snapshot" in meta:
            self.embedding.collection.restore(str(meta["server_snapshot"]))
        else:
            self.embedding.collection.restore(os.path.join(where, "embedding"))
        self.model.load_state_dict(dense["model"])
        self.dense_optimizer.load_state_dict(dense["optimizer"])
        torch.set_rng_state(dense["torch_rng"])
        self.step = step
        self.samples = samples
        self.history = list(meta.get("history", []))
        self._reader_state = meta.get("reader")
        if self._reader_state is not None:
            self.source.load_state_dict(self._reader_state)

    def resume(self, path: Union[str, os.PathLike]) -> bool:
        """Loads the checkpoint at ``path`` when there is a finished one (logging which, and at
        what step) and returns True; otherwise warns that training starts from step 0 and
        returns False. A damaged checkpoint raises instead of being skipped."""
        path = os.fspath(path)
        where = _core.committed_directory(path)
        if not where or not os.path.isfile(os.path.join(where, _MARKER)):
            log.warning("no finished checkpoint at %s; training starts from step 0", path)
            return False
        self.restore(path)
        log.info("resumed from checkpoint %s at step %d (%d samples)", where, self.step, self.samples)
        return True

    # ------------------------------------------------------------------------------ plots
    def plot(self, path: Union[str, os.PathLike], eval_points: Sequence[tuple[int, float]] = (),
             planted_auc: Optional[float] = None) -> None:
        """Writes a PNG of training loss, evaluation AUC, samples/s and table rows over steps
        (matplotlib; :func:`sparsecore.plot.plot_training`)."""
        from .plot import plot_training

        plot_training(path, self.history, eval_points, planted_auc)


def describe_metrics(m: Mapping[str, float]) -> str:
    """One line of :meth:`Trainer.evaluate`'s result, the planted optimum beside each metric."""
    line = f"AUC {m['auc']:.4f}"
    if "planted_auc" in m:
        line += f" (planted optimum {m['planted_auc']:.4f}, gap {m['planted_auc'] - m['auc']:.4f})"
    if "gauc" in m:
        line += f"  GAUC {m['gauc']:.4f}"
        if "planted_gauc" in m:
            line += f" (planted {m['planted_gauc']:.4f})"
    return line + f"  logloss {m['logloss']:.4f}  on {int(m['samples']):,} samples"


def describe_tables(tables: Mapping[str, Mapping[str, int]]) -> str:
    """One log line of per-table statistics: rows and bytes of each table, and the counters
    that are not zero (admission: admitted, rejected, pending, dropped gradients)."""
    parts = []
    for name, t in tables.items():
        text = f"{name} rows {t.get('rows', 0):,}"
        if "bytes" in t:
            text += f" ({t['bytes'] / 2**20:.1f} MiB)"
        extra = [f"{key} {value:,}" for key, value in t.items() if key not in ("rows", "bytes") and value]
        if extra:
            text += " " + " ".join(extra)
        parts.append(text)
    return "; ".join(parts)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint")
