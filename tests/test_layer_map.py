"""The layer checker (scripts/check_layers.py, run by ctest as `layer_map`): the tree as it is
passes, and each kind of break of the map is caught and named."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "scripts" / "check_layers.py"

pytestmark = pytest.mark.skipif(not (ROOT / "csrc" / "sparsecore").is_dir(), reason="needs the source tree")


def run_checker(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tree(tmp_path):
    """A copy of the C++ sources to plant violations in."""
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc", ignore=shutil.ignore_patterns("python"))
    return tmp_path


def test_the_source_tree_holds_the_layer_map():
    done = run_checker(ROOT)
    assert done.returncode == 0, done.stdout
    assert "layer map holds" in done.stdout


def test_an_include_pointing_up_the_order_fails(tree):
    header = tree / "csrc" / "sparsecore" / "table" / "hash_table.h"
    header.write_text(header.read_text() + '\n#include "sparsecore/ps/ps_server.h"\n')
    done = run_checker(tree)
    assert done.returncode == 1
    assert "hash_table.h" in done.stdout and "later layer 'ps'" in done.stdout


def test_a_folder_that_is_not_a_layer_fails(tree):
    (tree / "csrc" / "sparsecore" / "misc").mkdir()
    (tree / "csrc" / "sparsecore" / "misc" / "thing.h").write_text("#pragma once\n")
    done = run_checker(tree)
    assert done.returncode == 1 and "misc" in done.stdout


def test_a_python_header_in_the_core_fails(tree):
    source = tree / "csrc" / "sparsecore" / "core" / "hash.h"
    source.write_text("#include <pybind11/pybind11.h>\n" + source.read_text())
    done = run_checker(tree)
    assert done.returncode == 1 and "Python header" in done.stdout


def test_cuda_sources_may_include_every_layer_but_not_be_included_below(tree):
    quant = tree / "csrc" / "sparsecore" / "quant" / "shift_matmul.h"
    quant.write_text(quant.read_text() + '\n#include "sparsecore/cuda/device_packed_weights.h"\n')
    done = run_checker(tree)
    assert done.returncode == 1 and "later layer 'cuda'" in done.stdout
