"""Online learning on a drifting stream: table size and progressive AUC, with and without
admission + expiry.

The stream is synthetic W2 (23 groups, dim 18, MLP 414-200-80-1, batch 5,000) with drift: every
id of a group's vocabulary lives ``--drift`` samples and is then replaced by a new one, so an
unbounded table grows without limit while the ids in use stay ``--vocab`` per group. The stream
is cut into chunks of ``--chunk`` batches; each chunk is first evaluated by the current model
(progressive validation: AUC on data the model has not trained on) and then trained on.

Runs, on the same stream, batches, seeds and threads:
  unbounded   every id becomes a row and stays;
  bounded     admission (count threshold ``--admit``) and expiry with a hard capacity of
              ``--capacity-fraction`` of the unbounded run's final rows per table (LRU
              eviction), plus a step TTL.
Reported: progressive AUC per chunk and its mean over the second half of the stream (after the
warm-up), rows over the stream, training throughput (samples/s, evaluation excluded), and the
load average. ``--markdown`` prints the tables of bench/results/online.md; ``--plot`` writes the
PNG of table size and AUC over the stream.

    PYTHONPATH=python python3 bench/online.py --markdown --plot bench/results/online.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402


def run(args: argparse.Namespace, label: str, capacity: int, eviction: str = "exact") -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = SyntheticConfig.w2(vocab_size=args.vocab, zipf_exponent=args.zipf, drift_period=args.drift,
                             batch_size=args.batch, samples_per_view=1, num_user_groups=0)
    chunk = args.chunk * args.batch
    total = args.chunks * chunk
    admission = sc.Admission(count_threshold=args.admit, bloom_capacity=args.bloom) if capacity and args.admit > 1 \
        else None
    expiry = sc.Expiry(capacity=capacity, policy="lru", ttl_steps=args.ttl_steps, scan_per_step=args.scan,
                       eviction_headroom=args.headroom, eviction=eviction) if capacity else None
    tables = {g: sc.TableConfig(dim=args.dim, optimizer=sc.Adagrad(lr=0.05), admission=admission, expiry=expiry)
              for g in cfg.names()}
    model = mlp(args.dim * len(tables), [200, 80])
    trainer = sc.Trainer(SyntheticData(cfg, num_samples=total), model, tables,
                         dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), progress=False,
                         threads=(args.threads, args.threads))
    points, train_seconds = [], 0.0
    for c in range(args.chunks):
        start = c * chunk
        held = trainer.evaluate(SyntheticData(cfg, start=start, num_samples=start + chunk))
        began = time.perf_counter()
        trainer.fit(args.chunk)
        train_seconds += time.perf_counter() - began
        stats = trainer.table_stats()
        rows = sum(s["rows"] for s in stats.values())
        points.append({"chunk": c, "samples": start + chunk, "auc": held["auc"], "planted_auc": held["planted_auc"],
                       "rows": rows, "max_table_rows": max(s["rows"] for s in stats.values())})
        print(f"{label} chunk {c}: progressive AUC {held['auc']:.4f} (planted {held['planted_auc']:.4f}), "
              f"rows {rows}", flush=True)
    second = points[len(points) // 2:]
    totals: dict[str, int] = {}
    for s in trainer.table_stats().values():
        for k, v in s.items():
            totals[k] = totals.get(k, 0) + int(v)
    return {"label": label, "capacity_per_table": capacity, "eviction": eviction, "points": points,
            "mean_auc_second_half": statistics.fmean(p["auc"] for p in second),
            "samples_per_s": total / train_seconds, "final": totals}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label: the runs' throughputs, their median, and the median AUC."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        o = out.setdefault(r["label"], {"runs": [], "first": r})
        o["runs"].append(r)
    for o in out.values():
        o["sps"] = [r["samples_per_s"] for r in o["runs"]]
        o["median_sps"] = statistics.median(o["sps"])
        o["median_auc"] = statistics.median(r["mean_auc_second_half"] for r in o["runs"])
    return out


def markdown(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    s = summarize(runs)
    base = s["unbounded"]
    lines = [f"Stream: W2 synthetic, vocab {args.vocab}/group, Zipf {args.zipf}, drift {args.drift} samples per "
             f"id, batch {args.batch}, {args.chunks} chunks of {args.chunk} batches; threads {args.threads}; "
             f"admission count >= {args.admit} ({f'Bloom filter for {args.bloom} ids' if args.bloom else 'exact counts'}), "
             f"LRU capacity {args.capacity_fraction:g} of the unbounded rows, "
             f"eviction headroom {args.headroom:g}; {args.repeats} interleaved repeats per run.", "",
             "Order of the runs (load average, 1 / 5 / 15 min, before each):", ""]
    lines += [f"{i + 1}. {r['label']}: {r['samples_per_s']:,.0f} samples/s (load {r['load']})"
              for i, r in enumerate(runs)]
    lines += ["", "| run | capacity / table | final rows | max rows of a table | progressive AUC (2nd half, median) | "
              "samples/s (training, median) | samples/s of each repeat | throughput / unbounded |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for label, o in s.items():
        r = o["first"]
        last = r["points"][-1]
        lines.append(f"| {label} | {r['capacity_per_table'] or 'unbounded'} | {last['rows']:,} | "
                     f"{last['max_table_rows']:,} | {o['median_auc']:.4f} | {o['median_sps']:,.0f} | "
                     f"{', '.join(f'{x:,.0f}' for x in o['sps'])} | {o['median_sps'] / base['median_sps']:.3f} |")
    lines.append("")
    for label, o in s.items():
        if label == "unbounded":
            continue
        lines.append(f"{label}: AUC difference (bounded − unbounded, 2nd half, medians) "
                     f"{o['median_auc'] - base['median_auc']:+.4f}; throughput ratio (medians) "
                     f"{o['median_sps'] / base['median_sps']:.3f}. Final counters (summed over tables): " +
                     ", ".join(f"{k} {v:,}" for k, v in sorted(o["first"]["final"].items())))
        lines.append("")
    labels = list(s)
    lines += ["| chunk | samples | " + " | ".join(f"{lb} rows" for lb in labels) + " | " +
              " | ".join(f"{lb} AUC" for lb in labels) + " | planted AUC |",
              "| ---: | ---: | " + " | ".join("---:" for _ in labels * 2) + " | ---: |"]
    firsts = [s[lb]["first"]["points"] for lb in labels]
    for c, a in enumerate(firsts[0]):
        lines.append(f"| {a['chunk']} | {a['samples']:,} | " + " | ".join(f"{p[c]['rows']:,}" for p in firsts) +
                     " | " + " | ".join(f"{p[c]['auc']:.4f}" for p in firsts) + f" | {a['planted_auc']:.4f} |")
    return "\n".join(lines)


def plot(path: str, runs: list[dict[str, Any]]) -> None:
    runs = [o["first"] for o in summarize(runs).values()]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for r in runs:
        xs = [p["samples"] / 1e6 for p in r["points"]]
        top.plot(xs, [p["rows"] / 1e6 for p in r["points"]], label=r["label"])
        bottom.plot(xs, [p["auc"] for p in r["points"]], label=r["label"])
    bottom.plot(xs, [p["planted_auc"] for p in runs[0]["points"]], ":", color="grey", label="planted optimum")
    top.set_ylabel("rows (millions, all tables)")
    bottom.set_ylabel("progressive AUC")
    bottom.set_xlabel("samples (millions)")
    top.legend()
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--drift", type=int, default=400_000, help="samples each id lives")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--chunk", type=int, default=10, help="batches per chunk")
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--dim", type=int, default=18)
    p.add_argument("--admit", type=int, default=2, help="count threshold of the bounded run")
    p.add_argument("--bloom", type=int, default=0,
                   help="admission counts in a counting Bloom filter sized for this many ids per table (0: exact)")
    p.add_argument("--capacity-fraction", type=float, default=0.25)
    p.add_argument("--ttl-steps", type=int, default=0)
    p.add_argument("--headroom", type=float, default=1.0 / 16,
                   help="eviction headroom: rows freed per eviction pass beyond the need, as a share of capacity")
    p.add_argument("--scan", type=int, default=0, help="slots examined per step by incremental expiry")
    p.add_argument("--capacity", type=int, default=0,
                   help="capacity per table of the bounded run (0: --capacity-fraction of the unbounded run)")
    p.add_argument("--only-bounded", action="store_true", help="skip the unbounded run (profiling; needs --capacity)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evictions", default="exact,sampled",
                   help="eviction modes of the bounded runs, comma-separated (exact, sampled)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--plot", default="")
    p.add_argument("--json", default="")
    args = p.parse_args()
    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    if args.only_bounded:
        run(args, "admission + expiry", args.capacity, args.evictions.split(",")[0])
        return
    runs: list[dict[str, Any]] = []

    def timed(label: str, capacity: int, eviction: str = "exact") -> dict[str, Any]:
        before = load()
        r = run(args, label, capacity, eviction)
        r["load"] = before
        runs.append(r)
        return r

    base = timed("unbounded", 0)
    capacity = args.capacity or max(1, int(max(p["max_table_rows"] for p in base["points"]) * args.capacity_fraction))
    configs = [("unbounded", 0, "exact")] + [(f"admission + expiry ({e})", capacity, e) for e in args.evictions.split(",")]
    # Interleaved, the order rotated each repeat, so a change of the machine's load falls on every run alike.
    for rep in range(args.repeats):
        order = configs[1:] + configs[:1] if rep == 0 else configs[rep % len(configs):] + configs[:rep % len(configs)]
        for label, cap, e in order:
            if rep == 0 and cap == 0:
                continue
            timed(label, cap, e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    if args.plot:
        plot(args.plot, runs)
    if args.markdown:
        print(markdown(args, runs))


if __name__ == "__main__":
    main()
