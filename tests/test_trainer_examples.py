"""The examples run end to end (a few steps each) and print their held-out AUC."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.dirname(os.path.dirname(sc.__file__))


@pytest.mark.parametrize("example", ["xdl_mlp.py", "wide_and_deep.py", "din.py"])
def test_example_runs(example):
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", example), "--steps", "3", "--eval-samples", "1000",
                           "--batch-size", "200"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out AUC" in done.stdout and "planted optimum" in done.stdout
