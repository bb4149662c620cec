"""The ``sparsecore`` command.

``sparsecore train`` runs the main job: with no arguments it trains XDL's W2 model (23
feature groups x dim 18 -> MLP 414-200-80-1) on built-in synthetic data with a planted
ground truth, on the embedded default, and prints the final AUC next to the planted optimum.
Flags or a TOML file (``--config``) choose data files, model, optimizers, batch size, steps
and checkpoints; flags win over the file. ``--servers`` trains against parameter servers
instead of the embedded tables. ``sparsecore server`` starts a parameter server,
``sparsecore coordinator`` the coordinator of a job (:mod:`sparsecore.cluster`);
``sparsecore serve`` serves an exported model (:mod:`sparsecore.serve`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from .cli_sources import _FORMATS, _SYNTHETIC_STEPS, ConfigError, _steps, build_sources
from .launch import COORDINATED_DEFAULTS, COORDINATED_FLAGS, run_coordinated

__all__ = ["main", "DEFAULTS", "load_settings"]

log = logging.getLogger("sparsecore.cli")

# The main job. Sections and keys are those of the TOML file (examples/w2.toml documents them).
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"format": "synthetic", "train": [], "eval": [], "batch_size": 2000, "columns": {}, "fields": 0,
             "delimiter": "", "header": False, "multi_separator": "|", "reader_threads": 1, "has_labels": True,
             "max_bad_fraction": 0.01, "epochs": 1, "shuffle": False, "shuffle_buffer": 100_000,
             "follow": "", "follow_marker": "_SUCCESS", "follow_timeout": 600.0, "progressive": True},
    "synthetic": {"vocab_size": 20_000, "zipf_exponent": 1.5, "min_bag": 1, "max_bag": 10, "weight_std": 0.1,
                  "bias": -1.0, "seed": 0, "samples_per_view": 4, "compressed": True, "eval_samples": 100_000,
                  "drift_period": 0},
    "model": {"dim": 18, "hidden": [200, 80], "pooling": "sum", "groups": [], "num_embeddings": 0,
              "out_of_range": "error", "embedding_compression": ""},
    "sparse_optimizer": {"name": "adagrad", "lr": 0.05},
    "dense_optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"steps": 0, "seed": 0, "threads": 0, "checkpoint_dir": "", "checkpoint_every": 0, "eval_every": 0,
              "log_every": 50, "plot": "", "deterministic": False, "progress": True, "stale_sparse": False,
              "prefetch": 2, "servers": [], "token_file": "", **COORDINATED_DEFAULTS},
}

# Sections whose extra keys are passed on as optimizer arguments.
_OPEN_SECTIONS = ("sparse_optimizer", "dense_optimizer")


# Steps of a synthetic job when --steps is 0 (file data then trains every epoch to the end).

# flag -> (section, key, type, placeholder, help); a flag left out keeps the file's (or the
# default) value.
_FLAGS: list[tuple[str, str, str, Any, str, str]] = [
    ("--data-format", "data", "format", str, "FORMAT", f"one of {', '.join(_FORMATS)}"),
    ("--train-data", "data", "train", "paths", "PATH",
     "training files (any format but synthetic; gzip-compressed files are read as they are)"),
    ("--eval-data", "data", "eval", "paths", "PATH", "evaluation files"),
    ("--follow", "data", "follow", str, "DIR",
     "instead of --train-data, follow a directory of time partitions (subdirectories in name order, each complete "
     "once it holds --follow-marker) as they appear; each partition is evaluated before it is trained on "
     "(progressive validation: AUC and logloss per partition in the log) unless --no-progressive"),
    ("--follow-marker", "data", "follow_marker", str, "NAME",
     "with --follow: the file that marks a partition complete ('': complete once the next partition appears)"),
    ("--follow-timeout", "data", "follow_timeout", float, "S",
     "with --follow: end the run when no new partition completes within S seconds"),
    ("--columns", "data", "columns", str, "SPEC",
     "csv/tsv/parquet schema: name:type[:group],... with type label, dense, categorical, multi_categorical or "
     "ignore, e.g. 'clicked:label,user:categorical,genres:multi_categorical'; with --header, only the columns "
     "to use (checked against the header, in any order)"),
    ("--delimiter", "data", "delimiter", str, "CHAR", "csv/tsv field delimiter (default: ',' for csv, tab for tsv)"),
    ("--multi-separator", "data", "multi_separator", str, "CHAR",
     "csv/tsv: separator of the values inside a multi_categorical field"),
    ("--batch-size", "data", "batch_size", int, "N", "samples per step"),
    ("--epochs", "data", "epochs", int, "N", "passes over the training files"),
    ("--shuffle-buffer", "data", "shuffle_buffer", int, "N", "samples mixed at a time by --shuffle"),
    ("--max-bad-fraction", "data", "max_bad_fraction", float, "X",
     "fail when more than this fraction of the lines read is malformed (1: never)"),
    ("--vocab-size", "synthetic", "vocab_size", int, "N", "synthetic: ids per feature group"),
    ("--zipf", "synthetic", "zipf_exponent", float, "X", "synthetic: Zipf exponent of id frequencies"),
    ("--compression", "synthetic", "samples_per_view", int, "N",
     "synthetic: samples per page view (the sample-compression ratio; 1 = none)"),
    ("--eval-samples", "synthetic", "eval_samples", int, "N", "synthetic: held-out samples to evaluate on"),
    ("--drift", "synthetic", "drift_period", int, "N",
     "synthetic: ids live N samples each: every id of the vocabulary is replaced by a new one once per N "
     "samples, staggered (0: a stationary stream)"),
    ("--dim", "model", "dim", int, "N", "embedding dim of every group"),
    ("--hidden", "model", "hidden", "ints", "N,N", "hidden widths of the MLP, e.g. 200,80"),
    ("--pooling", "model", "pooling", str, "MODE", "sum or mean"),
    ("--num-embeddings", "model", "num_embeddings", int, "N",
     "ids of every group are dense in [0, N): tables found by index, no hash (0: hash tables for any id)"),
    ("--out-of-range", "model", "out_of_range", str, "MODE",
     "with --num-embeddings, an id outside [0, N): 'error' (stop naming it) or 'hash' (map it into the range)"),
    ("--embedding-compression", "model", "embedding_compression", str, "SPEC",
     "compressed tables: ids share the rows of fixed-size component tables, e.g. 'multihash:k=2,rows=65536', "
     "'qr:rows=4096', 'binary:bits=32,block=8', 'random:buckets=65536,k=2' (sparsecore.parse_compression; "
     "'': a row per id)"),
    ("--sparse-optimizer", "sparse_optimizer", "name", str, "NAME",
     "sgd, momentum, adagrad, rowwise_adagrad, adam, adamw, ftrl, group_lasso"),
    ("--sparse-lr", "sparse_optimizer", "lr", float, "LR", "learning rate of the embedding tables"),
    ("--dense-optimizer", "dense_optimizer", "name", str, "NAME",
     "torch optimizer: adam, adamw, adagrad, sgd, rmsprop"),
    ("--dense-lr", "dense_optimizer", "lr", float, "LR", "learning rate of the MLP"),
    ("--steps", "train", "steps", int, "N",
     f"total steps; 0: {_SYNTHETIC_STEPS} on synthetic data, every epoch to the end on files "
     "(a resumed job trains the rest)"),
    ("--seed", "train", "seed", int, "N", "seed of the tables, the MLP and --shuffle"),
    ("--threads", "train", "threads", int, "N", "compute threads (0: one per core)"),
    ("--checkpoint-dir", "train", "checkpoint_dir", str, "DIR",
     "save here at the end (and every --checkpoint-every steps); resume from it if it holds one"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "N", "steps between checkpoints (0: only at the end)"),
    ("--eval-every", "train", "eval_every", int, "N",
     "steps between evaluations (0: only at the end, or about 10 over the run with --plot)"),
    ("--log-every", "train", "log_every", int, "N", "steps between log lines"),
    ("--plot", "train", "plot", str, "PNG",
     "write a PNG of loss, evaluation AUC (and the planted optimum), samples/s and table rows over steps "
     "(needs matplotlib)"),
    ("--servers", "train", "servers", "list", "HOST:PORT,...",
     "train against these parameter servers (in server-index order) instead of embedded tables"),
    ("--token-file", "train", "token_file", str, "PATH",
     "file holding the servers' shared token (default: $SPARSECORE_TOKEN; never on the command line)"),
]

_EPILOG = """\
examples:
  sparsecore train                                   # W2 on synthetic data, about a minute
  sparsecore train --steps 1000 --compression 16 --plot w2.png
  sparsecore train --config examples/w2.toml --checkpoint-dir ckpt/
  sparsecore train --data-format criteo --train-data day_0.gz --eval-data day_1.gz --dim 16 \\
                   --epochs 2 --shuffle
  sparsecore train --data-format csv --header --train-data ratings.csv \\
                   --columns 'clicked:label,user:categorical,genres:multi_categorical'
  sparsecore train --servers a:7000,b:7000 --token-file ~/.sparsecore-token --data-format criteo ...
  sparsecore train --data-format criteo --follow logs/ --follow-timeout 3600 --checkpoint-dir ckpt/ \
                   --checkpoint-every 1000      # hourly partitions logs/<hour>/ with a _SUCCESS marker
  sparsecore server --help

