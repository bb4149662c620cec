"""EmbeddingCollection: growable hash-table embeddings with fused sparse optimizers.

A batch is a mapping ``{table name: (ids, offsets[, weights])}`` in CSR form: ``ids`` int64[n],
``offsets`` int64[B+1] with ``offsets[0] == 0``, non-decreasing, ``offsets[B] == n``, and
optional per-id ``weights`` float32[n]. NumPy arrays and CPU torch tensors are accepted
(zero-copy); torch in gives torch out.

Offsets conventions. ``offsets`` of length B+1 ending at ``len(ids)`` are the CSR form above.
Offsets in torch's ``nn.EmbeddingBag`` form (``include_last_offset=False``: B start offsets,
the last bag running to the end of ``ids``) are accepted too: offsets whose last entry is less
than ``len(ids)`` can only be start offsets, so ``len(ids)`` is appended. The one ambiguous
case is start offsets whose last bag is empty (last entry == ``len(ids)``), which read as CSR
with one bag fewer: pass ``include_last_offset=False`` to ``prepare``/``forward``/
``evaluate``/``backward`` to say the offsets are start offsets (``True``: they must be CSR).

Dtypes. Ids and offsets of any integer dtype are converted to int64 (uint64 ids keep their
64 bits), and lists or other array-likes of integers are converted with ``np.asarray``;
float ids (or offsets), strings and other non-integer data raise ``TypeError``. Weights and
gradients must be float32 (no silent precision change): other dtypes raise ``TypeError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from . import _core
from ._arrays import as_float32, as_int64, is_torch, to_torch
from ._deprecated import warn
from . import _compressed
from .config import TableConfig, tables_to_json

__all__ = ["EmbeddingCollection", "PreparedBatch"]

GroupInput = Union[tuple, Mapping]


class PreparedBatch:
    """A validated, deduplicated batch; its rows are pulled (embedded: at prepare; on
    parameter servers: by its first forward or :meth:`EmbeddingCollection.pooled_rows`).

    Produced by :meth:`EmbeddingCollection.prepare`; pass it to ``forward`` and ``backward``
    in place of the raw batch to dedup once. It holds everything backward needs, so several
    prepared batches may be in flight at once (pipelining).
    """

    __slots__ = ("_core", "names", "offsets", "torch", "train", "expansion")

    def __init__(self, core: Any, names: list[str], offsets: list[np.ndarray], torch_out: bool, train: bool,
                 expansion: Optional[_compressed.Expansion] = None):
        self._core = core
        self.names = names
        self.offsets = offsets
        self.torch = torch_out
        self.train = train
        # How the groups of compressed tables map onto their component groups (None: none).
        self.expansion = expansion

    def _core_span(self, name: str) -> range:
        i = self.names.index(name)
        if self.expansion is None:
            return range(i, i + 1)
        first, count = self.expansion.spans[i]
        return range(first, first + count)

    def num_unique(self, name: str) -> int:
        """Distinct ids of group ``name`` in this batch (of a compressed table: distinct
        component rows, summed over its components)."""
        return sum(self._core.num_unique(i) for i in self._core_span(name))

    def unique_ids(self, name: str) -> np.ndarray:
        """The distinct ids of group ``name`` (of a compressed table: its components' distinct
        keys, one component after another)."""
        return np.concatenate([self._core.unique_ids(i) for i in self._core_span(name)])

    def __repr__(self) -> str:
        return f"PreparedBatch(groups={self.names}, train={self.train})"


class EmbeddingCollection:
    """The embedding tables of a model, driven one call per batch.

    Example::

        emb = sc.EmbeddingCollection({"user": sc.TableConfig(dim=18, optimizer=sc.Adagrad(lr=0.05))}, seed=7)
        out = emb.forward({"user": (ids, offsets)})      # {"user": float32[B, 18]}
        emb.backward({"user": (ids, offsets)}, {"user": grad})

    Rows are created on demand (``train=True``) with initial values that depend only on
    (seed, table name, id). Evaluation (``train=False``) never inserts: unknown ids read as zeros.

    ``server=sc.connect([...])`` (or ``server=sc.Server(...)``) keeps the rows on parameter
    servers instead, behind the same compiled collection: batches are planned here, the
    unique rows of every group are pulled when a batch is first pooled (all servers at once)
    and each row's summed gradient is pushed by ``backward``, so the results equal the
    embedded ones bit for bit. ``prepare``, ``pooled_rows``, ``forward``, ``evaluate``,
    ``backward``, ``lookup``, ``step`` and ``sizes`` work alike; ``save``/``restore`` name a
    snapshot kept by the servers (see :meth:`Cluster.save`); the calls that need rows in
    this process (``export``, ``memory_bytes``, ``bytes_per_row``) raise
    ``ValueError`` naming the call.
    """

    def __new__(cls, *args: Any, device: str = "cpu", server: Any = None, **kwargs: Any) -> "EmbeddingCollection":
        if server is not None and device != "cpu":
            raise ValueError("a collection on parameter servers takes no device")
        # Deprecated spelling of sparsecore.cuda.DeviceEmbeddingCollection (the CUDA twin, a
        # subclass with the same API); it keeps working, with a warning, for one more release.
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and cls is EmbeddingCollection:
            from .cuda import DeviceEmbeddingCollection

            warn("EmbeddingCollection(..., device='cuda')", "sparsecore.cuda.DeviceEmbeddingCollection(...)")
            return DeviceEmbeddingCollection(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, tables: Mapping[str, TableConfig], seed: int = 0, *, device: str = "cpu",
                 server: Any = None, _core_obj: Any = None):
        self._server: Any = None
        if _core_obj is not None:
            self._c = _core_obj
        else:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed must be an int, got {type(seed).__name__}")
            tables = _compressed.expand_tables(dict(tables))
            if server is None:
                self._c = _core.EmbeddingCollection(tables_to_json(dict(tables)), int(seed) & (2**64 - 1))
            else:
                from .server import cluster_of

                self._server = cluster_of(server)
                if not tables:
                    raise ValueError("tables (name -> TableConfig) must name at least one table")
                self._c = _core.remote_collection(tables_to_json(dict(tables)), int(seed) & (2**64 - 1),
                                                  self._server._c)
                for name, cfg in dict(tables).items():  # a reconnect creates them again
                    self._server._tables[name] = (cfg, seed)
        self._names = [self._c.table_name(i) for i in range(self._c.num_tables)]
        self._index = {n: i for i, n in enumerate(self._names)}
        self._configs = {n: TableConfig.from_dict(json.loads(self._c.table_config_json(i)))
                         for i, n in enumerate(self._names)}
        self._setup_compression()
        self._set_predicates(tables)

    def _set_predicates(self, tables: Mapping[str, TableConfig]) -> None:
        """Installs the expiry predicates (Python callables) the configs name."""
        for name, cfg in dict(tables).items():
            if cfg.expiry is not None and cfg.expiry.predicate is not None:
                if self._server is not None:
                    raise ValueError(f"table '{name}': an expiry predicate (a Python callable) runs in an embedded "
                                     f"collection only, not on parameter servers")
                self.set_expiry_predicate(name, cfg.expiry.predicate)

    def _setup_compression(self) -> None:
        """The user-facing tables: compressed tables stand for their component tables."""
        self._user_names, self._user_configs, self._compressed = _compressed.compressed_tables(
            self._names, self._configs, self._c.seed)
        self._layout_index = {name: i for i, name in enumerate(self._compressed)}
        self._layouts = _compressed.layouts(self._compressed, self._names, self._configs) if self._compressed \
            else None

    # ----------------------------------------------------------------------------- tables
    @property
    def tables(self) -> dict[str, TableConfig]:
        """The tables of the collection by name (a compressed table once, with its
        ``compression``; :meth:`sizes` and the statistics list its component tables)."""
        return dict(self._user_configs)

    def compression_info(self) -> dict[str, dict[str, Any]]:
        """Per compressed table: its ``compression`` spec string, ``rows`` (all component
        tables together: the fixed size), ``component_rows``, ``component_dim`` and
        ``exact_rows`` (a mixed table: frequent ids also own an exact row)."""
        return {n: _compressed.describe(t) for n, t in self._compressed.items()}

    @property
    def server(self) -> Any:
        """The :class:`~sparsecore.server.Cluster` whose servers hold the rows, or None when
        they live in this process."""
        return self._server

    @property
    def cluster(self) -> Any:
        """Deprecated: :attr:`server`."""
        warn("EmbeddingCollection.cluster", "EmbeddingCollection.server")
        return self._server

    def _local_only(self, method: str) -> None:
        if self._server is not None:
            raise ValueError(f"EmbeddingCollection.{method}: the tables of this collection live on parameter "
                             f"servers (server=...), not in this process")

    @property
    def names(self) -> list[str]:
        return list(self._user_names)

    @property
    def step(self) -> int:
        """Number of backward calls applied so far (the last_step stamped on updated rows)."""
        return self._c.step

    @property
    def seed(self) -> int:
        return self._c.seed

    def _table(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            if name in self._compressed:
                raise ValueError(f"table '{name}' is compressed: this call takes one of its component tables "
                                 f"({', '.join(self._names[i] for i in self._compressed[name].components)})") from None
            raise KeyError(f"unknown table '{name}' (tables: {', '.join(self._user_names)})") from None

    def table_size(self, name: str) -> int:
        """Rows currently held by table ``name`` (on parameter servers: summed over them)."""
        if self._server is not None:
            return self.sizes()[self._names[self._table(name)]]
        return self._c.table_size(self._table(name))

    def sizes(self) -> dict[str, int]:
        """Rows per table (on parameter servers: summed over every shard of every server)."""
        if self._server is not None:
            totals = dict.fromkeys(self._names, 0)
            for shard in self._server.stats():
                for name, t in shard.get("tables", {}).items():
                    if name in totals:
                        totals[name] += int(t["rows"])
            return totals
        return {n: self._c.table_size(i) for i, n in enumerate(self._names)}

    def admission_stats(self) -> dict[str, dict[str, int]]:
        """Feature admission counts of each table with ``TableConfig(admission=...)``:
        ``admitted`` (ids that became rows), ``pending`` (ids sighted, not yet admitted; with a
        Bloom filter an estimate), ``rejected`` (sightings that did not admit their id) and
        ``dropped_gradients`` (gradients of ids without a row, one per id and update). On
        parameter servers the counts are summed over every shard."""
        if self._server is not None:
            totals: dict[str, dict[str, int]] = {}
            for shard in self._server.stats():
                for name, t in shard.get("tables", {}).items():
                    if name in self._index and "admission" in t:
                        acc = totals.setdefault(name, dict.fromkeys(t["admission"], 0))
                        for key, value in t["admission"].items():
                            acc[key] += int(value)
            return totals
        out = {}
        for i, n in enumerate(self._names):
            s = self._c.table_admission_stats(i)
            if s is not None:
                out[n] = dict(s)
        return out

    def table_stats(self) -> dict[str, dict[str, int]]:
        """Statistics of every table, one dict of ints each: ``rows``, ``bytes`` (index and
        row records) and the feature admission counts of :meth:`admission_stats` (zero for a
        table without admission); every table has the same keys, in a fixed order. On
        parameter servers each is summed over every shard of every server."""
        fields = _core.TABLE_STATS_FIELDS
        if self._server is not None:
            totals = {n: dict.fromkeys(fields, 0) for n in self._names}
            for shard in self._server.stats():
                for name, t in shard.get("tables", {}).items():
                    if name in totals:
                        for key in fields:
                            totals[name][key] += int(t.get(key, 0))
            return totals
        return {n: dict(self._c.table_stats(i)) for i, n in enumerate(self._names)}
    def expiry_stats(self) -> dict[str, dict[str, int]]:
        """Expiry and capacity counts of each table with ``TableConfig(expiry=...)``:
        ``expired`` (rows removed by a rule), ``evicted`` (rows removed to make room),
        ``refused`` (new ids left without a row because the table was full) and
        ``dropped_gradients`` (gradients of refused ids, for tables without admission, which
        counts them otherwise). On parameter servers the counts are summed over every shard."""
        keys = ("expired", "evicted", "refused", "dropped_gradients")
        if self._server is not None:
            totals: dict[str, dict[str, int]] = {}
            for shard in self._server.stats():
                for name, t in shard.get("tables", {}).items():
                    if name in self._index and "expiry" in t:
                        acc = totals.setdefault(name, dict.fromkeys(keys, 0))
                        for key in keys:
                            acc[key] += int(t["expiry"][key])
            return totals
        out = {}
        for i, n in enumerate(self._names):
            s = self._c.table_expiry_stats(i)
            if s is not None:
                out[n] = dict(s)
        return out

    def expire(self, name: Optional[str] = None) -> int:
        """Removes now the rows that the expiry rules of table ``name`` (None: every table with
        expiry) name, in one pass; returns how many. Safe while other threads train, as
        :meth:`erase`. On parameter servers every shard expires its own rows."""
        names = [name] if name is not None else [n for n, c in self._configs.items() if c.expiry is not None]
        removed = 0
        for n in names:
            t = self._table(n)
            removed += self._server.expire(n) if self._server is not None else self._c.expire(t)
        return removed

    def set_expiry_predicate(self, name: str, predicate: Any) -> None:
        """Sets (or, with None, clears) the predicate of table ``name``, whose config must say
        it has one (``Expiry(predicate=...)``): ``predicate(id, update_count, last_step)``
        returns True for a row to expire. Needed again after :meth:`load`, which cannot
        restore a callable (:meth:`restore` keeps the one set)."""
        self._local_only("set_expiry_predicate")
        if predicate is not None and not callable(predicate):
            raise TypeError(f"table '{name}': expiry predicate must be callable or None, "
                            f"got {type(predicate).__name__}")
        self._c.set_expiry_predicate(self._table(name), predicate)

    def set_expiry_clock(self, name: str, clock: Any) -> None:
        """Replaces the wall clock of table ``name``'s ``ttl_seconds`` rule by ``clock()``
        (seconds as a float; None: the system clock), e.g. to test or replay a stream. The
        step times recorded so far are dropped (times of two clocks do not compare)."""
        self._local_only("set_expiry_clock")
        if clock is not None and not callable(clock):
            raise TypeError(f"table '{name}': expiry clock must be callable or None, got {type(clock).__name__}")
        self._c.set_expiry_clock(self._table(name), clock)

    def memory_bytes(self) -> int:
        """Bytes held by all tables (index and rows)."""
        self._local_only("memory_bytes")
        return self._c.memory_bytes()

    def bytes_per_row(self, name: str) -> int:
        """Bytes of one row record (weights, optimizer state, metadata) of table ``name``."""
        self._local_only("bytes_per_row")
        return self._c.table_row_bytes(self._table(name))

    def lookup(self, name: str, ids: Any, *, insert: bool = False) -> Any:
        """Rows of ``ids`` in table ``name`` as float32[n, dim]; unknown ids read the table's
        default row (zeros unless ``TableConfig(default_value=...)``) unless ``insert`` (then
        they are created first). Of a compressed table: each id's composed row (its component
        rows never trained read zeros). Safe while other threads train, erase or evict: each
        row read is one the id had during the call."""
        torch_out = is_torch(ids)
        if name in self._compressed:  # the composed rows: bags of one id each
            ids_np = as_int64(ids, f"ids of table '{name}'")
            bags = {name: (ids_np, np.arange(len(ids_np) + 1, dtype=np.int64))}
            got = self.forward(bags, train=True) if insert else self.evaluate(bags)
            out = got[name]
            if isinstance(out, tuple):
                out = out[0].reshape(len(ids_np), -1)
            out = np.asarray(out, dtype=np.float32)
            return to_torch(out) if torch_out else out
        t = self._table(name)
        ids_np = as_int64(ids, f"ids of table '{name}'")
        if self._server is not None:
            out = self._server.lookup(name, ids_np, insert=insert)
        else:
            out = self._c.lookup(t, ids_np, insert)
        return to_torch(out) if torch_out else out

    def erase(self, name: str, ids: Any) -> int:
        """Removes ``ids`` from table ``name``; returns how many were present. Safe while other
        threads train: it waits for their running calls, and batches prepared before it look
        their rows up again (an erased id that a later backward trains starts afresh). On
        parameter servers each server erases the ids it owns."""
        t = self._table(name)
        ids_np = as_int64(ids, f"ids of table '{name}'")
        if self._server is not None:
            return self._server.erase(name, ids_np)
        return self._c.erase(t, ids_np)

    def prune(self) -> dict[str, int]:
        """Removes the rows of every Group Lasso table whose weights are all exactly zero (the
        group soft-threshold zeroes a whole row at once) and returns how many rows each table
        lost (0 for tables of other optimizers). The rows leave the table, so checkpoints and
        exports no longer hold them; a pruned id reads the table's default row (zeros unless
        ``TableConfig(default_value=...)``, so outputs do not change) and starts afresh from
        its initial values if training sees it again. ``TableConfig(prune_every=N)`` prunes
        automatically every N steps (on parameter servers too, where this method is refused).
        Safe while other threads train, as ``erase``."""
        self._local_only("prune")
        return dict(zip(self._names, (int(n) for n in self._c.prune())))

    def export(self, name: str) -> dict[str, np.ndarray]:
        """Every row of table ``name``: ``keys`` int64[n], ``weights`` float32[n, dim], ``state``
        float32[n, state_dim], ``update_count`` and ``last_step`` int64[n]."""
        self._local_only("export")
        t = self._table(name)
        keys, rows, count, last = self._c.export(t)
        dim = self._configs[name].dim
        return {"keys": keys, "weights": rows[:, :dim], "state": rows[:, dim:],
                "update_count": count, "last_step": last}

    # ------------------------------------------------------------------ incremental export
    def export_full(self, path: Union[str, os.PathLike], *, dtype: str = "fp32") -> int:
        """Writes every row's weights into the stream directory ``path`` as the export
        ``full-<version>`` and returns its version, the collection's :attr:`step`. ``dtype``:
        "fp32", "fp16", "int8" or "int4" (rowwise, as :class:`QuantizedRows`; tolerances in
        ``serving/export_format.h``). Crash-safe: the export appears whole or not at all. Run
        it between training steps (not during a backward).
        A :class:`sparsecore.Subscriber` follows the directory.

        With rows on parameter servers (``server=``), ``path`` is the name of a stream under
        the servers' export directory and every shard writes its part at this step
        (:meth:`Cluster.export_full`)."""
        if self._server is not None:
            self._server.export_full(os.fspath(path), version=self.step, dtype=dtype)
            return self.step
        return _core.export_full(self._c, os.fspath(path), dtype)

    def export_delta(self, path: Union[str, os.PathLike], *, since: int, dtype: str = "fp32") -> int:
        """Writes ``delta-<since>-<version>`` into the stream directory ``path``: the rows
        changed after version ``since`` (updated, or inserted, also by ``lookup(insert=True)``)
        and the keys removed after it; returns the version (the current :attr:`step`).
        Applied after the export at ``since``, it gives exactly what ``export_full`` would
        write now. Raises ValueError when the removals after ``since`` are no longer retained
        (see :meth:`set_deleted_keys_capacity`) or ``since`` is newer than the step: take a
        full export then. With rows on parameter servers, as :meth:`export_full`."""
        if self._server is not None:
            self._server.export_delta(os.fspath(path), since=int(since), version=self.step, dtype=dtype)
            return self.step
        return _core.export_delta(self._c, os.fspath(path), int(since), dtype)

    def set_deleted_keys_capacity(self, capacity: int, table: Optional[str] = None) -> None:
        """How many removed keys each table remembers for :meth:`export_delta` (default 2**20;
        ``table`` None: every table). Past it the oldest half is forgotten, and a delta since
        a version before them raises ValueError asking for a full export."""
        self._local_only("set_deleted_keys_capacity")
        for name in [table] if table is not None else self.names:
            _core.set_deleted_keys_capacity(self._c, self._table(name), int(capacity))

    # ----------------------------------------------------------------------------- batches
    def prepare(self, batch: Mapping[str, GroupInput], *, train: bool = True,
                include_last_offset: Optional[bool] = None) -> PreparedBatch:
        """Validates ``batch``, dedups each group's ids and pulls their rows (inserting
        unknown ids when ``train``). Nothing changes if any group is invalid. On parameter
        servers nothing is sent yet: the rows are pulled when the batch is first pooled, so a
        batch prepared ahead still sees the updates trained before it.
        ``include_last_offset``: None reads CSR (B+1) or torch's start offsets (B) by the rule
        in the module docstring; True requires B+1, False means start offsets."""
        if isinstance(batch, PreparedBatch):
            return batch
        groups, names, offsets, torch_out, expansion = self._plan_groups(batch, include_last_offset)
        core = self._c.prepare(groups, bool(train))
        return PreparedBatch(core, names, offsets, torch_out, bool(train), expansion)

    def _core_groups(self, batch: Mapping[str, GroupInput],
                     include_last_offset: Optional[bool] = None) -> tuple[list[tuple], list[str], list[np.ndarray], bool]:
        """The core's form of a batch: (table index, ids, offsets, weights or None) per group
        (a compressed table's group becomes its component groups)."""
        groups, names, offsets, torch_out, _ = self._plan_groups(batch, include_last_offset)
        return groups, names, offsets, torch_out

    def _plan_groups(self, batch: Mapping[str, GroupInput], include_last_offset: Optional[bool] = None
                     ) -> tuple[list[tuple], list[str], list[np.ndarray], bool, Optional[_compressed.Expansion]]:
        """_core_groups and the expansion of its compressed groups (None when it has none)."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a mapping of table name -> (ids, offsets[, weights]), "
                            f"got {type(batch).__name__}")
        groups: list[tuple] = []
        names: list[str] = []
        offsets: list[np.ndarray] = []
        torch_out = False
        expansion = _compressed.Expansion() if self._compressed else None
        compressed: list[tuple] = []  # (layout, ids, offsets, weights) of the compressed groups
        for name, group in batch.items():
            t = self._table(name) if name not in self._compressed else -1
            ids, offs, weights = _unpack_group(name, group)
            torch_out = torch_out or is_torch(ids)
            ids_np = as_int64(ids, f"ids of group '{name}'")
            offs_np = _csr_offsets(name, as_int64(offs, f"offsets of group '{name}'"), len(ids_np),
                                   include_last_offset)
            w_np = None if weights is None else as_float32(weights, f"weights of group '{name}'")
            if expansion is not None:
                expansion.plans.append(len(compressed) if t < 0 else None)
                if t < 0:
                    compressed.append((self._layout_index[name], ids_np, offs_np, w_np))
            groups.append((t, ids_np, offs_np, w_np))
            names.append(name)
            offsets.append(offs_np)
        if expansion is None or not compressed:
            return groups, names, offsets, torch_out, None
        # One compiled call plans every compressed group (validated first; nothing changes).
        assert self._layouts is not None  # set whenever a table is compressed
        expansion.batch = _core.CompressedBatch(self._layouts, compressed)
        core: list[tuple] = []
        for group, plan in zip(groups, expansion.plans):
            first = len(core)
            if plan is None:
                core.append(group)
            else:
                core.extend(expansion.batch.core_groups(plan))
            expansion.spans.append((first, len(core) - first))
        return core, names, offsets, torch_out, expansion

    def _fuses(self, expansion: Optional[_compressed.Expansion]) -> bool:
        """Whether the compiled collection runs a batch's forward and backward with its
        compressed groups composed in the same call (the CPU collection, any store)."""
        return expansion is not None and isinstance(self._c, _core.EmbeddingCollection)

    def _forward_core(self, core: Any, expansion: Optional[_compressed.Expansion]) -> list[np.ndarray]:
        """The outputs of a prepared batch's groups (compressed groups composed)."""
        if self._fuses(expansion):
            return expansion.batch.forward(self._c, core, expansion.layout())  # type: ignore[union-attr]
        return self._composed(self._c.forward(core), expansion)

    def _composed(self, outs: list[np.ndarray], expansion: Optional[_compressed.Expansion]) -> list[np.ndarray]:
        """The outputs of a batch's groups from the outputs of its core groups."""
        if expansion is None:
            return outs
        composed = expansion.batch.compose([outs[first:first + count] for (first, count), plan
                                            in zip(expansion.spans, expansion.plans) if plan is not None])
        return [outs[first] if plan is None else composed[plan]
                for (first, _), plan in zip(expansion.spans, expansion.plans)]

    def _component_grads(self, prepared: PreparedBatch, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The gradients of a batch's core groups from the gradients of its groups."""
        expansion = prepared.expansion
        if expansion is None:
            return arrays
        if expansion.batch.needs_rows:  # a mul table's gradient needs its component rows
            self._forward_core(prepared._core, expansion)
        parts = expansion.batch.split([grad for grad, plan in zip(arrays, expansion.plans) if plan is not None])
        out: list[np.ndarray] = []
        for grad, plan in zip(arrays, expansion.plans):
            if plan is None:
                out.append(grad)
            else:
                out.extend(parts[plan])
        return out

    def pooled_rows(self, prepared: PreparedBatch) -> list[np.ndarray]:
        """The pooled rows of a prepared batch, one float32 array per group in the batch's
        order ([B, dim], or [B, L_max, dim] zero-padded for pooling "none"): :meth:`forward`
        without the per-group dict, for the torch bridge and pipelines that pull rows ahead."""
        return self._forward_core(prepared._core, prepared.expansion)

    def pool_into(self, prepared: PreparedBatch, outputs: Sequence[np.ndarray]) -> None:
        """Pools each group of ``prepared`` into ``outputs[g]``, a writeable float32 [B, dim]
        array whose rows may be strided: a column block ``m[:, c0:c1]`` of one matrix, so the
        groups land side by side in the dense model's input with no per-group array and no
        concatenation. Sum and mean pooling only (a sequence group raises ValueError)."""
        if prepared.expansion is None and hasattr(self._c, "forward_into"):
            self._c.forward_into(prepared._core, list(outputs))
            return
        for name, out, rows in zip(prepared.names, outputs, self.pooled_rows(prepared)):  # composed in Python
            if rows.ndim != 2:
                raise ValueError(f"pool_into: group '{name}' uses pooling 'none' (padded sequences); use forward()")
            out[...] = rows

    def backward_rows(self, prepared: PreparedBatch, grads: Sequence[np.ndarray]) -> int:
        """:meth:`backward` with each group's gradient a float32 [B, dim] array in ``prepared``'s
        group order whose rows may be strided (a column block of the dense model's input
        gradient), read in place. Returns the new step."""
        if prepared.expansion is None and hasattr(self._c, "forward_into"):
            return self._c.backward(prepared._core, list(grads))
        return self.backward(prepared, dict(zip(prepared.names, grads)))

    def forward(self, batch: Union[Mapping[str, GroupInput], PreparedBatch], *, train: bool = True,
                include_last_offset: Optional[bool] = None) -> dict[str, Any]:
        """Pooled embeddings per group: float32[B, dim] for sum/mean pooling, and for pooling
        "none" a tuple (float32[B, L_max, dim] zero-padded, int64 lengths[B])."""
        if isinstance(batch, PreparedBatch):
            names, offsets, torch_out = batch.names, batch.offsets, batch.torch
            outs = self._forward_core(batch._core, batch.expansion)
        elif train:
            prepared = self.prepare(batch, train=True, include_last_offset=include_last_offset)
            names, offsets, torch_out = prepared.names, prepared.offsets, prepared.torch
            outs = self._forward_core(prepared._core, prepared.expansion)
        else:
            # Evaluation pools straight from the ids: no dedup, nothing kept for a backward.
            groups, names, offsets, torch_out, expansion = self._plan_groups(batch, include_last_offset)
            outs = self._composed(self._c.evaluate(groups), expansion)
        result: dict[str, Any] = {}
        for name, out, offs in zip(names, outs, offsets):
            if self._user_configs[name].pooling == "none":
                lengths = np.diff(offs)
                result[name] = (to_torch(out), to_torch(lengths)) if torch_out else (out, lengths)
            else:
                result[name] = to_torch(out) if torch_out else out
        return result

    def evaluate(self, batch: Mapping[str, GroupInput], *, include_last_offset: Optional[bool] = None) -> dict[str, Any]:
        """forward(batch, train=False): never inserts; unknown ids read the table's default row
        (zeros unless ``TableConfig(default_value=...)``)."""
        if include_last_offset is None:  # the CUDA twin's forward reads offsets by the default rule only
            return self.forward(batch, train=False)
        return self.forward(batch, train=False, include_last_offset=include_last_offset)

    def backward(self, batch: Union[Mapping[str, GroupInput], PreparedBatch], grads: Mapping[str, Any], *,
                 include_last_offset: Optional[bool] = None) -> int:
        """Applies the fused optimizer update once per unique row, given the gradients of the
        forward outputs (same shapes). Gradients with NaN/Inf raise ValueError and change
        nothing; so does an update that would leave a row non-finite (a finite gradient too
        large for the optimizer): every row of the call stays as it was. Returns the new step."""
        if isinstance(batch, PreparedBatch):
            prepared = batch
        else:
            # The forward of this batch already counted its ids for feature admission: this
            # lookup is not a second sighting (ids without a row get their gradients dropped).
            groups, names, offsets, torch_out, expansion = self._plan_groups(batch, include_last_offset)
            prepared = PreparedBatch(self._c.prepare(groups, True, False), names, offsets, torch_out, True, expansion)
        arrays = [as_float32(g, f"gradient of group '{n}'") for n, g in zip(prepared.names, _grads_in_order(prepared, grads))]
        expansion = prepared.expansion
        if self._fuses(expansion):
            if expansion.batch.needs_rows:  # type: ignore[union-attr]  # a mul table's gradient needs its rows
                self._forward_core(prepared._core, expansion)
            return expansion.batch.backward(self._c, prepared._core, expansion.layout(), arrays)  # type: ignore
        return self._c.backward(prepared._core, self._component_grads(prepared, arrays))

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, path: Union[str, os.PathLike, None] = None, *, overwrite: bool = False) -> Optional[str]:
        """Writes a checkpoint directory (rows, optimizer state and metadata, a manifest).

        The files go to a fresh directory beside ``path`` that then replaces it in one atomic
        rename, so a crash at any instant leaves the previous checkpoint at ``path``. Refuses
        to replace a finished checkpoint unless ``overwrite``, and never replaces a directory
        holding anything else. One save at a time per ``path``.

        On parameter servers ``path`` is the name of a snapshot that the servers keep in their
        snapshot directory (default ``step-<step>``, see :meth:`Cluster.save`); returns it."""
        if self._server is not None:
            name = path if path is None or isinstance(path, (int, np.integer)) else os.fspath(path)
            return self._server.save(name, step=self.step, overwrite=overwrite)
        if path is None:
            raise TypeError("EmbeddingCollection.save() needs a path")
        self._c.save(os.fspath(path), overwrite)
        return None

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "EmbeddingCollection":
        """Reads a checkpoint written by :meth:`save`; any thread count, any shard layout.
        Damaged or forged files (sizes, dims or counts that disagree with the manifest,
        symlinks, anything but regular files) raise :class:`CorruptDataError`."""
        return cls({}, _core_obj=_core.EmbeddingCollection.load(os.fspath(path)))

    def restore(self, path: Union[str, os.PathLike, None] = None) -> None:
        """Replaces this collection's rows and step with a checkpoint's; unchanged on error.
        On parameter servers ``path`` names a snapshot of the servers (None: the newest
        complete one, see :meth:`Cluster.restore`)."""
        if self._server is not None:
            name = path if path is None or isinstance(path, (int, np.integer)) else os.fspath(path)
            self._c.step = self._server.restore(name)
            return
        if path is None:
            raise TypeError("EmbeddingCollection.restore() needs a path")
        self._c.restore(os.fspath(path))
        # The checkpoint's configs (optimizer, storage) replace this collection's.
        self._configs = {n: TableConfig.from_dict(json.loads(self._c.table_config_json(i)))
                         for i, n in enumerate(self._names)}
        self._setup_compression()

    def __repr__(self) -> str:
        if self._server is not None:
            servers = self._server._addresses or "embedded"
            return f"EmbeddingCollection({self._names}, servers={servers}, step={self.step})"
        tables = ", ".join(f"{n}(dim={c.dim}, {type(c.optimizer).__name__}, "
                           f"{'fp16, ' if c.storage == 'fp16' else ''}rows={self._c.table_size(i)})"
                           for i, (n, c) in enumerate(self._configs.items()))
        return f"EmbeddingCollection([{tables}], step={self.step})"


def _grads_in_order(prepared: PreparedBatch, grads: Mapping[str, Any]) -> list[Any]:
    """The gradients of a prepared batch's groups in its order; exactly its groups."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a mapping of table name -> array, got {type(grads).__name__}")
    missing = [n for n in prepared.names if n not in grads]
    extra = [n for n in grads if n not in prepared.names]
    if missing or extra:
        raise ValueError(f"grads must have exactly the batch's groups {prepared.names}; "
                         f"missing {missing}, unexpected {extra}")
    return [grads[n] for n in prepared.names]


def _csr_offsets(name: str, offsets: np.ndarray, num_ids: int, include_last_offset: Optional[bool]) -> np.ndarray:
    """``offsets`` in the CSR form (B+1 entries ending at ``num_ids``), converting torch's
    start offsets (B entries) by the rule of the module docstring. Other errors (a first entry
    that is not 0, decreasing offsets) are left to the engine's validation."""
    if include_last_offset is not None and not isinstance(include_last_offset, bool):
        raise TypeError(f"include_last_offset must be True, False or None, got {include_last_offset!r}")
    if offsets.ndim != 1 or offsets.size == 0:
        return offsets
    if offsets[-1] > num_ids or (include_last_offset is True and offsets[-1] != num_ids):
        raise ValueError(
            f"group '{name}': the last offset, {int(offsets[-1])}, must equal the number of ids ({num_ids}) for "
            f"CSR offsets (B+1 entries) or be at most it for torch's start offsets (B entries, "
            f"include_last_offset=False); to convert start offsets to CSR, append len(ids)")
    if include_last_offset is True:
        return offsets
    if include_last_offset is False or offsets[-1] < num_ids:
        return np.append(offsets, np.int64(num_ids))
    return offsets


def _unpack_group(name: str, group: GroupInput) -> tuple[Any, Any, Any]:
    if isinstance(group, Mapping):
        if "ids" not in group or "offsets" not in group:
            raise ValueError(f"group '{name}' must have 'ids' and 'offsets'")
        return group["ids"], group["offsets"], group.get("weights")
    if isinstance(group, (tuple, list)) and len(group) in (2, 3):
        return group[0], group[1], group[2] if len(group) == 3 else None
    raise TypeError(f"group '{name}' must be (ids, offsets) or (ids, offsets, weights), got {type(group).__name__}")
