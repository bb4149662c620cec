"""The serving benchmark (bench/serving.py) as a smoke case: at the tiny scale it runs whole in
a child process (its thread limits must precede torch's import) and writes its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_serving_benchmark_runs_and_reports(tmp_path, scale):
    if scale.name != "tiny":
        pytest.skip("the serving benchmark is a script: python bench/serving.py --out bench/results/serving.md")
    pytest.importorskip("torch")
    env = {**os.environ, "SPARSECORE_BENCH_SCALE": "tiny"}
    out = tmp_path / "serving.md"
    done = subprocess.run([sys.executable, str(HERE / "serving.py"), "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for peer in ("sparsecore fp32", "sparsecore pow2-3bit", "PyTorch eager", "TorchScript", "PyTorch eager (model)",
                 "TorchScript (model)"):
        assert f"| {peer} |" in report
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    # the ONNX peer is a valid Gather + ReduceSum graph whose logits were checked before timing
    assert "| ONNX Runtime |" in report and "| ONNX Runtime (model) |" in report
    assert "ReduceSum" in report and "Loop" not in report
