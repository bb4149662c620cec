"""Compressed embedding tables: AUC against memory, and step throughput, vs full rows.

Two streams with a planted model (sparsecore.data.SyntheticData), each trained once per
configuration with the same batches, seeds and threads, then evaluated on held-out samples:
  w2     the W2 workload (23 groups, dim 18, 1-10 ids per bag, MLP 414-200-80-1) over a
         vocabulary of ``--vocab`` ids per group, Zipf(1.1);
  zipf   a heavier tail: 8 groups, 1-20 ids per bag, ``--zipf-vocab`` ids per group,
         Zipf(``--zipf``) scattered by a fixed permutation (most ids are rare, a few very
         frequent, as in click logs).
Configurations: full rows (a row per id) and every compression kind at 1/4, 1/16 and 1/64 of
the vocabulary's rows (multihash: k=2 sum; qr: quotient-remainder, mul; binary: binary-code
hash, sum; random: signed random coding, k=2; concat: k=2 hashes side by side, each half the
dim; mixed / mixed-concat: exact rows for the most frequent ids on ``--exact-share`` of the
memory, the random-coding / concat tail on the rest). Memory is rows x dim in rows of the
table's dim (a concat row counts half), as a fraction of the vocabulary's rows.

Reported: held-out AUC (and the planted optimum), the gap to full rows, and the training
throughput (median samples/s over the log intervals, evaluation excluded) as a ratio to full
rows, with the load average. ``--markdown`` prints bench/results/compression.md's tables;
``--plot`` writes the PNG of AUC against memory.

    PYTHONPATH=python python3 bench/compression.py --markdown --plot bench/results/compression.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Any, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402

FRACTIONS = (4, 16, 64)
# concat: two hashes side by side (each half the dim, so twice the rows for the same memory);
# mixed-concat: exact rows for the head with that tail.
KINDS = ("multihash", "qr", "binary", "random", "mixed", "concat", "mixed-concat")


EXACT_SHARE = [0.5]  # of a mixed table's rows: exact rows for the frequent ids (--exact-share)


def exact_rows(vocab: int, fraction: int) -> int:
    return int(max(4, vocab // fraction) * EXACT_SHARE[0])


def compression_for(kind: str, vocab: int, fraction: int) -> Any:
    """The compression of ``kind`` with at most vocab / fraction rows in all."""
    budget = max(4, vocab // fraction)
    if kind == "multihash":
        return sc.MultiHash(k=2, rows=budget // 2, combine="sum")
    if kind == "qr":
        return sc.QuotientRemainder(rows=budget // 2, quotient_rows=budget - budget // 2, combine="mul")
    if kind == "random":
        return sc.RandomCoding(buckets=budget, k=2)
    if kind == "mixed":  # exact rows for the most frequent ids (table_config adds them), the rest coded
        return sc.RandomCoding(buckets=budget - exact_rows(vocab, fraction), k=2)
    if kind == "concat":  # rows of half the dim: two tables of `budget` rows fill the budget
        return sc.MultiHash(k=2, rows=budget, combine="concat")
    if kind == "mixed-concat":
        return sc.MultiHash(k=2, rows=budget - exact_rows(vocab, fraction), combine="concat")
    # Binary code: the widest blocks whose tables fit the budget, enough bits for the vocabulary.
    need = max(1, math.ceil(math.log2(vocab)))
    best = None
    for block in range(1, 25):
        bits = math.ceil(need / block) * block
        rows = (bits // block) * 2**block
        if rows <= budget and bits <= 64:
            best = sc.BinaryCodeHash(bits=bits, block=block, combine="sum")
    return best


def table_config(args: argparse.Namespace, kind: str, compression: Any, vocab: int, fraction: Optional[int]) -> Any:
    expiry = None
    admission = None
    if kind.startswith("mixed") and fraction is not None:
        expiry = sc.Expiry(capacity=exact_rows(vocab, fraction), policy="lfu")
        if args.exact_admission:  # only ids sighted that often compete for the exact rows
            admission = sc.Admission(count_threshold=args.exact_admission)
    return sc.TableConfig(dim=args.dim, optimizer=sc.Adagrad(lr=args.lr), compression=compression, expiry=expiry,
                          admission=admission)


def stream(name: str, args: argparse.Namespace) -> SyntheticConfig:
    if name == "w2":
        return SyntheticConfig.w2(vocab_size=args.vocab, batch_size=args.batch, samples_per_view=1, num_user_groups=0)
    return SyntheticConfig(num_groups=8, vocab_size=args.zipf_vocab, min_bag=1, max_bag=20, zipf_exponent=args.zipf,
                           weight_std=0.1, batch_size=args.batch)


def run(args: argparse.Namespace, data: str, kind: str, fraction: Optional[int]) -> dict[str, Any]:
    cfg = stream(data, args)
    compression = None if fraction is None else compression_for(kind, cfg.vocab_size, fraction)
    tables = {g: table_config(args, kind, compression, cfg.vocab_size, fraction) for g in cfg.names()}
    torch.manual_seed(0)
    model = mlp(args.dim * len(tables), [200, 80])
    trainer = sc.Trainer(SyntheticData(cfg, num_samples=args.steps * args.batch), model, tables,
                         dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), progress=False,
                         log_every=args.log_every, threads=(args.threads, args.threads))
    began = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - began
    rates = [h["samples_per_s"] for h in trainer.history if "samples_per_s" in h][1:]  # the first warms up
    held = trainer.evaluate(SyntheticData(cfg, start=1 << 40, num_samples=(1 << 40) + args.eval_samples))
    collection = trainer.embedding.collection
    if compression is None:
        rows = max(collection.sizes().values())
    else:
        info = next(iter(collection.compression_info().values()))
        rows = info["rows"] * info["component_dim"] / args.dim  # in rows of the table's dim
        if kind.startswith("mixed"):
            rows += exact_rows(cfg.vocab_size, fraction)  # the exact rows' capacity
    if kind.startswith("mixed") and EXACT_SHARE[0] != 0.5:
        kind = f"{kind}{EXACT_SHARE[0]:g}"
    if kind.startswith("mixed") and args.exact_admission:
        kind = f"{kind} admit>={args.exact_admission}"
    if args.lr != 0.05:
        kind = f"{kind} lr={args.lr:g}"
    result = {"data": data, "kind": "full" if compression is None else kind, "fraction": fraction,
              "spec": "" if compression is None else compression.spec(), "rows": round(rows),
              "memory": rows / cfg.vocab_size, "auc": held["auc"], "planted_auc": held["planted_auc"],
              "lr": args.lr, "samples_per_s": statistics.median(rates) if rates else args.steps * args.batch / seconds,
              "seconds": seconds}
    print(json.dumps(result), flush=True)
    return result


def throughput(args: argparse.Namespace, data: str) -> list[dict[str, Any]]:
    """Step time of full rows and of each kind at 1/16: the sparse step alone (pull, pool,
    backward and update of every table) and the training step (the same plus the MLP's
    forward, backward and Adam step on the pooled rows), measured interleaved over
    ``--repeats`` rounds of the same batches, after a warm-up pass that inserts every id."""
    cfg = stream(data, args)
    batches = list(SyntheticData(cfg, num_samples=args.timing_batches * args.batch))
    configs = [("full", None)] + [(k, 16) for k in args.kinds.split(",")]
    collections = {}
    for kind, fraction in configs:
        compression = None if fraction is None else compression_for(kind, cfg.vocab_size, fraction)
        collections[kind] = sc.EmbeddingCollection(
            {g: table_config(args, kind, compression, cfg.vocab_size, fraction) for g in cfg.names()}, seed=1)
    grads = [{g: torch.ones(b.sparse[g][1].shape[0] - 1, args.dim).numpy() for g in cfg.names()} for b in batches]
    torch.manual_seed(0)
    model = mlp(args.dim * cfg.num_groups, [200, 80])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(emb: Any, batch: Any) -> None:
        p = emb.prepare(batch.sparse)
        pooled = [torch.from_numpy(x).requires_grad_() for x in emb.pooled_rows(p)]
        logits = model(torch.cat(pooled, 1)).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(batch.labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        emb.backward(p, {n: x.grad.numpy() for n, x in zip(p.names, pooled)})

    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats + 1):
        for kind, _ in configs:
            emb = collections[kind]
            began = time.perf_counter()
            for b, g in zip(batches, grads):
                p = emb.prepare(b.sparse)
                emb.pooled_rows(p)
                emb.backward(p, g)
            sparse = time.perf_counter()
            for b in batches:
                train_step(emb, b)
            if rep:  # the first round inserts the rows
                times.setdefault((kind, "sparse"), []).append((sparse - began) / len(batches))
                times.setdefault((kind, "train"), []).append((time.perf_counter() - sparse) / len(batches))
    out = []
    for kind, _ in configs:
        row: dict[str, Any] = {"data": data, "kind": kind}
        for part in ("sparse", "train"):
            med = statistics.median(times[(kind, part)])
            row[f"{part}_ms"] = med * 1e3
            row[f"{part}_vs_full"] = statistics.median(times[("full", part)]) / med
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def markdown(args: argparse.Namespace, runs: list[dict[str, Any]], load: Optional[tuple[str, str]]) -> str:
    measured = f"Load average before / after: {load[0]} / {load[1]} (2 cores, shared). " if load else ""
    lines = [f"{measured}{args.steps} steps of {args.batch} samples, dim {args.dim}, Adagrad({args.lr:g}) + Adam(1e-3), "
             f"{args.threads} threads; AUC on {args.eval_samples:,} held-out samples.", ""]
    for data in ("w2", "zipf"):
        mine = [r for r in runs if r["data"] == data and "auc" in r]
        if not mine:
            continue
        full = next(r for r in mine if r["kind"].startswith("full"))
        lines += [f"### {data} (planted optimum AUC {full['planted_auc']:.4f}, full rows: {full['rows']:,} rows "
                  f"per table)", "",
                  "| table | memory (rows) | AUC | AUC - full | samples/s (median) | throughput vs full |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in mine:
            label = "full rows" if r["kind"].startswith("full") else f"{r['kind']} 1/{r['fraction']} (`{r['spec']}`)"
            if r["kind"].startswith("mixed"):
                label += " + exact rows for the most frequent ids (LFU capacity)"
            lines.append(f"| {label} | {r['memory']:.4f} ({r['rows']:,}) | {r['auc']:.4f} | "
                         f"{r['auc'] - full['auc']:+.4f} | {r['samples_per_s']:,.0f} | "
                         f"{r['samples_per_s'] / full['samples_per_s']:.2f} |")
        lines.append("")
    timing = [r for r in runs if "train_ms" in r]
    if timing:
        lines += [f"### Step time at 1/16 (median of {args.repeats} interleaved rounds of {args.timing_batches} "
                  f"batches of {args.batch})", "",
                  "| stream | table | sparse step (ms) | sparse vs full | training step (ms) | training vs full |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['data']} | {r['kind']} | {r['sparse_ms']:.1f} | {r['sparse_vs_full']:.2f} | "
                  f"{r['train_ms']:.1f} | {r['train_vs_full']:.2f} |" for r in timing]
        lines.append("")
    return "\n".join(lines)


def plot(path: str, runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if "auc" in r]
    datasets = sorted({r["data"] for r in runs})
    plt.rcParams["axes.prop_cycle"] = plt.cycler(color=plt.get_cmap("tab20").colors)
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5.5), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        mine = [r for r in runs if r["data"] == data]
        full = next(r for r in mine if r["kind"].startswith("full"))
        ax.axhline(full["auc"], color="black", lw=1, label=f"full rows ({full['auc']:.4f})")
        ax.axhline(full["planted_auc"], color="gray", lw=1, ls=":", label="planted optimum")
        for kind in dict.fromkeys(r["kind"] for r in mine if r["kind"] != "full"):
            points = sorted((r["memory"], r["auc"]) for r in mine if r["kind"] == kind)
            if points:  # a kind run at one memory only (a variant tried at 1/16) is a lone cross
                ax.plot(*zip(*points), marker="o" if len(points) > 1 else "X", ls="-" if len(points) > 1 else "none",
                        label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("memory (rows / vocabulary rows)")
        ax.set_ylabel("held-out AUC")
        ax.set_title(data)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="w2,zipf", help="streams to run: w2, zipf")
    p.add_argument("--vocab", type=int, default=20_000)
    p.add_argument("--zipf-vocab", type=int, default=200_000)
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--dim", type=int, default=18)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    p.add_argument("--lr", type=float, default=0.05, help="Adagrad learning rate of every table")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    p.add_argument("--exact-share", type=float, default=0.5, help="mixed: share of the rows that are exact")
    p.add_argument("--exact-admission", type=int, default=0,
                   help="mixed: ids must be sighted this many times (in as many batches) before they may take an "
                        "exact row (0: every id competes for the LFU capacity)")
    p.add_argument("--timing", action="store_true", help="measure the sparse step time only (interleaved)")
    p.add_argument("--timing-batches", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="also write the runs here")
    p.add_argument("--load", help="render --markdown / --plot from these saved --json files (comma-separated) "
                                  "instead of running; a configuration run twice keeps its first run")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--plot")
    args = p.parse_args()
    EXACT_SHARE[0] = args.exact_share
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: list[dict[str, Any]] = []
    if args.load:
        seen = set()
        for path in args.load.split(","):
            with open(path) as f:
                for r in json.load(f):
                    key = (r["data"], r["kind"], r.get("fraction"), "train_ms" in r)
                    if key not in seen:
                        seen.add(key)
                        runs.append(r)
        args.data = ""
    for data in args.data.split(",") if args.timing and args.data else ():
        runs += throughput(args, data)
    for data in args.data.split(",") if not args.timing and args.data else ():
        runs.append(run(args, data, "full", None))
        for kind in args.kinds.split(","):
            for fraction in (int(f) for f in args.fractions.split(",")):
                runs.append(run(args, data, kind, fraction))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    if args.markdown:
        print(markdown(args, runs, None if args.load else (load_before, load_after)))
    if args.plot:
        plot(args.plot, runs)


if __name__ == "__main__":
    main()
