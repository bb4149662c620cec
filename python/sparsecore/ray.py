"""A sparsecore job on a Ray cluster: parameter servers as actors that Ray restarts, workers as
a group of plain actors that the driver restarts together.

::

    import ray
    import sparsecore.ray

    ray.init()                                       # or ray.init(address="auto")
    results = sparsecore.ray.run(["--steps", "1000", "--batch-size", "2000"], num_servers=2,
                                 num_workers=4, snapshot_dir="/shared/snapshots")

or from a shell on a node of the cluster:
``python -m sparsecore.ray --address auto --num-servers 2 --num-workers 4
--snapshot-dir /shared/snapshots --steps 1000``.

Each server actor runs a :class:`sparsecore.Server` listening on its node's address (any
free port) with ``snapshot_dir``, which every server must see (a shared file system on a
cluster of several nodes). Each worker actor runs :func:`sparsecore.launch.run_worker`, the
job of ``sparsecore train`` as one synchronous worker, with a cluster-wide snapshot every
``snapshot_every`` steps. When a worker or a server fails, the driver ends the worker group;
Ray restarts a failed server actor (``server_restarts``), which restores the newest
snapshot as it starts; the driver then starts a new worker group on the servers' current
addresses, which rolls every server back to the newest complete snapshot and trains to the
end. At most ``max_failures`` such restarts.

The token that the servers and workers share is drawn by the driver (or given) and passed to
the actors by Ray: whoever can reach the Ray cluster can read it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

try:
    import ray
except ImportError as e:  # the optional dependency
    raise ImportError("sparsecore.ray needs Ray: pip install 'sparsecore[ray]' (or pip install ray)") from e

from .launch import WorkerEnv, configure_logging, job_settings, run_worker

__all__ = ["Job", "main", "run"]

log = logging.getLogger("sparsecore.ray")


def _node_address(address: Optional[str]) -> str:
    return address or ray.util.get_node_ip_address()


class _ServerActor:
    """One parameter server (``server_index`` of ``num_servers``); a restarted actor restores
    the newest snapshot of ``snapshot_dir`` as it starts, on a new port."""

    def __init__(self, index: int, num_servers: int, shards: int, snapshot_dir: str, token: str,
                 address: Optional[str]):
        from .server import Server

        self._server = Server(port=0, shards=shards, address=_node_address(address), token=token, server_index=index,
                              num_servers=num_servers, snapshot_dir=snapshot_dir)

    def endpoint(self) -> str:
        return self._server.endpoint

    def pid(self) -> int:
        return os.getpid()


class _WorkerActor:
    """One worker of a group; :meth:`train` runs its part of the job."""

    def __init__(self, env: WorkerEnv, address: Optional[str], quiet: bool):
        self.env = env
        self.address = address
        configure_logging(env, quiet=quiet)

    def group_address(self) -> str:
        """Where the group's gloo store meets: this node, a port free now (rank 0 serves it)."""
        host = _node_address(self.address)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        return f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"

    def pid(self) -> int:
        return os.getpid()

    def train(self, settings: dict[str, dict[str, Any]], servers: list[str], token: str, init_method: str,
              snapshot_every: int, timeout: float) -> dict[str, Any]:
        return run_worker(settings, self.env, servers=servers, token=token, snapshot_every=snapshot_every,
                          timeout=timeout, connect_wait=timeout, init_method=init_method)


