"""Parameter server: :class:`Server` (embedded, the default, or listening on a port) and
:func:`connect`, which returns a :class:`Cluster` client for one or many servers.

Embedded (no socket)::

    server = sc.Server()                       # in-process shards
    ps = server.client()
    ps.create_table("user", sc.TableConfig(dim=18, optimizer=sc.Adagrad(lr=0.05)), seed=7)
    rows = ps.lookup("user", ids, insert=True) # float32[n, 18]; duplicates allowed
    ps.push("user", ids, grads)                # fused update, once per unique row

Distributed: start ``sparsecore server --port 7000 --shards 2`` (or ``main([...])``) on each
host, then in every worker ``ps = sc.connect(["h1:7000", "h2:7000"], worker=rank,
num_workers=world)``; the rest of the code is the same. With ``num_workers`` set, pushes are
synchronous: the gradients of all workers for a step are summed per row in worker order and
applied once before any push of that step returns. Without it, each push applies at once.
A synchronous step that a worker leaves or rejoins is abandoned (nothing of it applied) and
every waiting push raises :class:`RpcStepAbortedError`; see :func:`connect`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from . import _core
from ._arrays import as_float32, as_int64
from .config import TableConfig, tables_to_json
from .embedding import EmbeddingCollection
from ._deprecated import module_getattr, warn

__all__ = ["Cluster", "ClusterCollection", "Server", "connect", "latest_snapshot", "main"]

log = logging.getLogger("sparsecore.server")


def latest_snapshot(root: str | os.PathLike) -> Optional[str]:
    """Newest complete snapshot directory under a snapshot directory ``root``
    (``root/step-<k>``), or None. Its name (``os.path.basename``) is what
    :meth:`Cluster.restore` takes."""
    path = _core.latest_snapshot(os.fspath(root))
    return path or None


def _snapshot_name(name: str | int | None, step: int) -> str:
    if name is None:
        return f"step-{int(step)}"
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return f"step-{int(name)}"
    if not isinstance(name, str):
        raise TypeError(f"a snapshot name must be a str or a step (int), got {type(name).__name__} "
                        "(snapshots are named, not placed: the servers keep them under their --snapshot-dir)")
    return name


class Cluster:
    """A worker's client of the parameter servers (or of an embedded :class:`Server`)."""

    def __init__(self, core: Any, addresses: Sequence[str] = (), **connect_args: Any):
        self._c = core
        self._addresses = list(addresses)
        self._connect_args = connect_args
        self._tables: dict[str, tuple[TableConfig, int]] = {}

    @property
    def total_shards(self) -> int:
        return self._c.total_shards

    def close(self) -> None:
        """Ends the connections to every server now (safe from any thread, and more than
        once): the servers count this worker gone at once, so in synchronous and bounded
        staleness modes the others never wait for it (a synchronous step it leaves is
        abandoned: their waiting calls raise :class:`RpcStepAbortedError`). Calls in flight
        and later ones raise :class:`RpcConnectionError`."""
        self._c.close()

    def create_table(self, name: str, config: TableConfig, seed: int = 0) -> None:
        """Creates table ``name`` on every shard (a no-op when it exists with this config)."""
        cfg = json.loads(tables_to_json({name: config}))[0]
        self._c.create_table(json.dumps(cfg), int(seed) & (2**64 - 1))
        self._tables[name] = (config, seed)

    def lookup(self, name: str, ids: Any, *, insert: bool = False, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows of ``ids`` as float32[n, dim] (duplicates allowed), as
        :meth:`EmbeddingCollection.lookup`: unknown ids read as zeros unless ``insert`` (then
        they are created first, with the table's initializer). ``out``: a C-contiguous
        float32[n, dim] array to read the rows into (returned)."""
        if type(ids) is not np.ndarray or ids.dtype != np.int64 or not ids.flags.c_contiguous:
            ids = as_int64(ids, f"ids of table '{name}'")
        return self._c.pull(name, ids, bool(insert), out)

    def pull(self, name: str, ids: Any, *, train: bool = True, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Deprecated: ``lookup(name, ids, insert=train, out=out)`` (note the default)."""
        warn("Cluster.pull(name, ids, train=...)", "Cluster.lookup(name, ids, insert=...)")
        return self.lookup(name, ids, insert=train, out=out)

    def push(self, name: str, ids: Any, grads: Any, *, step: int = 0) -> None:
        """Applies ``grads`` (float32[n, dim]) to the rows of ``ids``; duplicates are summed."""
        self._c.push(name, as_int64(ids, f"ids of table '{name}'"), as_float32(grads, f"grads of table '{name}'"), step)

    def erase(self, name: str, ids: Any) -> int:
        """Removes ``ids`` (duplicates allowed) from table ``name`` on the shards that own them;
        returns how many were present."""
        return self._c.erase(name, as_int64(ids, f"ids of table '{name}'"))

    def expire(self, name: str) -> int:
        """Every shard removes the rows of table ``name`` that its expiry rules name now (each
        also expires incrementally at its push steps, ``Expiry(scan_per_step=...)``); returns
        how many."""
        return self._c.expire(name)

    def save(self, name: str | int | None = None, *, step: int = 0, overwrite: bool = False) -> str:
        """Snapshot of every shard, kept by the servers under their ``--snapshot-dir``
        (``Server(snapshot_dir=...)``) as ``name``: a plain name, or a step (``save(7)`` is
        ``"step-7"``, as is ``save(step=7)``); ``step`` is recorded in it. Every shard writes
        its part, then the snapshot appears whole in one switch: an interrupted save leaves
        the previous one. Refuses to replace a snapshot unless ``overwrite``, and refuses
        everything on servers without a snapshot directory. Returns the name."""
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool) and step == 0:
            step = int(name)
        return self._c.save(_snapshot_name(name, step), int(step), overwrite)

    def restore(self, name: str | int | None = None) -> int:
        """Every shard takes the rows it owns now from snapshot ``name`` (None: the newest
        complete ``step-<k>``); every shard is read and checked before any changes, so a
        damaged snapshot changes nothing. Returns the snapshot's step."""
        return self._c.restore("" if name is None else _snapshot_name(name, 0))

    def prune_snapshots(self, keep: int, *, prefix: str = "step-", protect: Sequence[str] = ()) -> list[str]:
        """Removes old snapshots from the servers' ``--snapshot-dir``: of the complete snapshots
        of the series ``prefix`` (names ``<prefix><n>`` or ``<prefix><n>-step-<k>``, newest =
        largest ``n``: ``"step-"`` for :meth:`save` by step, ``"c"`` for the coordinator's), all
        but the newest ``keep`` (>= 1) and those named in ``protect``. Only directories of the
        snapshot directory itself are removed (never through a symlink); saves in progress,
        incomplete snapshots and other names are left alone. Returns the names removed."""
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)):
            raise TypeError(f"keep must be an int, got {type(keep).__name__}")
        if isinstance(protect, str) or not all(isinstance(n, str) for n in protect):
            raise TypeError("protect must be a sequence of snapshot names (str)")
        return list(self._c.prune_snapshots(str(prefix), int(keep), list(protect)))

    def export_full(self, stream: str, *, version: int, dtype: str = "fp32") -> dict[str, int]:
        """A full export of every shard at ``version`` (the workers' step): each shard writes
        its part of ``full-<version>`` into ``<export_dir>/<stream>`` of its server
        (``Server(export_dir=...)``, ``sparsecore server --export-dir``); the parts together
        are one export that a :class:`sparsecore.Subscriber` of that directory applies. Call
        it between training steps (after a barrier when several workers train). ``dtype``:
        "fp32", "fp16", "int8" or "int4". Returns the rows and deleted keys written, summed over the
        shards."""
        return json.loads(self._c.export_rows(stream, False, 0, int(version), dtype))

    def export_delta(self, stream: str, *, since: int, version: int, dtype: str = "fp32") -> dict[str, int]:
        """As :meth:`export_full`, the rows changed after version ``since`` and the keys
        removed after it: ``delta-<since>-<version>``."""
        return json.loads(self._c.export_rows(stream, True, int(since), int(version), dtype))

    def kv_put(self, key: str, value: Any) -> None:
        """Stores a small JSON value (e.g. a reader position); saved with snapshots."""
        self._c.kv_put(key, json.dumps(value))

    def kv_get(self, key: str) -> Any:
        return json.loads(self._c.kv_get(key))

    def barrier(self, name: str, count: int) -> None:
        """Returns once ``count`` callers have entered barrier ``name``. For a synchronous
        worker it raises :class:`RpcStepAbortedError` when another worker leaves meanwhile, and
        :class:`RpcTimeoutError` past the client's ``timeout``."""
        self._c.barrier(name, count)

    def dense_pull(self, name: str, size: int, init: float = 0.0, *, shard: int = 0) -> np.ndarray:
        """Values of dense variable ``name`` (float32[size]) kept by global shard ``shard``;
        created there filled with ``init`` when absent (``size`` 0: it must exist)."""
        return self._c.dense_pull(name, size, init, shard)

    def dense_create(self, name: str, values: Any, optimizer: Any, *, shard: int = 0) -> None:
        """Creates dense variable ``name`` on global shard ``shard`` from ``values`` (float32,
        flattened) with a server-side ``optimizer`` (sc.SGD, sc.Momentum, sc.Adagrad, sc.Adam,
        ...: the update rules of the tables, the whole variable updated as one row). A no-op
        when it exists with the same size and optimizer; ValueError otherwise."""
        if not hasattr(optimizer, "to_dict"):
            raise TypeError(f"optimizer must be a sparsecore optimizer (sc.SGD, sc.Adam, ...), "
                            f"got {type(optimizer).__name__}")
        values = as_float32(np.ravel(values), f"values of dense variable '{name}'")
        self._c.dense_create(int(shard), name, values, json.dumps(optimizer.to_dict()))

    def dense_step(self, name: str, grads: Any, *, step: int = 0, shard: int = 0) -> np.ndarray:
        """Pushes the gradients (float32, flattened) of dense variable ``name`` (made by
        :meth:`dense_create`) and returns its values after the server's optimizer applied them:
        at once for an asynchronous (or bounded-staleness) worker; for synchronous workers once
        every worker pushed ``step``, to the sum of their gradients in worker order."""
        grads = as_float32(np.ravel(grads), f"gradients of dense variable '{name}'")
        return self._c.dense_step(int(shard), name, grads, int(step))

    def dense_push(self, name: str, grads: Any, lr: float) -> None:
        """w -= lr * grads on the server. ``lr`` must be finite and >= 0 and ``grads`` finite
        (ValueError otherwise; the variable is unchanged)."""
        self._c.dense_push(name, as_float32(grads, "grads"), lr)

    def stats(self) -> list[dict]:
        """One dict per shard: its tables (each with the table statistics of
        :meth:`EmbeddingCollection.table_stats` - ``rows``, ``bytes``, ``admitted``,
        ``rejected``, ``pending``, ``dropped_gradients`` - ``memory_bytes``, ``step``, and the
        ``admission`` and ``expiry`` counts of tables that have them, with the shard's
        ``capacity``) and, on a listening server, the row requests it received
        (``pull_requests``, ``push_requests``) and, in a bounded-staleness job, its gate
        (``staleness``: ``clocks`` per worker, ``departed`` workers, requests ``held``, and
        ``max_lead``, the largest lead of a request it admitted)."""
        return json.loads(self._c.stats())

    def collection(self, tables: Mapping[str, TableConfig], seed: int = 0) -> EmbeddingCollection:
        """Deprecated: ``sc.EmbeddingCollection(tables, seed, server=cluster)``."""
        warn("Cluster.collection(tables, seed)", "sc.EmbeddingCollection(tables, seed, server=cluster)")
        return EmbeddingCollection(tables, seed, server=self)

    def reconnect(self, timeout: float = 30.0) -> "Cluster":
        """Waits (bounded) until every server answers again and returns a fresh client."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fresh = connect(self._addresses, **self._connect_args)
                break
            except (_core.RpcConnectionError, _core.RpcTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for name, (cfg, seed) in self._tables.items():
            fresh.create_table(name, cfg, seed)
        return fresh


class ClusterCollection:
    """Deprecated: ``sc.EmbeddingCollection(tables, seed, server=cluster)``, which this returns
    (the collection whose rows live on the servers of ``cluster``)."""

    def __new__(cls, cluster: Cluster, tables: Mapping[str, TableConfig], seed: int = 0) -> Any:  # type: ignore[misc]
        warn("ClusterCollection(cluster, tables, seed)", "sc.EmbeddingCollection(tables, seed, server=cluster)")
        return EmbeddingCollection(tables, seed, server=cluster)


def cluster_of(server: Any) -> Cluster:
    """The :class:`Cluster` that ``EmbeddingCollection(..., server=...)`` keeps its rows on: a
    cluster (``sc.connect(...)``) as is, or a :class:`Server`'s :meth:`Server.client`."""
    if isinstance(server, Server):
        server = server.client()
    if not isinstance(server, Cluster):
        raise TypeError(f"server must be a sparsecore.Server or a cluster from sparsecore.connect(...), "
                        f"got {type(server).__name__}")
    return server


