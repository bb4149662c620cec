"""The data of ``sparsecore train``: the training and evaluation sources that a job's settings
name (synthetic, text formats, Parquet, a followed directory), each worker's share of them, and
:class:`ConfigError`, the error of every setting that cannot be used (``sparsecore.cli``
re-exports both)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional


class ConfigError(ValueError):
    """A setting (flag or TOML key) that cannot be used; the message names it."""


_FORMATS = ("synthetic", "criteo", "libsvm", "libffm", "csv", "tsv", "parquet")
_SYNTHETIC_STEPS = 300


def _eval_start(samples_per_view: int) -> int:
    # Held-out samples live far past any training stream, on a page-view boundary.
    return (1 << 40) // samples_per_view * samples_per_view


def _check_files(paths: Sequence[str], what: str) -> list[str]:
    if isinstance(paths, str):
        paths = [paths]
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError(f"{what} file '{p}' does not exist or is not a file")
        if not os.access(p, os.R_OK):
            raise ConfigError(f"{what} file '{p}' is not readable")
    return list(paths)


def parse_columns(spec: Any) -> list[tuple[str, ...]]:
    """A schema from ``--columns`` text (``name:type[:group],...``), a TOML table
    (``{name = type}``) or a TOML list of such strings; (name, type[, group]) tuples."""
    if isinstance(spec, dict):
        return [(str(n), str(t)) for n, t in spec.items()]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        parts = [x.strip() for x in str(item).split(":")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"data.columns: cannot read {str(item).strip()!r}: expected name:type or "
                              "name:type:group (types: label, dense, categorical, multi_categorical, ignore)")
        out.append(tuple(parts))
    return out


def _steps(settings: dict[str, dict[str, Any]]) -> Optional[int]:
    """The job's total steps; None: until the data ends."""
    steps = int(settings["train"]["steps"])
    if steps < 0:
        raise ConfigError(f"train.steps must be >= 0, got {steps}")
    if steps == 0:
        return _SYNTHETIC_STEPS if settings["data"]["format"] == "synthetic" else None
    return steps


