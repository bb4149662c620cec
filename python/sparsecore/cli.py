"""The ``sparsecore`` command.

``sparsecore train`` runs the main job: with no arguments it trains XDL's W2 model (23
feature groups x dim 18 -> MLP 414-200-80-1) on built-in synthetic data with a planted
ground truth, on the embedded default, and prints the final AUC next to the planted optimum.
Flags or a TOML file (``--config``) choose data files, model, optimizers, batch size, steps
and checkpoints; flags win over the file. ``sparsecore server`` starts a parameter server.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["main", "DEFAULTS", "load_settings"]

log = logging.getLogger("sparsecore.cli")

# The main job. Sections and keys are those of the TOML file (examples/w2.toml documents them).
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"format": "synthetic", "train": [], "eval": [], "batch_size": 2000, "columns": {}, "fields": 0,
             "delimiter": ",", "header": False, "reader_threads": 1, "has_labels": True},
    "synthetic": {"vocab_size": 20_000, "zipf_exponent": 1.5, "min_bag": 1, "max_bag": 10, "weight_std": 0.1,
                  "bias": -1.0, "seed": 0, "samples_per_view": 4, "compressed": True, "eval_samples": 100_000},
    "model": {"dim": 18, "hidden": [200, 80], "pooling": "sum", "groups": []},
    "sparse_optimizer": {"name": "adagrad", "lr": 0.05},
    "dense_optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"steps": 300, "seed": 0, "threads": 0, "checkpoint_dir": "", "checkpoint_every": 0, "eval_every": 0,
              "log_every": 50, "plot": "", "deterministic": False, "progress": True, "stale_sparse": False,
              "prefetch": 2},
}

# Sections whose extra keys are passed on as optimizer arguments.
_OPEN_SECTIONS = ("sparse_optimizer", "dense_optimizer")

_FORMATS = ("synthetic", "criteo", "libsvm", "libffm", "csv", "parquet")

# flag -> (section, key, type, help); a flag left out keeps the file's (or the default) value.
_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--data-format", "data", "format", str, f"one of {', '.join(_FORMATS)}"),
    ("--train-data", "data", "train", "paths", "training files (any format but synthetic)"),
    ("--eval-data", "data", "eval", "paths", "evaluation files"),
    ("--batch-size", "data", "batch_size", int, "samples per step"),
    ("--vocab-size", "synthetic", "vocab_size", int, "synthetic: ids per feature group"),
    ("--zipf", "synthetic", "zipf_exponent", float, "synthetic: Zipf exponent of id frequencies"),
    ("--compression", "synthetic", "samples_per_view", int,
     "synthetic: samples per page view (the sample-compression ratio; 1 = none)"),
    ("--eval-samples", "synthetic", "eval_samples", int, "synthetic: held-out samples to evaluate on"),
    ("--dim", "model", "dim", int, "embedding dim of every group"),
    ("--hidden", "model", "hidden", "ints", "hidden widths of the MLP, e.g. 200,80"),
    ("--pooling", "model", "pooling", str, "sum or mean"),
    ("--sparse-optimizer", "sparse_optimizer", "name", str,
     "sgd, momentum, adagrad, rowwise_adagrad, adam, adamw, ftrl, group_lasso"),
    ("--sparse-lr", "sparse_optimizer", "lr", float, "learning rate of the embedding tables"),
    ("--dense-optimizer", "dense_optimizer", "name", str, "torch optimizer: adam, adamw, adagrad, sgd, rmsprop"),
    ("--dense-lr", "dense_optimizer", "lr", float, "learning rate of the MLP"),
    ("--steps", "train", "steps", int, "total steps (a resumed job trains the rest)"),
    ("--seed", "train", "seed", int, "seed of the tables and the MLP"),
    ("--threads", "train", "threads", int, "compute threads (0: one per core)"),
    ("--checkpoint-dir", "train", "checkpoint_dir", str,
     "save here at the end (and every --checkpoint-every steps); resume from it if it holds one"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "steps between checkpoints (0: only at the end)"),
    ("--eval-every", "train", "eval_every", int, "steps between evaluations (0: only at the end)"),
    ("--log-every", "train", "log_every", int, "steps between log lines"),
    ("--plot", "train", "plot", str, "write a PNG of loss, AUC and table size over steps (needs matplotlib)"),
]

_EPILOG = """\
examples:
  sparsecore train                                   # W2 on synthetic data, about a minute
  sparsecore train --steps 1000 --compression 16 --plot w2.png
  sparsecore train --config examples/w2.toml --checkpoint-dir ckpt/
  sparsecore train --data-format criteo --train-data day_0.tsv --eval-data day_1.tsv --dim 16
  sparsecore server --help

