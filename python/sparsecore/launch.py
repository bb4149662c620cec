"""Workers launched by an engine: torchrun, a Kubernetes indexed Job, Ray (:mod:`sparsecore.ray`).

A worker takes its place in the job from the environment the engine sets (:func:`worker_env`):
``RANK`` and ``WORLD_SIZE`` (torchrun; a Kubernetes indexed Job gives ``JOB_COMPLETION_INDEX``
instead of ``RANK``), ``MASTER_ADDR``/``MASTER_PORT`` for the dense model's gloo group, and the
parameter servers from ``--servers`` or ``$SPARSECORE_SERVERS`` (``host:port,...`` in
server-index order). The servers are ``sparsecore server`` processes started with a shared
``--snapshot-dir``.

``python -m sparsecore.launch [sparsecore train flags]`` runs the job of ``sparsecore train``
as one synchronous worker of many: the sparse gradients of a step are summed over the workers
on the servers, the dense ones averaged over gloo (:func:`sparsecore.torch.sync_dense`), and
each worker reads its own part of the data. Every ``--snapshot-every`` steps the workers meet
and take a cluster-wide snapshot: every table with its optimizer state, the dense model and
its optimizer, and every worker's reader position (:class:`SnapshotRecovery`).

Recovery is a restart of the whole worker group, which the engine does (torchrun
``--max-restarts``, Ray in :mod:`sparsecore.ray`, Kubernetes ``restartPolicy``): a worker whose
peer or server fails stops with an error (the servers abort the step; nothing of it is
applied), and every worker of the new group rolls back to the newest complete snapshot before
its first step. In sync mode the run then equals an uninterrupted run from that snapshot, bit
for bit. A killed server comes back with the same command; it restores the newest snapshot
itself, and the workers restore every server to it.

With a coordinator (``--coordinator HOST:PORT`` or ``$SPARSECORE_COORDINATOR``; see
docs/cluster.md) the coordinator takes the snapshots and decides every roll-back instead
(:func:`sparsecore.cluster.trainer_job.run_trainer`): the servers are the ones registered with
it, the dense model lives on them (:class:`sparsecore.torch.ServerDenseOptimizer`, no gloo
group), and a worker restarted alone, or a replacement, rejoins the running workers, which
roll back with it in their processes. ``--mode sync|async|ssp`` and ``--staleness K`` choose
how the workers step together (:func:`sparsecore.connect`); with a coordinator, its mode.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["COORDINATED_FLAGS", "ENV_COORDINATOR", "ENV_SERVERS", "SnapshotRecovery", "WorkerEnv", "configure_logging", "job_settings", "main", "run_worker",
           "worker_env"]

log = logging.getLogger("sparsecore.launch")

ENV_SERVERS = "SPARSECORE_SERVERS"
ENV_COORDINATOR = "SPARSECORE_COORDINATOR"
_MAX_WORKERS = 1 << 16  # the servers' bound on synchronous workers
# Keys of the servers' key-value store (saved with every snapshot) and names of barriers.
_KV = "sparsecore.launch/"
_MODES = ("sync", "async", "ssp")

# The settings and flags of a worker's place in a coordinated job; flags of 'sparsecore train'
# too (its [train] section), so that this parser, which takes those, has them as well.
COORDINATED_DEFAULTS: dict[str, Any] = {"coordinator": "", "mode": "", "staleness": 0}
COORDINATED_FLAGS: list[tuple[str, str, str, Any, str, str]] = [
    ("--coordinator", "train", "coordinator", str, "HOST:PORT",
     "train as a worker of the job coordinated there ('sparsecore coordinator', which names the servers, takes the "
     "snapshots and rolls back; docs/cluster.md); rank and worker count from $RANK and $WORLD_SIZE"),
    ("--mode", "train", "mode", str, "MODE",
     "how the workers' pushes step together: sync, async or ssp (at most --staleness steps ahead of the slowest); "
     "default: sync, or the coordinator's"),
    ("--staleness", "train", "staleness", int, "K", "with --mode ssp: steps a worker may run ahead of the slowest"),
]


@dataclass(frozen=True)
class WorkerEnv:
    """A worker's place in the job: ``rank`` of ``world_size`` workers, ``local_rank`` on its
    host, and ``attempt``, the restarts of the worker group so far (torchrun's
    ``TORCHELASTIC_RESTART_COUNT``; the driver's count under Ray)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    attempt: int = 0


def _env_int(env: Mapping[str, str], name: str, minimum: int, default: Optional[int] = None) -> int:
    text = env.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"${name} is not set")
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"${name} must be >= {minimum}, got {value}")
    return value