def build_sources(settings: dict[str, dict[str, Any]], shard: tuple[int, int] = (0, 1)
                  ) -> tuple[Any, Any, list[str], int, Any]:
    """(train source, eval source or None, group names, dense feature width, synthetic config).
    ``shard`` = (rank, workers): worker ``rank``'s part of the training data, disjoint from the
    others': its own stretch of a synthetic stream, or every workers-th file from the rank-th."""
    from . import data as scd

    rank, workers = shard
    d, syn = settings["data"], settings["synthetic"]
    fmt, batch = d["format"], int(d["batch_size"])
    if fmt not in _FORMATS:
        raise ConfigError(f"data.format: unknown format '{fmt}' (one of {', '.join(_FORMATS)})")
    if batch < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {batch}")
    if int(d["epochs"]) < 1:
        raise ConfigError(f"data.epochs must be >= 1, got {d['epochs']}")
    if not 0 <= float(d["max_bad_fraction"]) <= 1:
        raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {d['max_bad_fraction']}")
    if fmt == "synthetic":
        if d["train"]:
            raise ConfigError("data.train names files but data.format is 'synthetic'; set --data-format")
        if int(d["epochs"]) != 1 or d["shuffle"]:
            raise ConfigError("--epochs and --shuffle are for files; synthetic data is a fresh stream (set --steps)")
        r = int(syn["samples_per_view"])
        try:
            cfg = scd.SyntheticConfig.w2(vocab_size=int(syn["vocab_size"]), zipf_exponent=float(syn["zipf_exponent"]),
                                         min_bag=int(syn["min_bag"]), max_bag=int(syn["max_bag"]),
                                         weight_std=float(syn["weight_std"]), bias=float(syn["bias"]),
                                         seed=int(syn["seed"]), samples_per_view=r, batch_size=batch,
                                         drift_period=int(syn["drift_period"]))
            compressed = bool(syn["compressed"]) and r > 1
            # Synthetic data always has a step count (_steps gives _SYNTHETIC_STEPS for 0).
            steps = _steps(settings) or _SYNTHETIC_STEPS
            span = -(-steps * batch // r) * r  # one worker's samples, to a page-view boundary
            first = rank * span
            train_stream = scd.SyntheticData(cfg, start=first, num_samples=first + steps * batch,
                                             compressed=compressed)
            # A drifting stream is evaluated on the samples right after training (far past it,
            # every id would be one training never saw).
            start = workers * span if cfg.drift_period else _eval_start(r)
            eval_stream = scd.SyntheticData(cfg, start=start, num_samples=start + int(syn["eval_samples"]),
                                            compressed=compressed)
        except ValueError as e:
            raise ConfigError(f"synthetic: {e}") from None
        return train_stream, eval_stream, cfg.names(), 0, cfg
    follow = str(d["follow"] or "")
    if follow:
        if d["train"]:
            raise ConfigError("--follow and --train-data both name the training data; give one")
        if int(d["epochs"]) != 1 or d["shuffle"]:
            raise ConfigError("--epochs and --shuffle are for --train-data; a followed directory is read once, "
                              "in partition order")
        if not os.path.isdir(follow):
            raise ConfigError(f"--follow: '{follow}' is not a directory")
        if not float(d["follow_timeout"]) >= 0:
            raise ConfigError(f"data.follow_timeout must be >= 0 seconds, got {d['follow_timeout']}")
    elif not d["train"]:
        raise ConfigError(f"data.format '{fmt}' needs training files (--train-data or --follow)")
    if follow and workers > 1:
        raise ConfigError("--follow reads one directory in one worker; with several workers give --train-data")
    train_paths = _check_files(d["train"], "training") if not follow else []
    if workers > 1:
        if len(train_paths) < workers:
            raise ConfigError(f"{len(train_paths)} training file(s) for {workers} workers: each worker reads "
                              "whole files, at least one")
        train_paths = train_paths[rank::workers]
    eval_paths = _check_files(d["eval"], "evaluation") if d["eval"] else []
    options: dict[str, Any] = {"batch_size": batch}
    if fmt != "parquet":
        options["num_threads"] = int(d["reader_threads"])
        options["max_bad_fraction"] = float(d["max_bad_fraction"])
    columns = parse_columns(d["columns"]) if d["columns"] else []
    delimiter = d["delimiter"] or ("\t" if fmt == "tsv" else ",")
    if fmt in ("csv", "tsv", "parquet") and not columns:
        raise ConfigError(f"data.format '{fmt}' needs a schema: --columns 'name:type,...' "
                          "(or [data.columns] name = type)")

    def make(paths: list[str]) -> Any:
        if fmt == "criteo":
            return scd.CriteoReader(paths, has_labels=bool(d["has_labels"]), **options)
        if fmt == "libsvm":
            return scd.LibsvmReader(paths, **options)
        if fmt == "libffm":
            if not d["fields"]:
                raise ConfigError("data.format 'libffm' needs data.fields (a count or a list of names)")
            return scd.LibffmReader(paths, d["fields"], **options)
        if fmt in ("csv", "tsv"):
            return scd.CsvReader(paths, columns, delimiter=delimiter, multi_separator=d["multi_separator"],
                                 header=bool(d["header"]), **options)
        return scd.ParquetReader(paths, columns, **options)

    train: Any
    try:
        if follow:
            train = scd.FollowDirectory(follow, make, marker=str(d["follow_marker"]) or None,
                                        timeout=float(d["follow_timeout"]))
        else:
            train = scd.Epochs(make, train_paths, epochs=int(d["epochs"]), shuffle=bool(d["shuffle"]),
                               shuffle_buffer=int(d["shuffle_buffer"]), seed=int(settings["train"]["seed"]))
        evaluation = make(eval_paths) if eval_paths else None
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"data: {e}") from None
    if fmt == "criteo":
        groups, dense = [f"C{i}" for i in range(1, 27)], 13
    elif fmt == "libsvm":
        groups, dense = ["features"], 0
    elif fmt == "libffm":
        f = d["fields"]
        groups, dense = ([f"field{i}" for i in range(f)] if isinstance(f, int) else [str(x) for x in f]), 0
    else:
        schema = scd.schema.normalize_columns(columns)
        groups = list(dict.fromkeys(c.group or c.name for c in schema
                                    if c.type in ("categorical", "multi_categorical")))
        dense = sum(c.type == "dense" for c in schema)
    return train, evaluation, groups, dense, None
