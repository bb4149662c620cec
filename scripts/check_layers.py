#!/usr/bin/env python3
"""Checks the layer map of the C++ core: every folder under csrc/sparsecore is a known layer,
and a file may include only headers of its own layer or of layers listed before it. The CUDA
sources (csrc/cuda) form the last layer; the Python bindings (csrc/python) sit above all.
No file of the core includes a Python header.

Usage: scripts/check_layers.py [ROOT]   (exit 1 and one line per violation when the map is broken)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The order of docs/architecture.md: a layer may use only the layers before it.
LAYERS = ("core", "optim", "table", "ops", "io", "rpc", "ps", "train", "quant", "serving", "cuda")
SOURCE_SUFFIXES = {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh", ".inl"}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]', re.MULTILINE)
PYTHON_HEADER = re.compile(r"^(Python\.h|pybind11/)")


def layer_of_include(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "sparsecore":
        return parts[1]
    return None


def check(root: Path) -> list[str]:
    problems: list[str] = []
    core = root / "csrc" / "sparsecore"
    sources: list[tuple[Path, str]] = []
    for folder in sorted(p for p in core.iterdir() if p.is_dir()):
        if folder.name not in LAYERS:
            problems.append(f"{folder.relative_to(root)}: folder is not a layer of the map {' -> '.join(LAYERS)}")
            continue
        sources += [(f, folder.name) for f in sorted(folder.rglob("*")) if f.suffix in SOURCE_SUFFIXES]
    for f in sorted(core.glob("*")):
        if f.is_file() and f.suffix in SOURCE_SUFFIXES:
            problems.append(f"{f.relative_to(root)}: file outside every layer folder")
    cuda = root / "csrc" / "cuda"
    if cuda.is_dir():
        sources += [(f, "cuda") for f in sorted(cuda.rglob("*")) if f.suffix in SOURCE_SUFFIXES]
    for path, layer in sources:
        rank = LAYERS.index(layer)
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in INCLUDE.finditer(text):
            target = match.group(1)
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(root)}:{line}"
            if PYTHON_HEADER.match(target):
                problems.append(f"{where}: the C++ core includes a Python header <{target}>")
                continue
            used = layer_of_include(target)
            if used is None:
                continue
            if used not in LAYERS:
                problems.append(f"{where}: includes '{target}' from '{used}', which is not a layer")
            elif LAYERS.index(used) > rank:
                problems.append(f"{where}: layer '{layer}' includes '{target}' of the later layer '{used}' "
                                f"(order: {' -> '.join(LAYERS)})")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent)
    problems = check(root)
    for p in problems:
        print(p)
    if not problems:
        print(f"layer map holds: {' -> '.join(LAYERS)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
