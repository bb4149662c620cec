"""MkDocs hook: renders the command-line reference from the argparse parsers.

A page line ``<!-- cli-help: train -->`` becomes the output of ``sparsecore train --help``
(``<!-- cli-help: -->`` the top-level help), run in a child interpreter with a fixed width, so
the reference is always the parser's own text. A command whose help fails stops the build."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

_MARKER = re.compile(r"^<!-- cli-help:\s*(?P<command>[\w -]*?)\s*-->$", re.MULTILINE)
_PROGRAM = "import sys; from sparsecore.cli import main; sys.exit(main(sys.argv[1:]))"


def cli_help(command: str) -> str:
    """The text of ``sparsecore <command> --help``."""
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    python_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python")
    # The source tree's package when it has a built extension (a developer build), else the
    # installed one (a source tree without _core cannot import).
    built = glob.glob(os.path.join(python_dir, "sparsecore", "_core*.so"))
    if built and "PYTHONPATH" not in os.environ:
        env["PYTHONPATH"] = python_dir
    args = [sys.executable, "-c", _PROGRAM, *command.split(), "--help"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"'sparsecore {command} --help' failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.rstrip()


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (the hook's signature)
    def render(match: re.Match) -> str:
        return "```text\n" + cli_help(match.group("command")) + "\n```"

    return _MARKER.sub(render, markdown)
