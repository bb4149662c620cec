"""Wall time of every example beside `sparsecore train` on the same job, as ratios.

Each run is a fresh process (imports, build of the tables, training, held-out evaluation), the
way a user runs them; cases alternate within each repeat so that load drifts hit all alike, and
the report gives medians, the example/CLI ratio and the load average before and after. The
Trainer-based examples and xdl_mlp.py run the CLI's job size (steps, batch size, held-out
samples); quickstart.py and quantize_mlp.py have fixed jobs of their own and are set against the
CLI's job at the same number of steps. `xdl_mlp.py (threads kept)` runs with
SPARSECORE_THREADS=keep: both pools at every core, as before the default split.

    python bench/examples_vs_cli.py [--steps 150] [--repeats 3]   # writes bench/results/examples_vs_cli.*
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.path.join(ROOT, "python")
if "PYTHONPATH" not in os.environ and any(f.startswith("_core") and f.endswith(".so") for f in os.listdir(os.path.join(TREE, "sparsecore"))):
    # A developer build (scripts/dev-build): this process and every child use the tree.
    os.environ["PYTHONPATH"] = TREE
    sys.path.insert(0, TREE)


def cases(steps: int, batch: int, eval_samples: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    job = ["--steps", str(steps), "--batch-size", str(batch), "--eval-samples", str(eval_samples)]
    py = sys.executable
    ex = os.path.join(ROOT, "examples")
    return {
        "sparsecore train": ([py, "-c", "import sys; from sparsecore.cli import main; sys.exit(main(sys.argv[1:]))",
                              "train", *job], {}),
        "xdl_mlp.py": ([py, os.path.join(ex, "xdl_mlp.py"), *job], {}),
        "xdl_mlp.py (threads kept)": ([py, os.path.join(ex, "xdl_mlp.py"), *job], {"SPARSECORE_THREADS": "keep"}),
        "wide_and_deep.py": ([py, os.path.join(ex, "wide_and_deep.py"), *job], {}),
        "din.py": ([py, os.path.join(ex, "din.py"), *job], {}),
        "quickstart.py": ([py, os.path.join(ex, "quickstart.py")], {}),
        "quantize_mlp.py": ([py, os.path.join(ex, "quantize_mlp.py")], {}),
    }


def run_once(argv: list[str], extra_env: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSECORE_THREADS", "OMP_NUM_THREADS")}
    env.update(extra_env)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", help="case names to run (default: all)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "examples_vs_cli"))
    args = p.parse_args()
    all_cases = cases(args.steps, args.batch_size, args.eval_samples)
    names = ["sparsecore train"] + [n for n in all_cases if n != "sparsecore train" and (not args.only or n in args.only)]
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            walls[n].append(run_once(*all_cases[n]))
            print(f"repeat {r + 1} {n}: {walls[n][-1]:.1f} s", flush=True)
    load_after = os.getloadavg()
    cli = statistics.median(walls["sparsecore train"])
    rows = [{"case": n, "median_s": statistics.median(w), "runs_s": w, "ratio_to_cli": statistics.median(w) / cli}
            for n, w in walls.items()]
    import sparsecore as sc

    meta = {"steps": args.steps, "batch_size": args.batch_size, "eval_samples": args.eval_samples,
            "repeats": args.repeats, "cores": sc.available_cores(), "default_split": sc.default_split(),
            "cpu": platform.processor() or platform.machine(), "load_before": load_before, "load_after": load_after,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Examples vs `sparsecore train` ({meta['date']})", "",
             f"Job: {args.steps} steps x {args.batch_size} samples, {args.eval_samples} held-out samples; "
             f"{args.repeats} repeats, fresh process each; {meta['cores']} cores, default split "
             f"(torch, sparsecore) = {tuple(meta['default_split'])}.",
             f"Load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
             f"after {tuple(round(x, 2) for x in load_after)}.", "",
             "| case | median wall (s) | runs (s) | ratio to CLI |", "|---|---:|---|---:|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['median_s']:.1f} | {', '.join(f'{x:.1f}' for x in row['runs_s'])} "
                     f"| {row['ratio_to_cli']:.2f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