TOML sections: [data] [synthetic] [model] [sparse_optimizer] [dense_optimizer] [train];
keys are the flags' names with '_' (examples/w2.toml lists every one with its default).
"""


class ConfigError(ValueError):
    """A setting (flag or TOML key) that cannot be used; the message names it."""


# ----------------------------------------------------------------------------------- settings
def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def load_settings(config: Optional[str] = None, overrides: Optional[dict[tuple[str, str], Any]] = None
                  ) -> dict[str, dict[str, Any]]:
    """DEFAULTS, then the TOML file, then ``overrides`` ((section, key) -> value)."""
    settings = copy.deepcopy(DEFAULTS)
    if config:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError("--config needs Python 3.11+ (tomllib) or: pip install tomli") from None
        try:
            with open(config, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config '{config}': {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config '{config}' is not valid TOML: {e}") from None
        for section, table in doc.items():
            if section not in settings or not isinstance(table, dict):
                raise ConfigError(f"config '{config}': unknown section [{section}] "
                                  f"(sections: {', '.join(settings)})")
            for key, value in table.items():
                if key not in settings[section] and section not in _OPEN_SECTIONS:
                    raise ConfigError(f"config '{config}': unknown key '{key}' in [{section}] "
                                      f"(keys: {', '.join(settings[section])})")
                settings[section][key] = value
    for (section, key), value in (overrides or {}).items():
        settings[section][key] = value
    return settings


def _sparse_optimizer(spec: dict[str, Any]) -> Any:
    from . import FTRL, SGD, Adagrad, Adam, AdamW, GroupLasso, Momentum, RowwiseAdagrad

    kinds = {"sgd": SGD, "momentum": Momentum, "adagrad": Adagrad, "rowwise_adagrad": RowwiseAdagrad, "adam": Adam,
             "adamw": AdamW, "ftrl": FTRL, "group_lasso": GroupLasso}
    args = dict(spec)
    name = str(args.pop("name")).lower()
    if name not in kinds:
        raise ConfigError(f"sparse_optimizer: unknown name '{name}' (one of {', '.join(kinds)})")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    try:
        return kinds[name](**args)
    except TypeError as e:
        raise ConfigError(f"sparse_optimizer '{name}': {e}") from None


def _dense_optimizer(spec: dict[str, Any], params: Any) -> Any:
    import torch

    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
             "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
    args = dict(spec)
    name = str(args.pop("name")).lower()
    if name not in kinds:
        raise ConfigError(f"dense_optimizer: unknown name '{name}' (one of {', '.join(kinds)})")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    try:
        return kinds[name](params, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"dense_optimizer '{name}': {e}") from None


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


def build_sources(settings: dict[str, dict[str, Any]]) -> tuple[Any, Any, list[str], int, Any]:
    """(train source, eval source or None, group names, dense feature width, synthetic config)."""
    from . import data as scd

    d, syn, steps = settings["data"], settings["synthetic"], settings["train"]["steps"]
    fmt, batch = d["format"], int(d["batch_size"])
    if fmt not in _FORMATS:
        raise ConfigError(f"data.format: unknown format '{fmt}' (one of {', '.join(_FORMATS)})")
    if batch < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {batch}")
    if fmt == "synthetic":
        if d["train"]:
            raise ConfigError("data.train names files but data.format is 'synthetic'; set --data-format")
        r = int(syn["samples_per_view"])
        try:
            cfg = scd.SyntheticConfig.w2(vocab_size=int(syn["vocab_size"]), zipf_exponent=float(syn["zipf_exponent"]),
                                         min_bag=int(syn["min_bag"]), max_bag=int(syn["max_bag"]),
                                         weight_std=float(syn["weight_std"]), bias=float(syn["bias"]),
                                         seed=int(syn["seed"]), samples_per_view=r, batch_size=batch)
            compressed = bool(syn["compressed"]) and r > 1
            train = scd.SyntheticData(cfg, num_samples=steps * batch, compressed=compressed)
            start = _eval_start(r)
            evaluation = scd.SyntheticData(cfg, start=start, num_samples=start + int(syn["eval_samples"]),
                                           compressed=compressed)
        except ValueError as e:
            raise ConfigError(f"synthetic: {e}") from None
        return train, evaluation, cfg.names(), 0, cfg
    if not d["train"]:
        raise ConfigError(f"data.format '{fmt}' needs training files (--train-data)")
    train_paths = _check_files(d["train"], "training")
    eval_paths = _check_files(d["eval"], "evaluation") if d["eval"] else []
    options = {"batch_size": batch}
    if fmt != "parquet":
        options["num_threads"] = int(d["reader_threads"])

    def make(paths: list[str]) -> Any:
        if fmt == "criteo":
            return scd.CriteoReader(paths, has_labels=bool(d["has_labels"]), **options)
        if fmt == "libsvm":
            return scd.LibsvmReader(paths, **options)
        if fmt == "libffm":
            if not d["fields"]:
                raise ConfigError("data.format 'libffm' needs data.fields (a count or a list of names)")
            return scd.LibffmReader(paths, d["fields"], **options)
        if not d["columns"]:
            raise ConfigError(f"data.format '{fmt}' needs a schema: [data.columns] name = type")
        if fmt == "csv":
            return scd.CsvReader(paths, d["columns"], delimiter=d["delimiter"], header=bool(d["header"]), **options)
        return scd.ParquetReader(paths, d["columns"], **options)

    try:
        train = make(train_paths)
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
        columns = scd.schema.normalize_columns(d["columns"])
        groups = list(dict.fromkeys(c.group or c.name for c in columns
                                    if c.type in ("categorical", "multi_categorical")))
        dense = sum(c.type == "dense" for c in columns)
    return train, evaluation, groups, dense, None


def build_trainer(settings: dict[str, dict[str, Any]]) -> tuple[Any, Any, Any]:
    """(Trainer, eval source or None, synthetic config or None) for ``settings``."""
    import torch

    from . import TableConfig, set_num_threads
    from .torch import mlp
    from .trainer import Trainer

    m, t = settings["model"], settings["train"]
    if int(t["steps"]) < 1:
        raise ConfigError(f"train.steps must be >= 1, got {t['steps']}")
    if int(t["threads"]) > 0:
        set_num_threads(int(t["threads"]))
        torch.set_num_threads(int(t["threads"]))
    train, evaluation, groups, dense_width, synthetic = build_sources(settings)
    if m["groups"]:
        groups = list(m["groups"])  # an unknown one fails with the data's names before training
    optimizer = _sparse_optimizer(settings["sparse_optimizer"])
    if m["pooling"] not in ("sum", "mean"):
        raise ConfigError(f"model.pooling must be 'sum' or 'mean' for the MLP, got {m['pooling']!r}")
    dim = int(m["dim"])
    tables = {g: TableConfig(dim=dim, optimizer=optimizer, pooling=m["pooling"]) for g in groups}
    torch.manual_seed(int(t["seed"]))
    try:
        model = mlp(dim * len(groups) + dense_width, list(m["hidden"]))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    dense_optimizer = _dense_optimizer(settings["dense_optimizer"], model.parameters())
    trainer = Trainer(train, model, tables, dense_optimizer=dense_optimizer, use_dense=dense_width > 0,
                      seed=int(t["seed"]), prefetch=int(t["prefetch"]), stale_sparse=bool(t["stale_sparse"]),
                      deterministic=bool(t["deterministic"]), log_every=int(t["log_every"]),
                      progress=bool(t["progress"]))
    return trainer, evaluation, synthetic


def run_train(settings: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Runs the job of ``settings``; returns the final evaluation (empty without eval data)."""
    t = settings["train"]
    if t["plot"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    trainer, evaluation, synthetic = build_trainer(settings)
    ckpt = t["checkpoint_dir"]
    if ckpt:
        trainer.resume(ckpt)
    total = int(t["steps"])
    remaining = total - trainer.step
    eval_points: list[tuple[int, float]] = []
    eval_start = evaluation.state_dict() if evaluation is not None else None

    def evaluate() -> dict[str, float]:
        evaluation.load_state_dict(eval_start)  # every evaluation reads the same samples
        result = trainer.evaluate(evaluation)
        eval_points.append((trainer.step, result["auc"]))
        return result

    def on_interval(tr: Any) -> None:
        if t["eval_every"] and evaluation is not None and tr.step % int(t["eval_every"]) == 0 and tr.step < total:
            result = evaluate()
            log.info("step %d eval AUC %.4f", tr.step, result["auc"])
        if ckpt and t["checkpoint_every"] and tr.step % int(t["checkpoint_every"]) == 0:
            tr.save(ckpt)

    every = _gcd_nonzero(int(t["eval_every"]) if evaluation is not None else 0, int(t["checkpoint_every"]))
    start = time.perf_counter()
    if remaining > 0:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            trainer.fit(remaining, every=every, on_interval=on_interval)
    elapsed = time.perf_counter() - start
    if ckpt:
        trainer.save(ckpt)
    result = evaluate() if evaluation is not None else {}
    _report(trainer, result, elapsed, max(remaining, 0), settings)
    if t["plot"]:
        trainer.plot(t["plot"], eval_points)
        print(f"plot written to {t['plot']}")
    return result


def _gcd_nonzero(a: int, b: int) -> int:
    import math

    return math.gcd(a, b) if a and b else (a or b)


def _report(trainer: Any, result: dict[str, float], elapsed: float, steps: int, settings: dict[str, Any]) -> None:
    batch = settings["data"]["batch_size"]
    rows = trainer.embedding.collection.sizes()
    print(f"trained {steps} steps ({trainer.step} in all), {steps * batch:,} samples in {elapsed:.1f} s "
          f"({steps * batch / max(elapsed, 1e-9):,.0f} samples/s); {sum(rows.values()):,} rows in "
          f"{len(rows)} tables")
    if not result:
        return
    from .trainer import describe_metrics

    print(f"eval {describe_metrics(result)}")


# ----------------------------------------------------------------------------------- commands
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsecore", description="sparsecore: sparse deep learning, XDL style.")
    sub = parser.add_subparsers(dest="command", metavar="{train,server}")
    train = sub.add_parser(
        "train", help="train a CTR model (default: W2 on built-in synthetic data)",
        description="Train an embedding + MLP click-through-rate model on the embedded default. With no "
                    "arguments: XDL's W2 model (23 groups x dim 18 -> MLP 414-200-80-1) on synthetic data "
                    "with a planted model; prints the final AUC next to the planted optimum.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", metavar="FILE.toml", help="settings file; flags override it")
    for flag, section, key, kind, text in _FLAGS:
        default = DEFAULTS[section][key]
        help_text = f"{text} (default: {default!r})" if default not in ("", [], {}) else text
        if kind == "paths":
            train.add_argument(flag, nargs="+", metavar="PATH", dest=f"{section}.{key}", help=help_text)
        elif kind == "ints":
            train.add_argument(flag, type=_ints, metavar="N,N", dest=f"{section}.{key}", help=help_text)
        else:
            train.add_argument(flag, type=kind, dest=f"{section}.{key}", help=help_text)
    train.add_argument("--no-compression", action="store_const", const=False, dest="synthetic.compressed",
                       help="synthetic: feed page views uncompressed (same samples, user groups repeated)")
    train.add_argument("--deterministic", action="store_const", const=True, dest="train.deterministic",
                       help="bit-reproducible run (resumed or not)")
    train.add_argument("--stale-sparse", action="store_const", const=True, dest="train.stale_sparse",
                       help="pull batch k+1's rows during the dense step of batch k (one step stale)")
    train.add_argument("--no-progress", action="store_const", const=False, dest="train.progress",
                       help="no progress bar")
    train.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final result")
    sub.add_parser("server", help="run a parameter server (arguments go to it; see 'server --help')",
                   add_help=False)
    return parser


def _server(argv: list[str]) -> int:
    from .server import main as server_main

    return int(server_main(argv) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server"]:  # every argument after it belongs to the server's own parser
        return _server(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    overrides = {}
    for name, value in vars(args).items():
        if "." in name and value is not None:
            section, key = name.split(".", 1)
            overrides[(section, key)] = value
    if args.quiet:
        overrides[("train", "progress")] = False
    try:
        run_train(load_settings(args.config, overrides))
    except ConfigError as e:
        print(f"sparsecore train: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        print(f"sparsecore train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
