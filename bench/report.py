"""Turns a pytest-benchmark JSON file into one markdown table per workload group.

Timed groups: median time per call, samples/s and lookups/s from the median, and the ratio
of sparsecore's throughput to each peer's (>1: sparsecore is faster). Memory groups: bytes
per row and the transient peak per row, with each peer's figure over sparsecore's
(<1: sparsecore uses more).

Usage: python bench/report.py bench/results/w1.json [--command "the command that ran it"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

OURS = "sparsecore"


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
    parser.add_argument("json_file", type=Path)
    parser.add_argument("--command", help="the command that produced the JSON (quoted in the report)")
    parser.add_argument("--output", type=Path, help="write the markdown here instead of stdout")
    args = parser.parse_args(argv)
    text = render(json.loads(args.json_file.read_text()), args.command)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
