"""The documentation site builds with warnings as errors, its CLI reference is the parsers'
own --help and its API reference carries the docstrings."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

import sparsecore as sc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.dirname(os.path.dirname(sc.__file__))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", os.path.join(ROOT, "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def page(site, path):
    with open(os.path.join(site, path, "index.html"), encoding="utf-8") as f:
        return f.read()


def cli_help(*command):
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR, "COLUMNS": "100"}
    done = subprocess.run([sys.executable, "-c", "import sys; from sparsecore.cli import main; sys.exit(main(sys.argv[1:]))",
                           *command, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", [(), ("train",), ("server",), ("coordinator",), ("serve",)])
def test_cli_reference_is_every_subcommands_help(site, command):
    html = page(site, "cli")
    text = re.sub(r"<[^>]+>", "", html).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") \
        .replace("&quot;", '"').replace("&#39;", "'")
    for line in cli_help(*command).splitlines():
        assert line.strip() in text, f"'{line.strip()}' of 'sparsecore {' '.join(command)} --help' is not on the page"


@pytest.mark.parametrize("path, words", [
    ("api/embedding", ["EmbeddingCollection", "include_last_offset", "Evaluation"]),
    ("api/torch", ["forward_concat", "EmbeddingBagCollection", "Trainer", "epochs"]),
    ("api/data", ["ArrayData", "BatchList", "hash_features"]),
    ("api/threads", ["default_split", "SPARSECORE_THREADS"]),
    ("api/quant", ["Quantizer", "shift_matmul"]),
    ("getting-started", ["SPARSECORE_CUDA=OFF", "download.pytorch.org/whl/cpu"]),
])
def test_pages_carry_the_docstrings_and_guides(site, path, words):
    html = page(site, path)
    for word in words:
        assert word in html, f"{word} missing from {path}"


def test_the_hook_stops_the_build_on_a_failing_command():
    sys.path.insert(0, os.path.join(ROOT, "docs", "hooks"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    with pytest.raises(RuntimeError, match="no-such-command"):
        cli_reference.on_page_markdown("<!-- cli-help: no-such-command -->\n", None, None, None)
