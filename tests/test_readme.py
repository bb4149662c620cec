"""The README is true: its Python blocks run as written, its first two commands are the ones
CI runs, the test command runs ctest even when pytest fails, and the library sections name
what the package offers."""

import os
import re
import stat
import subprocess
import sys

import pytest

import sparsecore as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.dirname(os.path.dirname(sc.__file__))
# Blocks under these headings need running servers and torchrun; the multi-host tests run them.
SECTIONS_TESTED_ELSEWHERE = ("Multi-host",)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def code_blocks(text, language):
    """(heading, code) of every fenced block of ``language``, with the nearest heading above it."""
    blocks, heading = [], ""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip().startswith("```"):  # any fence: its lines are code, not headings
            body = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                body.append(inner)
            if line.strip() == f"```{language}":
                blocks.append((heading, "\n".join(body) + "\n"))
    return blocks


def python_blocks():
    out = []
    for path in ("README.md", "docs/training.md"):
        for i, (heading, code) in enumerate(code_blocks(read(path), "python")):
            if not heading.startswith(SECTIONS_TESTED_ELSEWHERE):
                out.append(pytest.param(code, id=f"{path}:{i}:{heading[:30]}"))
    return out


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs_as_written(code, tmp_path):
    if "torch" in code:
        pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_readme_has_python_blocks_to_run():
    assert len(python_blocks()) >= 3


def first_commands():
    heading, block = code_blocks(read("README.md"), "bash")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_first_two_commands_install_and_train_then_install_and_test():
    train, test = first_commands()[:2]
    assert train.startswith("pip install") and train.endswith("&& sparsecore train")
    assert test.startswith("pip install") and "pytest tests" in test and "ctest --test-dir build/ci" in test
    assert "-Ccmake.define.SPARSECORE_TESTS=ON" in test and "-Cbuild-dir=build/ci" in test


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
    assert first_commands()[1] in ci_lines


def stub(directory, name, exit_code):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho {name} >> \"$STUB_LOG\"\nexit {exit_code}\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("pytest_rc, ctest_rc, ok", [(0, 0, True), (1, 0, False), (0, 8, False), (1, 8, False)])
def test_test_command_runs_ctest_even_when_pytest_fails(tmp_path, pytest_rc, ctest_rc, ok):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "pip", 0)
    stub(bin_dir, "pytest", pytest_rc)
    stub(bin_dir, "ctest", ctest_rc)
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log)}
    done = subprocess.run(["bash", "-c", first_commands()[1]], env=env, cwd=tmp_path, timeout=60)
    assert (done.returncode == 0) == ok
    assert log.read_text().split() == ["pip", "pytest", "ctest"]


def test_test_command_stops_when_the_install_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "pip", 1)
    stub(bin_dir, "pytest", 0)
    stub(bin_dir, "ctest", 0)
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log)}
    done = subprocess.run(["bash", "-c", first_commands()[1]], env=env, cwd=tmp_path, timeout=60)
    assert done.returncode != 0 and log.read_text().split() == ["pip"]


@pytest.mark.parametrize("claim", [
    "forward_concat", "Quantizer", "examples/quickstart.py", "examples/quantize_mlp.py",
    "-Ccmake.define.SPARSECORE_CUDA=OFF", "--index-url https://download.pytorch.org/whl/cpu",
    "include_last_offset", "hash_features", "SPARSECORE_THREADS=keep", "mkdocs build --strict",
])
def test_readme_documents(claim):
    assert claim in read("README.md")


def test_readme_says_how_long_the_commands_take():
    text = read("README.md")
    head = text[:text.index("## ")]
    assert re.search(r"How long:.*\d+ min", head, re.S), "the README must say how long its first commands take"


def test_install_shows_progress():
    for command in first_commands()[:2]:
        assert command.startswith("pip install -v "), command


def test_ci_does_not_claim_that_pinning_avoids_the_cuda_download():
    text = read(".ci/run")
    assert "unpinned torch would pull" not in text
    assert "download.pytorch.org/whl/cpu" in text


def test_getting_started_page_gives_the_readme_commands():
    docs_commands = [line.strip() for _, block in code_blocks(read("docs/getting-started.md"), "bash")
                     for line in block.splitlines()]
    for command in first_commands()[:2]:
        assert command in docs_commands
