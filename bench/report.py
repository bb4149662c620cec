"""Turns a pytest-benchmark JSON file into one markdown table per workload group.

Timed groups: median time per call, samples/s and lookups/s from the median, and the ratio
of sparsecore's throughput to each peer's (>1: sparsecore is faster). Memory groups: bytes
per row and the transient peak per row, with each peer's figure over sparsecore's
(<1: sparsecore uses more).

W2 groups (``w2-*``, bench/test_w2.py) get one row per case: samples/s from the median round,
the ratio to the embedded sparsecore case of the same optimizer and dim, the held-out AUC (and
its difference from embedded), the servers' pull and push requests per step, and the load
average when the case started.

Usage: python bench/report.py bench/results/w1.json [--command "the command that ran it"]
       python bench/report.py w2 [--json bench/results/w2.json]   # runs the W2 cases, prints the table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

OURS = "sparsecore"
HERE = Path(__file__).resolve().parent
# The W2 cases `report.py w2` runs: embedded, 1 and 2 servers and the peers, Adam and Adagrad,
# and both sides reading the batches from a file.
W2_CASES = "test_w2_adam or test_w2_adagrad or test_w2_files"


def _fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.1f}"


def _timed_table(group: str, rows: list[dict]) -> list[str]:
    ours = next((r for r in rows if r["extra_info"].get("peer") == OURS), None)
    out = [f"### {group}", "",
           "| peer | optimizer | median ms | samples/s | lookups/s | sparsecore speedup |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        info, median = r["extra_info"], r["stats"]["median"]
        # Cases of other suites (no per-call counts) still get their median and ratio.
        samples = _fmt_rate(info["samples_per_call"] / median) if "samples_per_call" in info else "-"
        lookups = _fmt_rate(info["lookups_per_call"] / median) if "lookups_per_call" in info else "-"
        ratio = "1.00x" if r is ours else (f"{median / ours['stats']['median']:.2f}x" if ours else "n/a")
        out.append(f"| {info.get('peer', r['name'])} | {info.get('optimizer', '-')} | {median * 1e3:.2f} | "
                   f"{samples} | {lookups} | {ratio} |")
    return out


def _memory_table(group: str, rows: list[dict]) -> list[str]:
    mem = {r["extra_info"]["peer"]: r["extra_info"].get("memory", {}) for r in rows}
    ours = mem.get(OURS, {})
    out = [f"### {group}", "",
           "| peer | optimizer | rows | bytes/row | peak bytes/row (build) | sparsecore / peer (bytes/row) |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        info = r["extra_info"]
        m = mem[info["peer"]]
        if not m:
            continue
        ratio = f"{ours['bytes_per_row'] / m['bytes_per_row']:.2f}x" if ours else "n/a"
        out.append(f"| {info['peer']} | {info['optimizer']} | {m['rows']:,} | {m['bytes_per_row']:.1f} | "
                   f"{m['peak_bytes_per_row']:.1f} | {ratio} |")
    if ours.get("engine_bytes_per_row"):
        out += ["", f"sparsecore's own accounting (index + row arenas): {ours['engine_bytes_per_row']:.1f} bytes/row."]
    return out


def _w2_table(group: str, rows: list[dict]) -> list[str]:
    def rate(r: dict) -> float:
        return r["extra_info"]["samples_per_round"] / r["stats"]["median"]

    # The embedded sparsecore case of the group (the one reading files in w2-files).
    embedded = {r["extra_info"].get("dim"): r for r in rows if r["extra_info"].get("peer") in (OURS, OURS + "-files")}
    out = [f"### {group}", "",
           "| case | dim | servers | samples/s (median) | / embedded | AUC | AUC - embedded | "
           "pull req/step | push req/step | CPU ms/step (worker + servers) | rounds | load avg |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        info = r["extra_info"]
        base = embedded.get(info.get("dim"))
        ratio = f"{rate(r) / rate(base):.2f}x" if base else "n/a"
        exact = info.get("auc_minus_embedded")  # from unrounded AUCs, where the case recorded it
        delta = (f"{exact:+.1e}" if exact else "0" if exact == 0.0 else
                 f"{info['auc'] - base['extra_info']['auc']:+.4f}" if base and "auc" in info else "-")
        out.append(f"| {info.get('peer', r['name'])} | {info.get('dim', '-')} | {info.get('servers', '-')} | "
                   f"{rate(r):,.0f} | {ratio} | {info.get('auc', '-')} | {delta} | "
                   f"{info.get('pull_requests_per_step', '-')} | {info.get('push_requests_per_step', '-')} | "
                   f"{_cpu(info)} | {r['stats']['rounds']} | {info.get('load_average', '-')} |")
    return out


def _cpu(info: dict) -> str:
    if "cpu_ms_per_step" not in info:
        return "-"
    if "servers_cpu_ms_per_step" not in info:
        return f"{info['cpu_ms_per_step']:.0f}"
    worker, servers = info["cpu_ms_per_step"], info["servers_cpu_ms_per_step"]
    return f"{worker + servers:.0f} ({worker:.0f} + {servers:.0f})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def render_w2(data: dict, command: str | None = None) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        if (b.get("group") or "").startswith("w2-"):
            groups[b["group"]].append(b)
    lines = ["## W2 end to end: embedded, 1 and 2 local servers, peers", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    infos = [b["extra_info"] for bs in groups.values() for b in bs]
    first = infos[0] if infos else {}
    server_threads = next((i["server_threads"] for i in infos if "server_threads" in i), "-")
    lines += [f"{data.get('datetime', '')}; {os.cpu_count()} cores ({_cpu_model()}); worker threads "
              f"{first.get('threads', '?')}; server threads {server_threads} each; "
              f"{first.get('samples_per_round', '?')} samples per round; planted-optimum AUC "
              f"{first.get('planted_auc', '?')}.", "",
              "samples/s = samples per round / median round; / embedded = that over the embedded sparsecore "
              "case of the same group and dim, from the same session; requests per step are counted by the "
              "servers over every training step of the case (all servers together); CPU per step is the "
              "worker process's (all threads) plus the server processes', over the same steps: on a busy "
              "machine it is steadier than samples/s.", ""]
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda b: (not b["extra_info"].get("peer", "").startswith(OURS),
                                                   b["extra_info"].get("dim", 0), b["extra_info"].get("peer", "")))
        lines += _w2_table(group, rows) + [""]
    return "\n".join(lines)


def run_w2(json_path: Path) -> str:
    """Runs the W2 cases in one pytest session (scale from SPARSECORE_BENCH_SCALE) into
    ``json_path``; returns the command, for the report."""
    cmd = [sys.executable, "-m", "pytest", str(HERE / "test_w2.py"), "-q", "-p", "no:cacheprovider", "-k", W2_CASES,
           f"--benchmark-json={json_path}"]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return f"python3 -m pytest bench/test_w2.py -k '{W2_CASES}' --benchmark-json=..."


def render(data: dict, command: str | None = None) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b["name"]].append(b)
    machine = data.get("machine_info", {})
    lines = ["# W1 results", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    scales = {b["extra_info"].get("scale") for bs in groups.values() for b in bs}
    lines += [f"Scale: {', '.join(sorted(s for s in scales if s))}; threads per peer: "
              f"{next(iter(groups.values()))[0]['extra_info'].get('threads') if groups else '?'}; "
              f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}; "
              f"{data.get('datetime', '')}", "",
              "Medians over the rounds of each case; speedup = peer median / sparsecore median.", ""]
    loads = [b["extra_info"]["load_average"] for bs in groups.values() for b in bs if "load_average" in b["extra_info"]]
    if loads:
        lines += [f"1-minute load average at the start of the cases: {min(loads):.1f} to {max(loads):.1f} "
                  f"(this machine has {os.cpu_count()} cores; above that, peers compete with other work "
                  "and ratios are noisy).", ""]
    for group in sorted(groups, key=lambda g: (g.startswith("w1-memory"), g.startswith("w1-first"), g)):
        rows = sorted(groups[group], key=lambda b: (b["extra_info"].get("peer") != OURS, b["name"]))
        table = _memory_table(group, rows) if group.startswith("w1-memory") else _timed_table(group, rows)
        lines += table + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json_file", help="a pytest-benchmark JSON file, or 'w2' to run the W2 cases first")
    parser.add_argument("--command", help="the command that produced the JSON (quoted in the report)")
    parser.add_argument("--output", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--json", type=Path, help="with 'w2': keep the run's JSON here")
    args = parser.parse_args(argv)
    if args.json_file == "w2":
        with tempfile.TemporaryDirectory() as tmp:
            path = args.json or Path(tmp) / "w2.json"
            command = args.command or (f"PYTHONPATH=python python3 bench/report.py w2"
                                       f"{f' --json {args.json}' if args.json else ''}\n# runs: {run_w2(path)}")
            text = render_w2(json.loads(path.read_text()), command)
    else:
        data = json.loads(Path(args.json_file).read_text())
        w2_only = all((b.get("group") or "").startswith("w2-") for b in data.get("benchmarks", []))
        text = (render_w2 if data.get("benchmarks") and w2_only else render)(data, args.command)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