def worker_env(environ: Optional[Mapping[str, str]] = None) -> WorkerEnv:
    """The :class:`WorkerEnv` of this process from ``environ`` (default ``os.environ``): the
    rank from ``RANK`` (torchrun) or ``JOB_COMPLETION_INDEX`` (Kubernetes indexed Job), the
    count from ``WORLD_SIZE``; with neither set, the only worker (rank 0 of 1). ValueError
    names the variable that is missing or wrong."""
    env = os.environ if environ is None else environ
    rank_var = "RANK" if "RANK" in env else "JOB_COMPLETION_INDEX" if "JOB_COMPLETION_INDEX" in env else None
    if rank_var is None and "WORLD_SIZE" not in env:
        return WorkerEnv()
    if rank_var is None:
        raise ValueError("$WORLD_SIZE is set but not the worker's rank: $RANK (torchrun) or $JOB_COMPLETION_INDEX "
                         "(a Kubernetes indexed Job)")
    if "WORLD_SIZE" not in env:
        raise ValueError(f"${rank_var} is set but not $WORLD_SIZE, the number of workers")
    world = _env_int(env, "WORLD_SIZE", 1)
    if world > _MAX_WORKERS:
        raise ValueError(f"$WORLD_SIZE must be at most {_MAX_WORKERS}, got {world}")
    rank = _env_int(env, rank_var, 0)
    if rank >= world:
        raise ValueError(f"${rank_var} must be below $WORLD_SIZE ({world}), got {rank}")
    return WorkerEnv(rank=rank, world_size=world, local_rank=_env_int(env, "LOCAL_RANK", 0, 0),
                     attempt=_env_int(env, "TORCHELASTIC_RESTART_COUNT", 0, 0))


class SnapshotRecovery:
    """Cluster-wide snapshots and the roll-back to the newest one, driven by the workers.

    :meth:`snapshot` (every worker, at the same step): each worker stores its reader position
    on the servers, all meet, rank 0 stores the dense model and optimizer and saves snapshot
    ``step-<step>`` of every server, all meet again. :meth:`resume` (every worker, before its
    first step): all meet, rank 0 restores every server to the newest complete snapshot (or,
    when there is none, saves ``step-0`` of the fresh job), all meet, and each worker loads the
    dense state and its reader position from it. Call it in a fresh process (a worker whose
    snapshot has no position of its own keeps its reader where it is).

    These two calls are all the training loop asks of recovery: a coordinator that takes the
    snapshots and decides the roll-back can stand in for this class."""

    def __init__(self, cluster: Any, env: WorkerEnv):
        self.cluster = cluster
        self.env = env
        self.restored_step: Optional[int] = None

    def _barrier(self, name: str) -> None:
        self.cluster.barrier(_KV + name, self.env.world_size)

    def snapshot(self, trainer: Any) -> None:
        from .trainer import _json_default

        step = int(trainer.step)
        position = {"reader": trainer._reader_state, "samples": int(trainer.samples)}
        self.cluster.kv_put(f"{_KV}reader/{self.env.rank}", json.loads(json.dumps(position, default=_json_default)))
        self._barrier(f"snapshot/{step}/positions")
        if self.env.rank == 0:
            self.cluster.kv_put(_KV + "dense", {"workers": self.env.world_size, "torch": _dense_state(trainer)})
            self.cluster.save(step, overwrite=True)
            log.info("snapshot step-%d saved", step)
        self._barrier(f"snapshot/{step}/saved")

    def resume(self, trainer: Any) -> int:
        collection = trainer.embedding.collection
        self._barrier("resume/enter")
        if self.env.rank == 0:
            try:
                self.cluster.restore()
            except KeyError:  # no complete snapshot: a fresh job, whose start is step-0
                if trainer.step != 0:
                    raise RuntimeError(f"no snapshot to resume from, and this trainer is at step {trainer.step}, "
                                       "not 0") from None
                self.cluster.kv_put(_KV + "dense", {"workers": self.env.world_size, "torch": _dense_state(trainer)})
                self.cluster.save(0, overwrite=True)
        self._barrier("resume/restored")
        dense = self.cluster.kv_get(_KV + "dense")
        if not isinstance(dense, dict) or "torch" not in dense:
            raise RuntimeError("the newest snapshot holds no dense state of a launched job (it was not written by "
                               "sparsecore.launch)")
        if int(dense.get("workers", 0)) != self.env.world_size:
            raise RuntimeError(f"the newest snapshot was written by {dense.get('workers')} workers; this job has "
                               f"{self.env.world_size} (each worker's reader position belongs to its rank)")
        step = _load_dense_state(trainer, dense["torch"])
        collection._c.step = step  # the servers' rows are at this step (restored by rank 0)
        trainer.step = step
        position = self.cluster.kv_get(f"{_KV}reader/{self.env.rank}")
        if position is not None:
            trainer._reader_state = position["reader"]
            trainer.samples = int(position["samples"])
            if position["reader"] is not None:
                trainer.source.load_state_dict(position["reader"])
        self.restored_step = step
        log.info("resumed from snapshot step-%d", step)
        return step