def _poll_us(poll: float) -> int:
    """A poll window in seconds (Server(poll=), connect(poll=)) as the core's microseconds."""
    if not 0 <= poll <= 10:
        raise ValueError(f"poll must be in [0, 10] seconds, got {poll}")
    return int(poll * 1e6)


def _timeout_ms(seconds: float, name: str) -> int:
    """A connection timeout in seconds (0: none) as the core's milliseconds."""
    if not 0 <= seconds <= 7 * 24 * 3600:
        raise ValueError(f"{name} must be in [0, 604800] seconds (0: none), got {seconds}")
    return int(round(seconds * 1000))


class Server:
    """A parameter server. ``port=None`` (the default): embedded, no socket; otherwise it
    listens on ``address:port`` (port 0 picks a free one, see :attr:`port`).

    Connections (listening servers only): ``handshake_timeout`` (seconds, 0: none) closes a
    connection that has not authenticated this long after it was accepted;
    ``idle_timeout`` (seconds, 0: none, the default) closes an authenticated connection
    silent this long with no request in progress (clients do not reconnect by themselves:
    a worker that may pause longer needs :meth:`Cluster.reconnect`). ``memory_budget``
    (bytes) bounds the request payloads being received over all connections at once; a
    request that does not fit is refused with :class:`RpcError` ("busy") and the connection
    goes on. Until a connection authenticates it may send only the handshake's small frame.

    ``snapshot_dir``: where this server keeps snapshots (created if missing). Clients save
    and restore snapshots by name only, confined to this directory; without it they are
    refused. At start the newest complete snapshot found there is restored (every shard, or
    none on error), and this server's parts of saves that never finished are removed (servers
    of one cluster share the directory; a peer's save in progress is left alone).
    ``keep_snapshots`` (0: keep all): after each save it commits (server 0 commits every save),
    the server removes all but the newest ``keep_snapshots`` complete ``step-<k>`` snapshots
    (:meth:`Cluster.prune_snapshots`).

    ``metrics_port`` (listening servers only; 0 picks a free one, see :attr:`metrics_port`):
    also serve Prometheus text at ``http://metrics_address:metrics_port/metrics`` (HTTP/1.1,
    GET only): per table and shard the rows, bytes and admission counts, RPC counters
    (requests, errors, bytes, connections) and process memory. ``metrics_address`` defaults to
    loopback, as ``address`` does. A metrics connection must send its request (and read the
    answer) within ``metrics_timeout`` seconds; at most 64 are open at once.

    ``export_dir``: where this server writes its parts of exports
    (:meth:`Cluster.export_full`, :meth:`Cluster.export_delta`), one stream directory per
    name a client gives; without it exports are refused.

    ``device``: where the shards keep their rows: ``"cpu"`` (the default), or ``"cuda"`` /
    ``"cuda:N"`` (a GPU, behind the same RPC layer: pulls and pushes run on the device row
    store with the same update rules, so they give the CPU server's results bit for bit;
    snapshots keep the CPU format and move between CPU and device servers). ``emulate=True``
    runs those device kernels on the CPU through the CUDA emulator (slow; for tests). Feature
    admission, a row capacity and incremental expiry decide as on a CPU server (the same ids
    admitted, kept and evicted); tables the device store cannot hold are refused at creation
    with :class:`ValueError` (``num_embeddings``, ``Expiry(eviction="sampled")``), and on a
    device table an update that overflows a row is refused and undone, as on a CPU server."""

    def __init__(self, port: Optional[int] = None, *, shards: int = 1, address: str = "127.0.0.1",
                 token: str = "", server_index: int = 0, num_servers: int = 1,
                 snapshot_dir: Optional[str] = None, poll: float = 0.0, idle_timeout: float = 0.0,
                 handshake_timeout: float = 10.0, memory_budget: int = 1 << 30,
                 metrics_port: Optional[int] = None, metrics_address: str = "127.0.0.1",
                 metrics_timeout: float = 10.0, export_dir: Optional[str] = None,
                 keep_snapshots: int = 0, device: str = "cpu", emulate: bool = False):
        if isinstance(keep_snapshots, bool) or not isinstance(keep_snapshots, int) or keep_snapshots < 0:
            raise ValueError(f"keep_snapshots must be an int >= 0, got {keep_snapshots!r}")
        if keep_snapshots and not snapshot_dir:
            raise ValueError("keep_snapshots needs a snapshot_dir")
        self.device = str(device)
        self.emulated = bool(emulate)
        device_name, _, index = self.device.partition(":")
        if device_name not in ("cpu", "cuda") or (index and (device_name != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if self.emulated and device_name != "cuda":
            raise ValueError("emulate=True runs a CUDA device on the CPU: it needs device='cuda'")
        self.snapshot_dir = os.fspath(snapshot_dir) if snapshot_dir else None
        self.export_dir = os.fspath(export_dir) if export_dir else None
        self._core = _core.PsServer(address, port or 0, shards, token, server_index, num_servers,
                                    poll_us=_poll_us(poll), idle_timeout_ms=_timeout_ms(idle_timeout, "idle_timeout"),
                                    handshake_timeout_ms=_timeout_ms(handshake_timeout, "handshake_timeout"),
                                    memory_budget_bytes=int(memory_budget), snapshot_dir=self.snapshot_dir or "",
                                    export_dir=self.export_dir or "", keep_snapshots=keep_snapshots,
                                    device=device_name, emulate=self.emulated, device_index=int(index) if index else -1)
        self.address = address
        self.restored_step: Optional[int] = None
        self.restored_snapshot: Optional[str] = None
        if self.snapshot_dir:
            snap = latest_snapshot(self.snapshot_dir)
            if snap:
                self.restored_snapshot = os.path.basename(snap)
                self.restored_step = self._core.restore(self.restored_snapshot)
                log.info("restored snapshot %s (step %d)", snap, self.restored_step)
            else:
                log.info("no complete snapshot in %s; starting empty", self.snapshot_dir)
        self.embedded = port is None
        self._metrics = None
        if metrics_port is not None:
            if self.embedded:
                raise ValueError("metrics_port needs a listening server (port=...)")
            if not 0 <= int(metrics_port) < 65536:
                raise ValueError(f"metrics_port must be in [0, 65535], got {metrics_port}")
            timeout_ms = _timeout_ms(metrics_timeout, "metrics_timeout")
            if timeout_ms < 1:
                raise ValueError(f"metrics_timeout must be > 0 seconds, got {metrics_timeout}")
            self._metrics = _core.PsMetricsServer(self._core, metrics_address, int(metrics_port), timeout_ms)
        self.metrics_address = metrics_address
        if not self.embedded:
            self._core.start()
            if self._metrics is not None:
                try:
                    self._metrics.start()
                except BaseException:
                    self._core.stop()
                    raise

    @property
    def port(self) -> Optional[int]:
        return None if self.embedded else self._core.port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def metrics_port(self) -> Optional[int]:
        """Port of the metrics endpoint (None without ``metrics_port``)."""
        return None if self._metrics is None else self._metrics.port

    def metrics(self) -> str:
        """The Prometheus text that ``GET /metrics`` answers (also for an embedded server)."""
        return _core.render_metrics(self._core)

    def client(self) -> Cluster:
        """A client of this server: direct calls when embedded, loopback RPC otherwise."""
        if self.embedded:
            return Cluster(_core.PsClient(self._core))
        return connect([self.endpoint])

    def stop(self) -> None:
        if self._metrics is not None:  # it reads the shards: it stops first
            self._metrics.stop()
        self._core.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def connect(addresses: Sequence[str] | str, *, token: str = "", timeout: Optional[float] = 300.0,
            worker: int = 0, num_workers: int = 0, heartbeat: Optional[float] = 30.0,
            poll: float = 0.0, mode: Optional[str] = None, staleness: int = 0,
            wire_dtype: str | Mapping[str, str] = "float32") -> Cluster:
    """Connects to every server ("host:port", in server-index order). ``num_workers`` > 0
    makes pushes synchronous across that many workers (``worker`` = this one's rank).

    ``mode`` picks how the ``num_workers`` workers of a job step together (every worker of
    the job must pass the same): ``"sync"`` (the default when ``num_workers`` > 0) sums the
    gradients of all workers per step; ``"async"`` (the default otherwise) applies each push
    at once and never waits; ``"ssp"`` (bounded staleness) applies each push at once, but a
    worker may run at most ``staleness`` steps ahead of the slowest worker: each server
    counts every worker's pushed steps and holds a pull or push of a worker further ahead
    until the slowest catches up (within ``timeout``; ``Cluster.stats()[i]["staleness"]``
    shows the clocks and the largest lead admitted). ``staleness=0`` is ``"sync"``. A worker
    whose connections close stops counting, so it never blocks the others; one that
    connects again resumes at the slowest worker's step.

    ``wire_dtype``: the dtype of rows and gradients on the wire, ``"float32"`` (the default)
    or ``"float16"`` (half the bytes), for every table or per table as a dict (table name ->
    dtype; tables not named stay float32). The servers keep float32 rows either way: with
    float16 a pull returns each row rounded to float16 (to nearest even) and a push applies
    each summed gradient rounded so. A row value beyond the float16 range (+-65504) reads as
    +-inf, and a push whose gradient would round to +-inf raises ValueError (nothing applied).

    ``timeout`` (seconds, default 300) is the deadline of every call, the blocking ones
    included: a pull, a synchronous push waiting for the other workers, a barrier. A call past
    it raises :class:`RpcTimeoutError`; None removes the bound (a worker may then wait for ever on
    one that never comes). In synchronous mode, a step that a worker leaves (its connection
    closes) or rejoins (it pushes another step, or the same one again, e.g. after a restart)
    is abandoned: nothing of it is applied and every waiting call raises
    :class:`RpcStepAbortedError`; the workers then roll back to the last snapshot together (see
    the README, "Faults"). ``heartbeat``: a call waiting on a
    server silent for this long pings it, and when the server stays silent as long again
    (stopped, hung, or cut off without closing) the call raises :class:`RpcConnectionError`
    instead of waiting for ever; it must exceed the longest server-side operation (a save).
    None turns it off.

    ``poll`` (seconds, 0: off): a call waiting for its reply polls the sockets this long
    before it sleeps, so that a reply that comes sooner is read without a wakeup (with a
    server in poll mode too, ``Server(poll=...)``/``sparsecore server --poll-us``, a pull skips
    both wakeups). It spins a core meanwhile: for workers with cores to spare."""
    if isinstance(addresses, str):
        addresses = [addresses]
    addresses = list(addresses)
    poll_us = _poll_us(poll)
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout <= 2**31 / 1000):
        raise ValueError(f"timeout must be a number of seconds in (0, {2**31 // 1000}] or None, got {timeout!r}")
    if mode is None:
        mode = "sync" if num_workers > 0 else "async"
    if mode not in ("sync", "async", "ssp"):
        raise ValueError(f"mode must be 'sync', 'async' or 'ssp', got {mode!r}")
    if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)) or staleness < 0:
        raise ValueError(f"staleness must be an int >= 0 (steps a worker may run ahead), got {staleness!r}")
    if mode != "async" and num_workers < 1:
        raise ValueError(f"mode {mode!r} needs num_workers >= 1 (the workers of the job), got {num_workers}")
    if mode == "ssp" and staleness == 0:
        mode = "sync"
    wire = {"": wire_dtype} if isinstance(wire_dtype, str) else dict(wire_dtype)
    for table, dtype in wire.items():
        if dtype not in ("float32", "float16"):
            where = "the tables" if table == "" else f"table {table!r}"
            raise ValueError(f"wire_dtype of {where} must be 'float32' or 'float16', got {dtype!r}")
    args = dict(token=token, timeout=timeout, worker=worker, num_workers=num_workers, heartbeat=heartbeat,
                poll=poll, mode=mode, staleness=staleness, wire_dtype=wire_dtype)
    core = _core.PsClient(addresses, token, max(1, int(timeout * 1000)) if timeout is not None else 0, worker,
                          num_workers if mode != "async" else 0, int((heartbeat or 0) * 1000), poll_us,
                          int(staleness) if mode == "ssp" else -1)
    for table, dtype in wire.items():
        core.set_wire_dtype(table, dtype)
    return Cluster(core, addresses, **args)


