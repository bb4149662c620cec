"""A sparsecore job on a Ray cluster: a coordinator actor, parameter servers as actors that Ray
restarts, and workers as plain actors, each replaced alone when it fails.

::

    import ray
    import sparsecore.ray

    ray.init()                                       # or ray.init(address="auto")
    results = sparsecore.ray.run(["--steps", "1000", "--batch-size", "2000"], num_servers=2,
                                 num_workers=4, snapshot_dir="/shared/snapshots")

or from a shell on a node of the cluster:
``python -m sparsecore.ray --address auto --num-servers 2 --num-workers 4
--snapshot-dir /shared/snapshots --steps 1000``.

The coordinator actor runs a :class:`sparsecore.cluster.Coordinator` (its record under
``snapshot_dir/coordinator``), which takes a cluster-wide snapshot every ``snapshot_every``
steps and decides every roll-back (docs/cluster.md). Each server actor runs a
:class:`sparsecore.Server` listening on its node's address (any free port) with
``snapshot_dir``, which every server must see (a shared file system on a cluster of several
nodes), and registers with the coordinator. Each worker actor runs the job of ``sparsecore
train`` through :class:`sparsecore.cluster.Worker`
(:func:`sparsecore.cluster.trainer_job.run_trainer`), its dense model kept on the servers.

When a server actor dies, Ray restarts it (``server_restarts``) and it registers again; when
a worker actor dies, the driver starts a replacement of that rank only (at most
``max_failures`` times). Either way the coordinator rolls every member back to the newest
complete snapshot - the surviving workers in their processes - and the job goes on; in sync
mode it ends with the tables and dense model of the uninterrupted run, bit for bit. The
coordinator actor itself is not restarted: its failure ends the run (a new run of the same
``snapshot_dir`` continues from its record).

The token that the servers and workers share is drawn by the driver (or given) and passed to
the actors by Ray: whoever can reach the Ray cluster can read it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

try:
    import ray
except ImportError as e:  # the optional dependency
    raise ImportError("sparsecore.ray needs Ray: pip install 'sparsecore[ray]' (or pip install ray)") from e

from .launch import WorkerEnv, configure_logging, job_settings

__all__ = ["Job", "main", "run"]

log = logging.getLogger("sparsecore.ray")


def _node_address(address: Optional[str]) -> str:
    return address or ray.util.get_node_ip_address()


class _CoordinatorActor:
    """The job's coordinator, on this node's address (any free port)."""

    def __init__(self, options: dict[str, Any], address: Optional[str]):
        from .cluster import Coordinator

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self._coordinator = Coordinator(address=_node_address(address), **options).start()

    def endpoint(self) -> str:
        return self._coordinator.endpoint

    def status(self) -> dict[str, Any]:
        return self._coordinator.status()

    def wait(self, timeout: float) -> bool:
        return self._coordinator.wait(timeout)


class _ServerActor:
    """One parameter server (``server_index`` of ``num_servers``) registered with the
    coordinator; a restarted actor registers again, on a new port, and the coordinator rolls
    the cluster back."""

    def __init__(self, index: int, num_servers: int, shards: int, snapshot_dir: str, token: str,
                 address: Optional[str], coordinator: str):
        from .cluster import ServerMember
        from .server import Server

        self._server = Server(port=0, shards=shards, address=_node_address(address), token=token, server_index=index,
                              num_servers=num_servers, snapshot_dir=snapshot_dir)
        self._member = ServerMember(coordinator, server_index=index, num_servers=num_servers,
                                    address=self._server.endpoint, token=token).start()

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

    def pid(self) -> int:
        return os.getpid()

    def train(self, settings: dict[str, dict[str, Any]], coordinator: str, token: str, timeout: float
              ) -> dict[str, Any]:
        from .cluster.trainer_job import run_trainer

        return run_trainer(settings, coordinator, self.env.rank, self.env.world_size, token=token, timeout=timeout,
                           recovery_timeout=timeout)


class Job:
    """A sparsecore job on the Ray cluster this driver is connected to (``ray.init`` first).

    Args:
        job: the flags of ``sparsecore train`` (``["--steps", "1000", ...]``, ``--config``
            included) or settings from :func:`sparsecore.launch.job_settings`. ``--steps``
            is required: every worker runs the same number of steps.
        num_servers, num_workers: actors of each kind.
        snapshot_dir: the servers' snapshot directory, seen by every server actor (the
            coordinator's record goes in its ``coordinator`` folder).
        shards: reactor threads of each server (the CPUs its actor asks Ray for).
        snapshot_every: steps between cluster-wide snapshots.
        max_failures: worker actors replaced before :meth:`run` gives up.
        server_restarts: how often Ray restarts each server actor (-1: without limit).
        token: the shared token of the coordinator and servers (default: a random one).
        address: the address the coordinator and servers bind to (default: each node's).
        worker_cpus: CPUs each worker actor asks Ray for.
        timeout: seconds: the deadline of every call to the servers and of waiting for the
            cluster to be ready again.
        quiet: workers log warnings only (not every ``--log-every`` steps and snapshot).
        mode, staleness: how the workers step together: "sync", "async" or "ssp" with at most
            ``staleness`` steps ahead of the slowest (:func:`sparsecore.connect`).
        member_timeout: seconds of silence after which the coordinator counts a member dead.
    """

    def __init__(self, job: Union[Sequence[str], dict[str, dict[str, Any]]], *, num_servers: int = 1,
                 num_workers: int = 1, snapshot_dir: str, shards: int = 1, snapshot_every: int = 100,
                 max_failures: int = 3, server_restarts: int = -1, token: Optional[str] = None,
                 address: Optional[str] = None, worker_cpus: float = 1, timeout: float = 300.0, quiet: bool = False,
                 mode: str = "sync", staleness: int = 0, member_timeout: float = 10.0):
        from .cluster.trainer_job import server_optimizer
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
        server_optimizer(self.settings["dense_optimizer"])  # one the servers have: refused here, not in the actors
        self.coordinator_options: dict[str, Any] = {
            "num_servers": num_servers, "num_workers": num_workers, "mode": mode, "staleness": staleness,
            "snapshot_dir": os.path.join(os.fspath(snapshot_dir), "coordinator"), "token": "",
            "snapshot_every_steps": snapshot_every, "heartbeat": min(1.0, member_timeout / 4),
            "member_timeout": member_timeout, "restore_timeout": timeout}
        from .cluster import Coordinator

        Coordinator.check_options(**self.coordinator_options)
        self.num_servers, self.num_workers, self.shards = num_servers, num_workers, shards
        self.snapshot_dir = os.fspath(snapshot_dir)
        self.snapshot_every, self.max_failures, self.server_restarts = snapshot_every, max_failures, server_restarts
        self.token = secrets.token_hex(32) if token is None else token
        self.address, self.worker_cpus, self.timeout, self.quiet = address, worker_cpus, timeout, quiet
        self.coordinator: Any = None
        self.servers: list[Any] = []
        self.workers: list[Any] = []
        self.failures = 0

    def __repr__(self) -> str:  # the token stays out of logs
        return (f"Job(num_servers={self.num_servers}, num_workers={self.num_workers}, "
                f"snapshot_dir={self.snapshot_dir!r}, failures={self.failures})")

    def coordinator_endpoint(self) -> str:
        """Starts the coordinator actor (once); its "host:port"."""
        if self.coordinator is None:
            options = dict(self.coordinator_options, token=self.token)
            self.coordinator = ray.remote(max_restarts=0, num_cpus=0)(_CoordinatorActor).remote(options, self.address)
        return ray.get(self.coordinator.endpoint.remote(), timeout=self.timeout)

    def start_servers(self) -> list[Any]:
        """Starts the coordinator and the server actors (once); the servers' handles, in
        server-index order."""
        if not self.servers:
            coordinator = self.coordinator_endpoint()
            actor = ray.remote(max_restarts=self.server_restarts, num_cpus=self.shards)(_ServerActor)
            self.servers = [actor.remote(i, self.num_servers, self.shards, self.snapshot_dir, self.token, self.address,
                                         coordinator) for i in range(self.num_servers)]
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

    def _start_worker(self, rank: int, coordinator: str) -> tuple[Any, Any]:
        actor: Any = ray.remote(max_restarts=0, num_cpus=self.worker_cpus)(_WorkerActor)
        worker = actor.remote(WorkerEnv(rank, self.num_workers, 0, self.failures), self.address, self.quiet)
        return worker, worker.train.remote(self.settings, coordinator, self.token, self.timeout)

    def run(self) -> list[dict[str, Any]]:
        """Trains the job to its end; each worker's result
        (:func:`sparsecore.cluster.trainer_job.run_trainer`), in rank order. A worker actor
        that fails is replaced alone (the coordinator rolls the others back in their
        processes); past ``max_failures`` replacements, or on a setting that cannot work, the
        error is raised."""
        from . import cli

        self.start_servers()
        coordinator = self.coordinator_endpoint()
        self.workers, refs = [], []
        for rank in range(self.num_workers):
            worker, ref = self._start_worker(rank, coordinator)
            self.workers.append(worker)
            refs.append(ref)
        results: dict[int, Any] = {}
        try:
            while len(results) < self.num_workers:
                pending = [ref for rank, ref in enumerate(refs) if rank not in results]
                ready, _ = ray.wait(pending, num_returns=1)
                rank = refs.index(ready[0])
                try:
                    results[rank] = ray.get(ready[0])
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, (cli.ConfigError, ValueError)) or self.failures >= self.max_failures:
                        raise
                    self.failures += 1
                    log.warning("worker %d failed (%s: %s); a replacement rejoins the job (failure %d)", rank,
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "", self.failures)
                    ray.kill(self.workers[rank], no_restart=True)
                    self.workers[rank], refs[rank] = self._start_worker(rank, coordinator)
            return [results[rank] for rank in range(self.num_workers)]
        finally:
            for w in self.workers:
                ray.kill(w, no_restart=True)
            self.workers = []

    def shutdown(self) -> None:
        """Ends every actor of the job (the snapshots stay)."""
        for a in self.workers + self.servers + ([self.coordinator] if self.coordinator is not None else []):
            ray.kill(a, no_restart=True)
        self.workers, self.servers, self.coordinator = [], [], None


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
        description="Run a sparsecore job on a Ray cluster: a coordinator actor, parameter servers as actors Ray "
                    "restarts, workers as actors replaced alone when they fail; the coordinator rolls the cluster "
                    "back to the newest snapshot. Other flags are those of 'sparsecore train' (--steps is "
                    "required).",
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
                   help="worker actors replaced before giving up (default: 3)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="deadline of calls to the servers and of waiting for the cluster, in seconds (default: 300)")
    p.add_argument("--mode", choices=("sync", "async", "ssp"), default="sync",
                   help="how the workers step together (default: sync)")
    p.add_argument("--staleness", type=int, default=0, metavar="K",
                   help="with --mode ssp: steps a worker may run ahead of the slowest (default: 0)")
    args, job = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        runner = Job(job, num_servers=args.num_servers, num_workers=args.num_workers, snapshot_dir=args.snapshot_dir,
                     shards=args.shards, snapshot_every=args.snapshot_every, max_failures=args.max_failures,
                     timeout=args.timeout, mode=args.mode, staleness=args.staleness)
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
          f"{runner.failures} worker replacement(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
