"""Group `examples-vs-cli`: every example and `sparsecore train` on the same job, each a fresh
process, side by side. The ratios and the committed results come from
`python bench/examples_vs_cli.py` (bench/results/examples_vs_cli.md); here each case is one
pedantic round (a smoke at the tiny scale). Nothing asserts a time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import examples_vs_cli  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("sklearn")  # quantize_mlp.py

# (steps, batch size, held-out samples) per scale; "full" is the CLI's default job.
JOBS = {"tiny": (3, 200, 1000), "small": (150, 2000, 50_000), "full": (300, 2000, 50_000)}


@pytest.mark.parametrize("case", list(examples_vs_cli.cases(1, 1, 1)))
def test_examples_vs_cli(benchmark, scale, case):
    argv, env = examples_vs_cli.cases(*JOBS[scale.name])[case]
    benchmark.group = "examples-vs-cli"
    benchmark.extra_info["job"] = dict(zip(("steps", "batch_size", "eval_samples"), JOBS[scale.name]))
    benchmark.pedantic(examples_vs_cli.run_once, args=(argv, env), rounds=1, iterations=1)