def _dense_state(trainer: Any) -> str:
    """The dense model, its optimizer and the step, as text for the servers' key-value store."""
    import torch

    buffer = io.BytesIO()
    torch.save({"step": int(trainer.step), "model": trainer.model.state_dict(),
                "optimizer": trainer.dense_optimizer.state_dict()}, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _load_dense_state(trainer: Any, text: str) -> int:
    import torch

    try:
        # Tensors and plain containers only: a forged entry cannot run code here.
        state = torch.load(io.BytesIO(base64.b64decode(text.encode("ascii"), validate=True)), weights_only=True)
        step = int(state["step"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise RuntimeError(f"the dense state of the newest snapshot is damaged: {e}") from None
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.dense_optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise RuntimeError(f"the dense state of the newest snapshot does not fit this job's model (a snapshot of "
                           f"another job?): {e}") from None
    return step


def _connect(servers: Sequence[str], token: str, env: WorkerEnv, timeout: float, wait: float,
             mode: str = "sync", staleness: int = 0) -> Any:
    """A worker's cluster in ``mode``, waiting up to ``wait`` seconds for servers that are
    (re)starting."""
    from .server import Cluster

    pending = Cluster(None, list(servers), token=token, timeout=timeout, worker=env.rank,
                      num_workers=env.world_size, mode=mode, staleness=staleness)
    return pending.reconnect(timeout=wait)


def run_worker(settings: dict[str, dict[str, Any]], env: WorkerEnv, *, servers: Sequence[str], token: str = "",
               snapshot_every: int = 100, timeout: float = 300.0, connect_wait: float = 300.0,
               init_method: str = "env://", recovery: Optional[Callable[[Any, WorkerEnv], Any]] = None,
               mode: str = "sync", staleness: int = 0) -> dict[str, Any]:
    """Runs this worker's part of the job of ``settings`` (those of ``sparsecore train``; see
    :func:`sparsecore.cli.load_settings`) against ``servers``, from the newest snapshot to the
    job's last step, with a snapshot every ``snapshot_every`` steps and at the end.
    ``timeout``: the deadline of every call to the servers and of the gloo group;
    ``init_method``: where the gloo group meets (torchrun's environment by default).
    ``recovery(cluster, env)``: what takes the snapshots and rolls back (default
    :class:`SnapshotRecovery`; anything with its ``resume`` and ``snapshot``). ``mode``,
    ``staleness``: how the workers' pushes step together (:func:`sparsecore.connect`; the
    dense gradients are averaged over gloo every step in any mode). Returns
    ``{"rank", "step", "resumed_from", "steps", "samples"}`` and, on rank 0, the final
    evaluation as ``"eval"``."""
    from datetime import timedelta

    from . import cli

    if snapshot_every < 1:
        raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
    total = cli._steps(settings)
    if total is None:
        raise cli.ConfigError("a launched job needs --steps: every worker runs the same number of steps")
    log.info("worker %d of %d (pid %d, attempt %d): servers %s", env.rank, env.world_size, os.getpid(), env.attempt,
             ",".join(servers))
    cluster = _connect(servers, token, env, timeout, connect_wait, mode, staleness)
    trainer, evaluation, _ = cli.build_trainer(settings, server=cluster, shard=(env.rank, env.world_size))
    steps = (recovery or SnapshotRecovery)(cluster, env)
    if env.rank == 0:
        cluster.kv_put(_KV + "group", secrets.token_hex(8))
    # Every worker of this group is connected (and so joined on every server shard) before the
    # gloo group forms, which then holds this group's workers only.
    cluster.barrier(_KV + "connected", env.world_size)
    group = False
    if env.world_size > 1:
        import torch.distributed as dist

        from .torch import sync_dense

        wait = timedelta(seconds=timeout)
        store, _, _ = next(dist.rendezvous(init_method, rank=env.rank, world_size=env.world_size, timeout=wait))
        # The store may outlive a group (torchrun's agent keeps one across restarts): the keys of
        # this group live under a name of its own, drawn by rank 0, so that none of an earlier
        # group's addresses is read.
        store = dist.PrefixStore(f"sparsecore.launch/{cluster.kv_get(_KV + 'group')}", store)
        dist.init_process_group("gloo", store=store, rank=env.rank, world_size=env.world_size, timeout=wait)
        group = True
        sync_dense(trainer.model)
    try:
        start = steps.resume(trainer)
        fit = None
        if total > start:
            fit = trainer.fit(total - start, every=snapshot_every, on_interval=steps.snapshot)
            if trainer.step % snapshot_every:
                steps.snapshot(trainer)
        result: dict[str, Any] = {"rank": env.rank, "step": trainer.step, "resumed_from": start,
                                  "steps": fit.steps if fit else 0, "samples": trainer.samples}
        if env.rank == 0:
            metrics = trainer.evaluate(evaluation) if evaluation is not None else {}
            cli._report(trainer, fit, metrics, total - start, 0.0, settings)
            result["eval"] = metrics
        if group:
            import torch.distributed as dist

            dist.barrier()  # no rank closes its gloo pairs while another may still use them
        return result
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _mode(settings: dict[str, dict[str, Any]]) -> tuple[Optional[str], int]:
    """(mode or None when not given, staleness) of the settings, checked."""
    from .cli import ConfigError

    t = settings["train"]
    mode, staleness = t["mode"] or None, t["staleness"]
    if mode is not None and mode not in _MODES:
        raise ConfigError(f"--mode must be one of {', '.join(_MODES)}, got {mode!r}")
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0 or (staleness and mode != "ssp"):
        raise ConfigError(f"--staleness must be an integer >= 0, and only with --mode ssp; got {staleness!r} with "
                          f"--mode {mode}")
    return mode, staleness


def run_coordinated(settings: dict[str, dict[str, Any]], env: Optional[WorkerEnv] = None, *, timeout: float = 300.0,
                    wait: float = 300.0) -> dict[str, Any]:
    """Worker ``env.rank`` (default: :func:`worker_env`) of the job of ``settings`` coordinated
    at ``settings["train"]["coordinator"]``, through :class:`sparsecore.cluster.Worker`
    (:func:`sparsecore.cluster.trainer_job.run_trainer`): the coordinator names the servers,
    takes the snapshots and rolls back. ``timeout``: the deadline of every call to the servers;
    ``wait``: the longest wait for the cluster to be ready. What ``run_trainer`` returns."""
    from . import cli
    from .cluster.trainer_job import run_trainer, server_optimizer

    mode, staleness = _mode(settings)
    coordinator = settings["train"]["coordinator"]
    if not coordinator:
        raise cli.ConfigError("--mode and --staleness are for a worker of a job: give --coordinator (or run it with "
                              "python -m sparsecore.launch --servers ...)")
    if cli.server_addresses(dict(settings, train=dict(settings["train"], token_file=""))):
        raise cli.ConfigError("--servers with --coordinator: the coordinator names the servers registered with it")
    server_optimizer(settings["dense_optimizer"])  # refused before anything waits for the cluster
    env = env or worker_env()
    token = cli.server_token(settings)
    settings = dict(settings, train=dict(settings["train"], servers=[], token_file=""))
    log.info("worker %d of %d (pid %d, attempt %d): coordinator %s", env.rank, env.world_size, os.getpid(),
             env.attempt, coordinator)
    return run_trainer(settings, coordinator, env.rank, env.world_size, token=token, timeout=timeout,
                       recovery_timeout=wait, mode=mode, staleness=staleness if mode == "ssp" else None)


def configure_logging(env: WorkerEnv, quiet: bool = False) -> None:
    """A worker's log lines name its rank; sparsecore's INFO lines (steps, snapshots) unless
    ``quiet``."""
    logging.basicConfig(level=logging.WARNING, datefmt="%H:%M:%S",
                        format=f"%(asctime)s rank {env.rank} %(name)s %(levelname)s %(message)s")
    logging.getLogger("sparsecore").setLevel(logging.WARNING if quiet else logging.INFO)


def job_settings(argv: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The settings of the flags of ``sparsecore train`` (``--config`` included)."""
    from . import cli

    try:
        args = cli._subcommand(cli._parser(), "train").parse_args([str(a) for a in argv])
    except SystemExit:  # argparse has printed what it could not read
        raise cli.ConfigError(f"cannot read the job's flags {list(argv)}") from None
    overrides = cli.flag_overrides(args)
    overrides[("train", "progress")] = False
    return cli.load_settings(args.config, overrides)


def _parser() -> argparse.ArgumentParser:
    from . import cli

    train = cli._subcommand(cli._parser(), "train")
    p = argparse.ArgumentParser(
        prog="python -m sparsecore.launch", parents=[train], add_help=False, conflict_handler="resolve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One synchronous worker of a sparsecore job on parameter servers, under an engine that "
                    "restarts failed workers (torchrun, a Kubernetes indexed Job). Takes the flags of "
                    "'sparsecore train'; rank and worker count come from $RANK (or $JOB_COMPLETION_INDEX) and "
                    f"$WORLD_SIZE, the servers from --servers or ${ENV_SERVERS}.",
        epilog="examples:\n"
               "  sparsecore server --address 0.0.0.0 --port 7000 --snapshot-dir /shared/snapshots \\\n"
               "                    --token-file ~/.sparsecore-token\n"
               f"  {ENV_SERVERS}=a:7000 torchrun --nnodes 2 --nproc-per-node 4 --rdzv-endpoint a:29500 \\\n"
               "      --max-restarts 3 -m sparsecore.launch --token-file ~/.sparsecore-token --steps 10000")
    p.add_argument("--snapshot-every", type=int, default=100, metavar="N",
                   help="steps between cluster-wide snapshots, the points a restarted job resumes from (default: 100)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="deadline of every call to the servers and of the gloo group, in seconds (default: 300)")
    p.add_argument("--connect-wait", type=float, default=300.0, metavar="S",
                   help="how long to wait for servers that are not answering yet (with a coordinator: for the "
                        "cluster to be ready), in seconds (default: 300)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sparsecore.launch``: exit status 0 when the job is done, 2 for a setting
    that cannot work, 1 when the run failed (the engine then restarts the worker group)."""
    from . import RpcError, cli

    args = _parser().parse_args(argv)
    try:
        env = worker_env()
    except ValueError as e:
        print(f"sparsecore.launch: error: {e}", file=sys.stderr)
        return 2
    configure_logging(env, quiet=args.quiet)
    overrides = cli.flag_overrides(args)
    overrides[("train", "progress")] = False
    coordinator = os.environ.get(ENV_COORDINATOR, "") if overrides.get(("train", "coordinator")) is None else ""
    if overrides.get(("train", "servers")) is None and os.environ.get(ENV_SERVERS):  # refused beside a coordinator
        overrides[("train", "servers")] = os.environ[ENV_SERVERS]
    try:
        settings = cli.load_settings(args.config, overrides)
        settings["train"]["coordinator"] = settings["train"]["coordinator"] or coordinator
        if not 0 < args.timeout <= 2**31 / 1000 or not 0 <= args.connect_wait <= 7 * 24 * 3600:
            raise cli.ConfigError(f"--timeout must be in (0, {2**31 // 1000}] and --connect-wait in [0, 604800] "
                                  f"seconds, got {args.timeout} and {args.connect_wait}")
        if settings["train"]["coordinator"]:
            run_coordinated(settings, env, timeout=args.timeout, wait=args.connect_wait)
            return 0
        mode, staleness = _mode(settings)
        servers = cli.server_addresses(settings)
        if not servers:
            raise cli.ConfigError(f"no parameter servers: give --servers or ${ENV_SERVERS} (host:port,...), or a "
                                  f"coordinator (--coordinator or ${ENV_COORDINATOR})")
        if args.snapshot_every < 1:
            raise cli.ConfigError(f"--snapshot-every must be >= 1, got {args.snapshot_every}")
        token = cli.server_token(settings)
        settings["train"]["servers"] = []  # this worker connects itself (synchronously)
        settings["train"]["token_file"] = ""
        run_worker(settings, env, servers=servers, token=token, snapshot_every=args.snapshot_every,
                   timeout=args.timeout, connect_wait=args.connect_wait, mode=mode or "sync", staleness=staleness)
    except cli.ConfigError as e:
        print(f"sparsecore.launch: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, RpcError) as e:
        print(f"sparsecore.launch: error (rank {env.rank}): {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