Malformed lines are skipped and counted; a run stops with an error naming the first one when
no line parses or more than --max-bad-fraction of them are malformed.

TOML sections: [data] [synthetic] [model] [sparse_optimizer] [dense_optimizer] [train];
keys are the flags' names with '_' (examples/w2.toml lists every one with its default).
"""



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

    kinds: dict[str, Callable[..., Any]] = {"sgd": SGD, "momentum": Momentum, "adagrad": Adagrad, "rowwise_adagrad": RowwiseAdagrad, "adam": Adam,
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


def server_addresses(settings: dict[str, dict[str, Any]]) -> list[str]:
    """``train.servers`` (--servers) as a list of "host:port", checked; [] without."""
    t = settings["train"]
    servers = t["servers"]
    if isinstance(servers, str):
        servers = servers.split(",")
    servers = [str(s).strip() for s in servers if str(s).strip()]
    if not servers:
        if t["token_file"] and not t["coordinator"]:
            raise ConfigError("--token-file is for --servers")
        return []
    for s in servers:
        host, _, port = s.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"train.servers: {s!r} is not host:port")
    if t["checkpoint_dir"]:
        raise ConfigError("--checkpoint-dir is for the embedded tables; with --servers the servers keep the "
                          "tables (start them with --snapshot-dir)")
    return servers


def server_token(settings: dict[str, dict[str, Any]]) -> str:
    """The servers' shared token: the file of --token-file, else $SPARSECORE_TOKEN, else ""."""
    from ._token import resolve_token

    try:
        return resolve_token(settings["train"]["token_file"] or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _connect(settings: dict[str, dict[str, Any]]) -> Any:
    """The cluster of --servers (None without), authenticated by --token-file or $SPARSECORE_TOKEN."""
    servers = server_addresses(settings)
    if not servers:
        return None
    from . import RpcError, connect

    token = server_token(settings)
    try:
        return connect(servers, token=token)
    except (RpcError, OSError, ValueError) as e:
        raise ConfigError(f"cannot reach the servers {', '.join(servers)}: {e}") from None


def build_trainer(settings: dict[str, dict[str, Any]], *, server: Any = None,
                  shard: tuple[int, int] = (0, 1)) -> tuple[Any, Any, Any]:
    """(Trainer, eval source or None, synthetic config or None) for ``settings``; its tables on
    ``server`` (a cluster) when given, else on the --servers, else embedded. ``shard``: the
    part of the data this worker reads (:func:`build_sources`)."""
    import torch

    from . import TableConfig, parse_compression, set_num_threads
    from ._compressed import expand_tables
    from .torch import mlp
    from .trainer import Trainer

    m, t = settings["model"], settings["train"]
    _steps(settings)
    if int(t["threads"]) > 0:
        set_num_threads(int(t["threads"]))
        torch.set_num_threads(int(t["threads"]))
    train, evaluation, groups, dense_width, synthetic = build_sources(settings, shard)
    if m["groups"]:
        groups = list(m["groups"])  # an unknown one fails with the data's names before training
    optimizer = _sparse_optimizer(settings["sparse_optimizer"])
    if m["pooling"] not in ("sum", "mean"):
        raise ConfigError(f"model.pooling must be 'sum' or 'mean' for the MLP, got {m['pooling']!r}")
    dim = int(m["dim"])
    num_embeddings = int(m["num_embeddings"])
    if num_embeddings < 0:
        raise ConfigError(f"model.num_embeddings must be >= 1 (or 0 for hash tables), got {num_embeddings}")
    if m["out_of_range"] not in ("error", "hash"):
        raise ConfigError(f"model.out_of_range must be 'error' or 'hash', got {m['out_of_range']!r}")
    known_size = {"num_embeddings": num_embeddings, "out_of_range": m["out_of_range"]} if num_embeddings else {}
    try:
        if m["embedding_compression"]:
            known_size["compression"] = parse_compression(str(m["embedding_compression"]))
        tables = {g: TableConfig(dim=dim, optimizer=optimizer, pooling=m["pooling"], **known_size) for g in groups}
        for table in expand_tables(tables).items():
            table[1].to_dict(table[0])  # the table's own checks, reported as a setting
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    torch.manual_seed(int(t["seed"]))
    try:
        model = mlp(dim * len(groups) + dense_width, list(m["hidden"]))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    dense_optimizer = _dense_optimizer(settings["dense_optimizer"], model.parameters())
    trainer = Trainer(train, model, tables, dense_optimizer=dense_optimizer, use_dense=dense_width > 0,
                      seed=int(t["seed"]), prefetch=int(t["prefetch"]), stale_sparse=bool(t["stale_sparse"]),
                      deterministic=bool(t["deterministic"]), log_every=int(t["log_every"]),
                      progress=bool(t["progress"]), server=server if server is not None else _connect(settings),
                      progressive=bool(settings["data"]["follow"]) and bool(settings["data"]["progressive"]))
    return trainer, evaluation, synthetic


def run_train(settings: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Runs the job of ``settings``; returns the final evaluation (empty without eval data)."""
    t = settings["train"]
    if t["plot"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    if t["coordinator"] or t["mode"]:  # a worker of a coordinated job
        return run_coordinated(settings).get("eval", {})
    total = _steps(settings)
    if t["plot"] and total is not None and int(t["log_every"]) > 0:
        # Enough points for curves: about 30 log entries over the run.
        settings["train"]["log_every"] = min(int(t["log_every"]), max(1, total // 30))
    trainer, evaluation, synthetic = build_trainer(settings)
    ckpt = t["checkpoint_dir"]
    if ckpt:
        trainer.resume(ckpt)
    remaining = None if total is None else max(total - trainer.step, 0)
    eval_every = int(t["eval_every"])
    if t["plot"] and not eval_every and evaluation is not None:
        eval_every = max(1, total // 10) if total is not None else 10 * max(int(t["log_every"]), 1)
    eval_points: list[tuple[int, float]] = []
    eval_start = evaluation.state_dict() if evaluation is not None else None
    eval_seconds = [0.0]
    planted: list[float] = []

    def evaluate() -> dict[str, float]:
        began = time.perf_counter()
        evaluation.load_state_dict(eval_start)  # every evaluation reads the same samples
        result = trainer.evaluate(evaluation)
        eval_points.append((trainer.step, result["auc"]))
        if "planted_auc" in result:
            planted[:] = [result["planted_auc"]]
        eval_seconds[0] += time.perf_counter() - began
        return result

    def on_interval(tr: Any) -> None:
        if eval_every and evaluation is not None and tr.step % eval_every == 0 and (total is None or tr.step < total):
            result = evaluate()
            log.info("step %d eval AUC %.4f", tr.step, result["auc"])
        if ckpt and t["checkpoint_every"] and tr.step % int(t["checkpoint_every"]) == 0:
            tr.save(ckpt, overwrite=True)

    every = _gcd_nonzero(eval_every if evaluation is not None else 0, int(t["checkpoint_every"]))
    fit = None
    if remaining != 0:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            fit = trainer.fit(remaining, every=every, on_interval=on_interval)
        if fit.steps == 0 and trainer.step == 0:
            d = settings["data"]
            if d["follow"]:
                raise DataError(f"no complete partition with a sample appeared in '{d['follow']}' within "
                                f"--follow-timeout {d['follow_timeout']} s")
            raise DataError("the training data holds no sample")
    if ckpt:
        trainer.save(ckpt, overwrite=True)
    result = evaluate() if evaluation is not None else {}
    _report(trainer, fit, result, remaining, eval_seconds[0], settings)
    if t["plot"]:
        trainer.plot(t["plot"], eval_points, planted[0] if planted else None)
        print(f"plot written to {t['plot']}")
    return result


class DataError(ValueError):
    """The data cannot train the job (none there, none parses)."""


def _gcd_nonzero(a: int, b: int) -> int:
    import math

    return math.gcd(a, b) if a and b else (a or b)


def _report(trainer: Any, fit: Any, result: dict[str, float], wanted: Optional[int], eval_seconds: float,
            settings: dict[str, Any]) -> None:
    """What the run did: the steps and samples trained now (and in all), their rate without
    the evaluations in between, and when the data ran out before the steps asked for."""
    steps, samples = (fit.steps, fit.samples) if fit is not None else (0, 0)
    seconds = max((fit.seconds if fit is not None else 0.0) - eval_seconds, 1e-9)
    rows = trainer.embedding.collection.sizes()
    rate = f"{samples / seconds:,.0f} samples/s" if steps else "nothing to do"
    print(f"trained {steps:,} steps, {samples:,} samples in {seconds:.1f} s ({rate}); {trainer.step:,} steps "
          f"in all; {sum(rows.values()):,} rows in {len(rows)} tables")
    compressed = trainer.embedding.collection.compression_info()
    if compressed:
        first = next(iter(compressed.values()))
        print(f"{len(compressed)} compressed tables ({first['compression']}), {first['rows']:,} rows each at most")
    if wanted is not None and steps < wanted:
        print(f"the training data ran out after {steps:,} of the {wanted:,} steps asked for "
              f"(--steps {settings['train']['steps']})")
    from .trainer import describe_metrics

    progressive = [h for h in trainer.history if "partition" in h]
    if progressive:
        last = progressive[-1]
        print(f"progressive validation over {len(progressive)} partitions; the last, {last['partition']}: "
              f"{describe_metrics(last)}")
    if not result:
        return
    print(f"eval {describe_metrics(result)}")


# ----------------------------------------------------------------------------------- commands
def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsecore", description="sparsecore: sparse deep learning, XDL style.")
    sub = parser.add_subparsers(dest="command", metavar="{train,server,coordinator,serve}")
    train = sub.add_parser(
        "train", help="train a CTR model (default: W2 on built-in synthetic data)",
        description="Train an embedding + MLP click-through-rate model on the embedded default. With no "
                    "arguments: XDL's W2 model (23 groups x dim 18 -> MLP 414-200-80-1) on synthetic data "
                    "with a planted model; prints the final AUC next to the planted optimum.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", metavar="TOML", help="settings file; flags override it")
    for flag, section, key, kind, placeholder, text in _FLAGS + COORDINATED_FLAGS:
        default = DEFAULTS[section][key]
        help_text = f"{text} (default: {default!r})" if default not in ("", [], {}) else text
        dest = f"{section}.{key}"
        if kind == "paths":
            train.add_argument(flag, nargs="+", metavar=placeholder, dest=dest, help=help_text)
        elif kind in ("ints", "list"):
            train.add_argument(flag, type=_ints if kind == "ints" else _list, metavar=placeholder, dest=dest,
                               help=help_text)
        else:
            train.add_argument(flag, type=kind, metavar=placeholder, dest=dest, help=help_text)
    switches = [
        ("--header", "data.header", True, "csv/tsv: the first line of every file names the columns"),
        ("--shuffle", "data.shuffle", True,
         "shuffle the training files: a new file order every epoch and samples mixed within "
         "--shuffle-buffer (seeded by --seed)"),
        ("--no-progressive", "data.progressive", False,
         "with --follow: train on each partition without evaluating it first"),
        ("--no-compression", "synthetic.compressed", False,
         "synthetic: feed page views uncompressed (same samples, user groups repeated)"),
        ("--deterministic", "train.deterministic", True, "bit-reproducible run (resumed or not)"),
        ("--stale-sparse", "train.stale_sparse", True,
         "pull batch k+1's rows during the dense step of batch k (one step stale)"),
        ("--no-progress", "train.progress", False,
         "no progress bar (it is off anyway when stderr is not a terminal: a log line per --log-every instead)"),
    ]
    for flag, dest, value, text in switches:
        train.add_argument(flag, action="store_const", const=value, dest=dest, help=text)
    train.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final result")
    sub.add_parser("server", help="run a parameter server (arguments go to it; see 'server --help')",
                   add_help=False)
    sub.add_parser("coordinator", help="coordinate a job of servers and workers: membership, barrier snapshots, "
                   "rollback on failures (arguments go to it; see 'coordinator --help')", add_help=False)
    sub.add_parser("serve", help="serve an exported model over RPC and HTTP (arguments go to it; see 'serve --help')",
                   add_help=False)
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """The settings that the flags of ``sparsecore train`` set: (section, key) -> value."""
    pairs = [(name.split(".", 1), value) for name, value in vars(args).items() if "." in name and value is not None]
    return {(section, key): value for (section, key), value in pairs}


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (for its usage in error messages)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _server(argv: list[str]) -> int:
    from .server import main as server_main

    return int(server_main(argv) or 0)


def _serve(argv: list[str]) -> int:
    from .serve import main as serve_main

    return int(serve_main(argv) or 0)


_TORCH_HINT = ("sparsecore train needs PyTorch: pip install torch==2.13.0 (on a machine without a GPU, the CPU "
               "wheel avoids a multi-GB CUDA download: pip install torch==2.13.0 --index-url "
               "https://download.pytorch.org/whl/cpu)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server"]:  # every argument after it belongs to the server's own parser
        return _server(argv[1:])
    if argv[:1] == ["coordinator"]:
        from .cluster.coordinator import main as coordinator_main

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
        return int(coordinator_main(argv[1:]) or 0)
    if argv[:1] == ["serve"]:  # likewise for the prediction server
        return _serve(argv[1:])
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the usage of the command they were given to
        (_subcommand(parser, "train") if args.command == "train" else parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    # Our INFO lines (progress, evaluations); other libraries' (matplotlib's font cache) stay out.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("sparsecore").setLevel(logging.WARNING if args.quiet else logging.INFO)
    overrides = flag_overrides(args)
    if args.quiet or not sys.stderr.isatty():
        overrides[("train", "progress")] = False
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"sparsecore train: error: {_TORCH_HINT}", file=sys.stderr)
        return 2
    from . import RpcError

    try:
        run_train(load_settings(args.config, overrides))
    except ConfigError as e:
        print(f"sparsecore train: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, OSError, RpcError) as e:
        print(f"sparsecore train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
