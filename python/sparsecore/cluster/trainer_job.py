"""The job of ``sparsecore train`` settings as a coordinated job: the adapter that lets
:class:`sparsecore.cluster.Worker` drive the :class:`sparsecore.Trainer` that
``sparsecore train`` and ``python -m sparsecore.launch`` build (one training loop for all).

A coordinated worker may be rolled back and restarted alone while the others stay in their
processes, so the dense model cannot live in a gloo group of fixed members: its parameters are
dense variables on the servers (:class:`sparsecore.torch.ServerDenseOptimizer`, the dense
optimizer of the settings applied there by the same update rules). The servers' snapshots
then hold them with the tables, and the coordinator restores both together.

Each worker's state at a snapshot (bytes of ``torch.save``, tensors and plain values only) is
its step, samples, reader position and the model's buffers.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Callable, Optional

log = logging.getLogger("sparsecore.cluster")

__all__ = ["TrainerJob", "run_trainer", "server_optimizer"]

# The dense variables' name prefix on the servers (one model per job).
DENSE_NAME = "sparsecore.dense"


def server_optimizer(spec: dict[str, Any]) -> Any:
    """The server-side optimizer (sc.Adam, sc.Adagrad, sc.SGD, sc.Momentum) of a
    ``[dense_optimizer]`` section, with torch's defaults for what it leaves out; ConfigError
    for an optimizer the servers do not have (rmsprop) or an argument they do not take."""
    from .. import config as C
    from ..cli import ConfigError

    args = dict(spec)
    name = str(args.pop("name", "adam")).lower()
    if name not in ("adam", "adamw", "adagrad", "sgd"):
        raise ConfigError(f"dense_optimizer '{name}' has no server-side twin; a coordinated job keeps the dense "
                          "model on the servers: use adam, adamw, adagrad or sgd")
    try:
        lr, decay = float(args.pop("lr", 1e-3)), float(args.pop("weight_decay", 0.0))
        if name in ("adam", "adamw"):
            b1, b2 = (float(b) for b in args.pop("betas", (0.9, 0.999)))
            betas = (b1, b2)
            eps = float(args.pop("eps", 1e-8))
            opt: Any = (C.AdamW(lr=lr, betas=betas, eps=eps, weight_decay=float(decay if "weight_decay" in spec
                                                                                  else 1e-2))
                        if name == "adamw" else C.Adam(lr=lr, betas=betas, eps=eps, weight_decay=decay))
        elif name == "adagrad":
            opt = C.Adagrad(lr=lr, eps=float(args.pop("eps", 1e-10)), weight_decay=decay,
                            initial_accumulator=float(args.pop("initial_accumulator_value", 0.0)))
        else:
            momentum = float(args.pop("momentum", 0.0))
            nesterov = bool(args.pop("nesterov", False))
            opt = (C.Momentum(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=decay) if momentum
                   else C.SGD(lr=lr, weight_decay=decay))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"dense_optimizer '{name}': {e}") from None
    if args:
        raise ConfigError(f"dense_optimizer '{name}': the servers' optimizer takes no {', '.join(sorted(args))}")
    return opt


class TrainerJob:
    """One generation of worker ``rank`` of ``num_workers``: the trainer of ``settings`` (see
    :func:`sparsecore.cli.load_settings`) on ``cluster``, reading its shard of the data, its
    dense parameters kept by the servers. ``step(s)`` trains one batch (the trainer must be at
    step ``s``); ``state_dict``/``load_state_dict`` carry the worker's own state."""

    def __init__(self, cluster: Any, settings: dict[str, dict[str, Any]], rank: int, num_workers: int):
        from .. import cli
        from ..torch import ServerDenseOptimizer

        optimizer = server_optimizer(settings["dense_optimizer"])
        self.trainer, self.evaluation, _ = cli.build_trainer(settings, server=cluster, shard=(rank, num_workers))
        self.trainer.dense_optimizer = ServerDenseOptimizer(self.trainer.model.parameters(), cluster, optimizer,
                                                            name=DENSE_NAME)
        self.rank = rank

    def step(self, step: int) -> None:
        trainer = self.trainer
        if trainer.step != step:
            raise RuntimeError(f"the coordinator asks for step {step}; this worker's trainer is at step {trainer.step}")
        trainer.fit(1)
        if trainer.step != step + 1:
            raise RuntimeError(f"worker {self.rank}'s data ended at step {step}: every worker of a coordinated job "
                               "runs the same number of steps (use a repeating source, or fewer --steps)")

    def state_dict(self) -> bytes:
        import torch

        from ..trainer import _json_default

        t = self.trainer
        state = {"step": int(t.step), "samples": int(t.samples),
                 "reader": json.dumps(t._reader_state, default=_json_default),
                 "buffers": {k: v for k, v in t.model.state_dict().items()
                             if k not in dict(t.model.named_parameters())}}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_state_dict(self, data: bytes) -> None:
        import torch

        try:
            # Tensors and plain containers only: a forged state cannot run code here.
            state = torch.load(io.BytesIO(data), weights_only=True)
            step, samples, reader = int(state["step"]), int(state["samples"]), json.loads(state["reader"])
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise RuntimeError(f"worker {self.rank}'s state in the snapshot is damaged: {e}") from None
        t = self.trainer
        t.model.load_state_dict(state["buffers"], strict=False)
        t.embedding.collection._c.step = step  # the servers' rows are at this step (restored by the coordinator)
        t.step, t.samples = step, samples
        t.dense_optimizer.step_count = step
        t._reader_state = reader
        if reader is not None:
            t.source.load_state_dict(reader)


def run_trainer(settings: dict[str, dict[str, Any]], coordinator: str, rank: int, num_workers: int, *,
                token: str = "", timeout: float = 300.0, recovery_timeout: float = 600.0,
                mode: Optional[str] = None, staleness: Optional[int] = None,
                make_worker: Optional[Callable[..., Any]] = None) -> dict[str, Any]:
    """Worker ``rank`` of the coordinated job of ``settings`` (``--steps`` required) to its end:
    the coordinator at ``coordinator`` names the servers, takes the snapshots and decides
    every roll-back. ``mode``/``staleness``: what the worker expects of the coordinator (None:
    its mode; see :class:`Worker`). Returns ``{"rank", "step", "recoveries", "samples"}`` and, on rank 0, the
    final evaluation as ``"eval"`` (when the job has evaluation data)."""
    from .. import cli
    from .worker import Worker

    total = cli._steps(settings)
    if total is None:
        raise cli.ConfigError("a coordinated job needs --steps: every worker runs the same number of steps")
    server_optimizer(settings["dense_optimizer"])  # refused before anything waits for the cluster
    worker = (make_worker or Worker)(coordinator, rank, token=token, timeout=timeout,
                                     recovery_timeout=recovery_timeout, mode=mode, staleness=staleness)
    jobs: list[TrainerJob] = []

    def make_job(cluster: Any) -> TrainerJob:
        jobs[:] = [TrainerJob(cluster, settings, rank, num_workers)]
        return jobs[0]

    worker.run(make_job, steps=total)
    result: dict[str, Any] = {"rank": rank, "step": total, "recoveries": worker.recoveries,
                              "samples": jobs[0].trainer.samples if jobs else 0}
    if rank == 0:
        print(f"{total:,} steps in all on {num_workers} workers, {worker.recoveries} roll-back(s) of this worker")
        if jobs and jobs[0].evaluation is not None:
            from ..trainer import describe_metrics

            result["eval"] = jobs[0].trainer.evaluate(jobs[0].evaluation)
            print(f"eval {describe_metrics(result['eval'])}")
    return result