class Job:
    """A sparsecore job on the Ray cluster this driver is connected to (``ray.init`` first).

    Args:
        job: the flags of ``sparsecore train`` (``["--steps", "1000", ...]``, ``--config``
            included) or settings from :func:`sparsecore.launch.job_settings`. ``--steps``
            is required: every worker runs the same number of steps.
        num_servers, num_workers: actors of each kind.
        snapshot_dir: the servers' snapshot directory, seen by every server actor.
        shards: reactor threads of each server (the CPUs its actor asks Ray for).
        snapshot_every: steps between cluster-wide snapshots.
        max_failures: restarts of the worker group before :meth:`run` gives up.
        server_restarts: how often Ray restarts each server actor (-1: without limit).
        token: the servers' shared token (default: a random one).
        address: the address servers and the gloo group bind to (default: each node's).
        worker_cpus: CPUs each worker actor asks Ray for.
        timeout: seconds: the deadline of every call to the servers, of the gloo group and of
            waiting for (restarting) servers.
        quiet: workers log warnings only (not every ``--log-every`` steps and snapshot).
    """

    def __init__(self, job: Union[Sequence[str], dict[str, dict[str, Any]]], *, num_servers: int = 1,
                 num_workers: int = 1, snapshot_dir: str, shards: int = 1, snapshot_every: int = 100,
                 max_failures: int = 3, server_restarts: int = -1, token: Optional[str] = None,
                 address: Optional[str] = None, worker_cpus: float = 1, timeout: float = 300.0, quiet: bool = False):
        from . import cli

        self.settings = job_settings(job) if not isinstance(job, dict) else job
        if cli.server_addresses(self.settings):
            raise cli.ConfigError("the job names --servers; under Ray the servers are the job's own actors")
        if cli._steps(self.settings) is None:
            raise cli.ConfigError("a job on Ray needs --steps: every worker runs the same number of steps")
        for name, value in (("num_servers", num_servers), ("num_workers", num_workers), ("shards", shards),
                            ("snapshot_every", snapshot_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if num_workers > 1 << 16:
            raise ValueError(f"num_workers must be at most 65536, got {num_workers}")
        if max_failures < 0 or server_restarts < -1:
            raise ValueError(f"max_failures must be >= 0 and server_restarts >= -1, got {max_failures} and "
                             f"{server_restarts}")
        if not 0 < timeout <= 2**31 / 1000:
            raise ValueError(f"timeout must be in (0, {2**31 // 1000}] seconds, got {timeout}")
        if not snapshot_dir:
            raise ValueError("snapshot_dir is required: recovery rolls back to the servers' newest snapshot")
        self.num_servers, self.num_workers, self.shards = num_servers, num_workers, shards
        self.snapshot_dir = os.fspath(snapshot_dir)
        self.snapshot_every, self.max_failures, self.server_restarts = snapshot_every, max_failures, server_restarts
        self.token = secrets.token_hex(32) if token is None else token
        self.address, self.worker_cpus, self.timeout, self.quiet = address, worker_cpus, timeout, quiet
        self.servers: list[Any] = []
        self.workers: list[Any] = []
        self.failures = 0

    def __repr__(self) -> str:  # the token stays out of logs
        return (f"Job(num_servers={self.num_servers}, num_workers={self.num_workers}, "
                f"snapshot_dir={self.snapshot_dir!r}, failures={self.failures})")

    def start_servers(self) -> list[Any]:
        """Starts the server actors (once); their handles, in server-index order."""
        if not self.servers:
            actor = ray.remote(max_restarts=self.server_restarts, num_cpus=self.shards)(_ServerActor)
            self.servers = [actor.remote(i, self.num_servers, self.shards, self.snapshot_dir, self.token, self.address)
                            for i in range(self.num_servers)]
        return self.servers

    def endpoints(self) -> list[str]:
        """The servers' addresses now (waiting for restarting ones, up to ``timeout``)."""
        deadline = time.monotonic() + self.timeout
        # Ray refuses calls to an actor while it restarts rather than queueing them.
        restarting = getattr(ray.exceptions, "ActorUnavailableError", ())
        while True:
            try:
                return ray.get([s.endpoint.remote() for s in self.start_servers()],
                               timeout=max(deadline - time.monotonic(), 0.001))
            except restarting:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def run(self) -> list[dict[str, Any]]:
        """Trains the job to its end; each worker's result (:func:`sparsecore.launch.run_worker`),
        in rank order. A failed worker group is replaced; past ``max_failures`` replacements,
        or on a setting that cannot work, the last error is raised."""
        from . import cli

        actor = ray.remote(max_restarts=0, num_cpus=self.worker_cpus)(_WorkerActor)
        while True:
            servers = self.endpoints()
            self.workers = [actor.remote(WorkerEnv(rank, self.num_workers, 0, self.failures), self.address, self.quiet)
                            for rank in range(self.num_workers)]
            try:
                init = ray.get(self.workers[0].group_address.remote(), timeout=self.timeout)
                refs = [w.train.remote(self.settings, servers, self.token, init, self.snapshot_every, self.timeout)
                        for w in self.workers]
                return _all_or_first_error(refs)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, cli.ConfigError) or self.failures >= self.max_failures:
                    raise
                self.failures += 1
                log.warning("worker group %d failed (%s: %s); starting group %d from the newest snapshot",
                            self.failures - 1, type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                            self.failures)
            finally:
                for w in self.workers:
                    ray.kill(w, no_restart=True)
                self.workers = []

    def shutdown(self) -> None:
        """Ends every actor of the job (the snapshots stay)."""
        for a in self.workers + self.servers:
            ray.kill(a, no_restart=True)
        self.workers, self.servers = [], []


def _all_or_first_error(refs: list[Any]) -> list[Any]:
    """Every result, in order; the first failure as soon as it comes (the others may be
    waiting on the failed one)."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready[0])  # raises the task's error
    return ray.get(refs)


def run(job: Union[Sequence[str], dict[str, dict[str, Any]]], **options: Any) -> list[dict[str, Any]]:
    """``Job(job, **options)``: starts its servers, trains to the end, ends its actors; the
    workers' results in rank order."""
    runner = Job(job, **options)
    try:
        runner.start_servers()
        return runner.run()
    finally:
        runner.shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sparsecore.ray``: connects to a Ray cluster and runs the job of the
    remaining flags (those of ``sparsecore train``) on it."""
    from . import RpcError

    p = argparse.ArgumentParser(
        prog="python -m sparsecore.ray", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a sparsecore job on a Ray cluster: parameter servers as actors Ray restarts, workers as "
                    "an actor group restarted from the newest snapshot. Other flags are those of "
                    "'sparsecore train' (--steps is required).",
        epilog="example:\n  python -m sparsecore.ray --address auto --num-servers 2 --num-workers 4 \\\n"
               "      --snapshot-dir /shared/snapshots --steps 10000 --batch-size 2000")
    p.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, or a local one)")
    p.add_argument("--num-servers", type=int, default=1, metavar="N", help="server actors (default: 1)")
    p.add_argument("--num-workers", type=int, default=1, metavar="N", help="worker actors (default: 1)")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="reactor threads per server (default: 1)")
    p.add_argument("--snapshot-dir", required=True, metavar="DIR",
                   help="the servers' snapshot directory, shared by every node that runs a server")
    p.add_argument("--snapshot-every", type=int, default=100, metavar="N",
                   help="steps between cluster-wide snapshots (default: 100)")
    p.add_argument("--max-failures", type=int, default=3, metavar="N",
                   help="restarts of the worker group before giving up (default: 3)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="deadline of calls to the servers and of the gloo group, in seconds (default: 300)")
    args, job = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        runner = Job(job, num_servers=args.num_servers, num_workers=args.num_workers, snapshot_dir=args.snapshot_dir,
                     shards=args.shards, snapshot_every=args.snapshot_every, max_failures=args.max_failures,
                     timeout=args.timeout)
    except ValueError as e:
        print(f"sparsecore.ray: error: {e}", file=sys.stderr)
        return 2
    ray.init(address=args.address)
    began = time.monotonic()
    try:
        runner.start_servers()
        results = runner.run()
    except (ray.exceptions.RayError, RpcError, OSError) as e:
        print(f"sparsecore.ray: error: {e}", file=sys.stderr)
        return 1
    finally:
        runner.shutdown()
    print(f"done: {results[0]['step']} steps on {args.num_workers} workers in {time.monotonic() - began:.1f} s, "
          f"{runner.failures} worker group restart(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
