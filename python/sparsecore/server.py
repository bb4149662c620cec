"""Parameter server: :class:`Server` (embedded, the default, or listening on a port) and
:func:`connect`, which returns a :class:`Cluster` client for one or many servers.

Embedded (no socket)::

    server = sc.Server()                       # in-process shards
    ps = server.client()
    ps.create_table("user", sc.TableConfig(dim=18, optimizer=sc.Adagrad(lr=0.05)), seed=7)
    rows = ps.pull("user", ids)                # float32[n, 18]; duplicates allowed
    ps.push("user", ids, grads)                # fused update, once per unique row

Distributed: start ``sparsecore server --port 7000 --shards 2`` (or ``main([...])``) on each
host, then in every worker ``ps = sc.connect(["h1:7000", "h2:7000"], worker=rank,
num_workers=world)``; the rest of the code is the same. With ``num_workers`` set, pushes are
synchronous: the gradients of all workers for a step are summed per row in worker order and
applied once before any push of that step returns. Without it, each push applies at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from . import _core
from ._arrays import as_float32, as_int64
from .config import TableConfig, tables_to_json

__all__ = ["Cluster", "Server", "connect", "latest_snapshot", "main"]

log = logging.getLogger("sparsecore.server")


def latest_snapshot(root: str) -> Optional[str]:
    """Newest complete snapshot directory under ``root`` (``root/step-<k>``), or None."""
    path = _core.latest_snapshot(os.fspath(root))
    return path or None


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

    def create_table(self, name: str, config: TableConfig, seed: int = 0) -> None:
        """Creates table ``name`` on every shard (a no-op when it exists with this config)."""
        cfg = json.loads(tables_to_json({name: config}))[0]
        self._c.create_table(json.dumps(cfg), int(seed) & (2**64 - 1))
        self._tables[name] = (config, seed)

    def pull(self, name: str, ids: Any, *, train: bool = True) -> np.ndarray:
        """Rows of ``ids`` as float32[n, dim]; ``train=False`` never inserts (unknown ids read 0)."""
        return self._c.pull(name, as_int64(ids, f"ids of table '{name}'"), train)

    def push(self, name: str, ids: Any, grads: Any, *, step: int = 0) -> None:
        """Applies ``grads`` (float32[n, dim]) to the rows of ``ids``; duplicates are summed."""
        self._c.push(name, as_int64(ids, f"ids of table '{name}'"), as_float32(grads, f"grads of table '{name}'"), step)

    def save(self, root: str, step: int, *, overwrite: bool = False) -> str:
        """Snapshot of every shard at ``root/step-<step>``; returns that directory."""
        return self._c.save(os.fspath(root), int(step), overwrite)

    def restore(self, snapshot_dir: str) -> int:
        """Every shard takes the rows of the snapshot that it owns now; returns its step."""
        return self._c.restore(os.fspath(snapshot_dir))

    def kv_put(self, key: str, value: Any) -> None:
        """Stores a small JSON value (e.g. a reader position); saved with snapshots."""
        self._c.kv_put(key, json.dumps(value))

    def kv_get(self, key: str) -> Any:
        return json.loads(self._c.kv_get(key))

    def barrier(self, name: str, count: int) -> None:
        """Returns once ``count`` callers have entered barrier ``name``."""
        self._c.barrier(name, count)

    def dense_pull(self, name: str, size: int, init: float = 0.0) -> np.ndarray:
        return self._c.dense_pull(name, size, init)

    def dense_push(self, name: str, grads: Any, lr: float) -> None:
        self._c.dense_push(name, as_float32(grads, "grads"), lr)

    def stats(self) -> list[dict]:
        return json.loads(self._c.stats())

    def reconnect(self, timeout: float = 30.0) -> "Cluster":
        """Waits (bounded) until every server answers again and returns a fresh client."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fresh = connect(self._addresses, **self._connect_args)
                break
            except (_core.RpcConnectionError, _core.RpcTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for name, (cfg, seed) in self._tables.items():
            fresh.create_table(name, cfg, seed)
        return fresh


class Server:
    """A parameter server. ``port=None`` (the default): embedded, no socket; otherwise it
    listens on ``address:port`` (port 0 picks a free one, see :attr:`port`)."""

    def __init__(self, port: Optional[int] = None, *, shards: int = 1, address: str = "127.0.0.1",
                 token: str = "", server_index: int = 0, num_servers: int = 1,
                 snapshot_dir: Optional[str] = None):
        self._core = _core.PsServer(address, port or 0, shards, token, server_index, num_servers)
        self.address = address
        self.snapshot_dir = snapshot_dir
        self.restored_step: Optional[int] = None
        if snapshot_dir:
            snap = latest_snapshot(snapshot_dir)
            if snap:
                self.restored_step = self._core.restore(snap)
                log.info("restored %s (step %d)", snap, self.restored_step)
        self.embedded = port is None
        if not self.embedded:
            self._core.start()

    @property
    def port(self) -> Optional[int]:
        return None if self.embedded else self._core.port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def client(self) -> Cluster:
        """A client of this server: direct calls when embedded, loopback RPC otherwise."""
        if self.embedded:
            return Cluster(_core.PsClient(self._core))
        return connect([self.endpoint])

    def stop(self) -> None:
        self._core.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def connect(addresses: Sequence[str] | str, *, token: str = "", timeout: Optional[float] = None,
            worker: int = 0, num_workers: int = 0, heartbeat: Optional[float] = 30.0) -> Cluster:
    """Connects to every server ("host:port", in server-index order). ``num_workers`` > 0
    makes pushes synchronous across that many workers (``worker`` = this one's rank).

    ``timeout`` bounds every call (seconds, None: no bound). ``heartbeat``: a call waiting on a
    server silent for this long pings it, and when the server stays silent as long again
    (stopped, hung, or cut off without closing) the call raises :class:`RpcConnectionError`
    instead of waiting for ever; it must exceed the longest server-side operation (a save).
    None turns it off."""
    if isinstance(addresses, str):
        addresses = [addresses]
    addresses = list(addresses)
    args = dict(token=token, timeout=timeout, worker=worker, num_workers=num_workers, heartbeat=heartbeat)
    core = _core.PsClient(addresses, token, int((timeout or 0) * 1000), worker, num_workers,
                          int((heartbeat or 0) * 1000))
    return Cluster(core, addresses, **args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sparsecore server``: serve until SIGTERM/SIGINT. Prints ``listening on host:port``."""
    p = argparse.ArgumentParser(prog="sparsecore server", description="Run a sparsecore parameter server.")
    p.add_argument("--address", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    p.add_argument("--shards", type=int, default=1, help="shards = reactor threads of this server")
    p.add_argument("--snapshot-dir", default=None, help="restore the latest complete snapshot found here")
    p.add_argument("--server-index", type=int, default=0)
    p.add_argument("--num-servers", type=int, default=1)
    p.add_argument("--token", default=os.environ.get("SPARSECORE_TOKEN", ""),
                   help="shared token (default: $SPARSECORE_TOKEN)")
    args = p.parse_args(argv)
    server = Server(args.port, shards=args.shards, address=args.address, token=args.token,
                    server_index=args.server_index, num_servers=args.num_servers,
                    snapshot_dir=args.snapshot_dir)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"listening on {server.endpoint}" + (f" restored step {server.restored_step}"
                                                if server.restored_step is not None else ""), flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
