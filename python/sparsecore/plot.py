"""Training curves as a PNG (matplotlib): what ``sparsecore train --plot`` and
:meth:`sparsecore.Trainer.plot` write."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

__all__ = ["plot_training"]


def plot_training(path: Union[str, os.PathLike], history: Sequence[Mapping[str, Any]],
                  eval_points: Sequence[tuple[int, float]] = (), planted_auc: Optional[float] = None) -> None:
    """Four panels over training steps: training loss, evaluation AUC (with the planted
    optimum as a line when the data has one, and the progressive AUC of each partition of a
    followed directory), throughput (samples/s) and the size of each table (rows; the total
    too when there are several tables).

    ``history``: the Trainer's history: log entries (``step``, ``loss``, ``samples_per_s``,
    ``rows`` per table) and progressive-validation entries (``partition``, ``step``, ``auc``);
    ``eval_points``: (step, AUC) pairs."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    # matplotlib announces font caches and backends at INFO; a training log is not the place.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = [h for h in history if "loss" in h]
    progressive = [h for h in history if "partition" in h and h.get("auc") is not None]
    steps = [h["step"] for h in logged]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(steps, [h["loss"] for h in logged])
    axes[0].set(title="training loss", xlabel="step")
    if eval_points:
        axes[1].plot(*zip(*eval_points), marker="o", label="model")
    if progressive:
        axes[1].plot([h["step"] for h in progressive], [h["auc"] for h in progressive], marker=".",
                     label="progressive (next partition)")
    if planted_auc is not None:
        axes[1].axhline(planted_auc, color="tab:green", linestyle="--", label=f"planted optimum {planted_auc:.4f}")
    if eval_points or progressive or planted_auc is not None:
        axes[1].legend(loc="lower right")
    axes[1].set(title="evaluation AUC", xlabel="step")
    axes[2].plot(steps, [h.get("samples_per_s", float("nan")) for h in logged])
    axes[2].set(title="samples/s", xlabel="step", ylim=(0, None))
    names = list(dict.fromkeys(name for h in logged for name in h["rows"]))
    for name in names:
        axes[3].plot(steps, [h["rows"].get(name, float("nan")) for h in logged], label=name, linewidth=1)
    if len(names) > 1:
        axes[3].plot(steps, [sum(h["rows"].values()) for h in logged], label="total", color="black", linewidth=2)
    if 1 < len(names) <= 8:
        axes[3].legend(loc="upper left", fontsize="small")
    axes[3].set(title="table size (rows)", xlabel="step")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)