def _writable_snapshot_dir(path: str) -> Optional[str]:
    """None when ``path`` exists (or was created) as a directory this process can write;
    else why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--snapshot-dir '{path}' is not a directory"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"cannot create --snapshot-dir '{path}': {e.strerror or e}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"--snapshot-dir '{path}' is not writable"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sparsecore server``: serve until SIGTERM/SIGINT. Prints ``listening on host:port``."""
    from ._token import ENV_VAR, resolve_token

    p = argparse.ArgumentParser(
        prog="sparsecore server", description="Run a sparsecore parameter server until SIGTERM or SIGINT; "
        "it prints 'listening on HOST:PORT' once clients can connect.",
        epilog=f"The shared token: --token-file PATH (a file readable by its owner only) or ${ENV_VAR}; "
               "--token TEXT also works but shows in ps to every user of the machine.")
    p.add_argument("--address", default="127.0.0.1", metavar="HOST",
                   help="bind address (default: 127.0.0.1, loopback only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=0, metavar="N", help="TCP port (default: 0, any free port)")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="shards = reactor threads of this server, one per core it should use (default: 1)")
    p.add_argument("--snapshot-dir", default=None, metavar="DIR",
                   help="directory of snapshots: created when missing, must be writable; clients save and "
                        "restore snapshots by name, confined to it (without it they are refused); the newest "
                        "complete snapshot found there is restored at start")
    p.add_argument("--keep-snapshots", type=int, default=0, metavar="N",
                   help="after each save it commits (server 0 commits every save), remove all but the newest N "
                        "complete step-<k> snapshots from --snapshot-dir (default 0: keep all; a coordinator "
                        "prunes by its own --keep)")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="directory of incremental exports: clients name a stream, this server writes its "
                        "parts under DIR/<stream> (without it exports are refused)")
    p.add_argument("--device", default="cpu", metavar="DEV",
                   help="where the shards keep their rows: cpu (default), cuda or cuda:N (a GPU: pulls and pushes "
                        "run there with the same update rules and results; snapshots keep the CPU format and move "
                        "between CPU and GPU servers; feature admission, a row capacity and expiry decide as "
                        "on a CPU server; tables with num_embeddings or sampled eviction are refused)")
    p.add_argument("--emulate", action="store_true",
                   help="with --device cuda: run the device kernels on the CPU through the CUDA emulator "
                        "(slow; for tests and machines without a GPU)")
    p.add_argument("--server-index", type=int, default=0, metavar="I",
                   help="this server's place in the cluster, 0 .. --num-servers - 1 (default: 0)")
    p.add_argument("--num-servers", type=int, default=1, metavar="N",
                   help="servers in the cluster; keys route to servers by this count (default: 1)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="register with this job coordinator ('sparsecore coordinator') and send it heartbeats; "
                        "needs --snapshot-dir (the coordinator saves and restores every server together)")
    p.add_argument("--advertise-address", default=None, metavar="HOST",
                   help="with --coordinator: the host workers reach this server at (default: --address, or this "
                        "machine's host name when --address is 0.0.0.0)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"file holding the shared token clients must prove they know (default: ${ENV_VAR})")
    p.add_argument("--token", default=None, metavar="TEXT",
                   help="the shared token itself (shows in ps to every user: prefer --token-file)")
    p.add_argument("--poll-us", type=int, default=0, metavar="N",
                   help="poll mode: a shard with work in the last N microseconds polls instead of sleeping "
                        "(burns its core; for servers with cores of their own; default 0: off)")
    p.add_argument("--idle-timeout", type=float, default=0.0, metavar="S",
                   help="close authenticated connections silent for S seconds (default 0: never)")
    p.add_argument("--handshake-timeout", type=float, default=10.0, metavar="S",
                   help="close connections that have not authenticated S seconds after connecting "
                        "(default 10; 0: never)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="N",
                   help="also serve Prometheus text at http://HOST:N/metrics (per-table rows, bytes and admission "
                        "counts, RPC counters, process memory); 0: any free port, printed as 'metrics on "
                        "http://HOST:PORT/metrics' (default: off)")
    p.add_argument("--metrics-address", default="127.0.0.1", metavar="HOST",
                   help="bind address of the metrics endpoint (default: 127.0.0.1, loopback only)")
    p.add_argument("--metrics-timeout", type=float, default=10.0, metavar="S",
                   help="a metrics connection must send its request, and read the answer, within S seconds "
                        "(default 10)")
    args = p.parse_args(argv)

    def fail(message: str, code: int = 2) -> int:
        print(f"sparsecore server: error: {message}", file=sys.stderr)
        return code

    if not 0 <= args.port < 65536:
        return fail(f"--port must be in [0, 65535], got {args.port}")
    if args.shards < 1:
        return fail(f"--shards must be >= 1, got {args.shards}")
    if args.num_servers < 1 or not 0 <= args.server_index < args.num_servers:
        return fail(f"--server-index must be in [0, --num-servers), got {args.server_index} of {args.num_servers}")
    if args.poll_us < 0:
        return fail(f"--poll-us must be >= 0, got {args.poll_us}")
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        return fail(f"--metrics-port must be in [0, 65535], got {args.metrics_port}")
    if not 0 < args.metrics_timeout <= 7 * 24 * 3600:
        return fail(f"--metrics-timeout must be in (0, 604800] seconds, got {args.metrics_timeout}")
    try:
        token = resolve_token(args.token_file, args.token)
    except ValueError as e:
        return fail(str(e))
    if args.keep_snapshots < 0:
        return fail(f"--keep-snapshots must be >= 0, got {args.keep_snapshots}")
    if args.keep_snapshots and not args.snapshot_dir:
        return fail("--keep-snapshots needs --snapshot-dir")
    if args.snapshot_dir:
        problem = _writable_snapshot_dir(args.snapshot_dir)
        if problem:
            return fail(problem)
    try:
        server = Server(args.port, shards=args.shards, address=args.address, token=token,
                        server_index=args.server_index, num_servers=args.num_servers,
                        snapshot_dir=args.snapshot_dir, export_dir=args.export_dir, poll=args.poll_us / 1e6,
                        idle_timeout=args.idle_timeout, handshake_timeout=args.handshake_timeout,
                        metrics_port=args.metrics_port, metrics_address=args.metrics_address,
                        metrics_timeout=args.metrics_timeout, keep_snapshots=args.keep_snapshots,
                        device=args.device, emulate=args.emulate)
    except _core.CorruptDataError as e:  # a damaged snapshot is not an argument error
        return fail(f"cannot restore from --snapshot-dir: CorruptDataError: {e}", 1)
    except ValueError as e:
        return fail(str(e))
    except (OSError, RuntimeError) as e:
        return fail(str(e), 1)
    member = None
    if args.coordinator:
        from .cluster import ServerMember

        host = args.advertise_address or (args.address if args.address not in ("0.0.0.0", "::") else socket.getfqdn())
        try:
            member = ServerMember(args.coordinator, server_index=args.server_index, num_servers=args.num_servers,
                                  address=f"{host}:{server.port}", snapshots=bool(args.snapshot_dir), token=token).start()
        except (ValueError, TypeError, _core.RpcError) as e:
            server.stop()
            return fail(f"the coordinator refused this server: {e}")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"listening on {server.endpoint}" + (f" restored step {server.restored_step}"
                                                if server.restored_step is not None else ""), flush=True)
    if server.metrics_port is not None:
        print(f"metrics on http://{server.metrics_address}:{server.metrics_port}/metrics", flush=True)
    while not done.wait(0.5):
        pass
    if member is not None:
        member.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _sync_dense() -> Any:
    from .torch import sync_dense

    return sync_dense


# Renamed; the old spellings work for one more release, with a DeprecationWarning.
__getattr__ = module_getattr(__name__, {"sync_dense": ("sparsecore.torch.sync_dense", _sync_dense)})
