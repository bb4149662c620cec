"""Old spellings of the public API, kept for one release. Each use warns (DeprecationWarning,
pointing at the caller's line) and then does exactly what the new spelling does.

Every message starts with the old spelling's full name ("sparsecore.Cluster.pull(...) is
deprecated ..."), so ``-W "error:sparsecore\\.:DeprecationWarning"`` (the test suite's setting in
pyproject.toml) turns uses of old spellings into errors without touching other libraries'
warnings: the category filter alone cannot tell them apart, and the module filter sees the
caller's module, not sparsecore's."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping


def warn(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warns that ``old`` (a spelling relative to the package, e.g. "Trainer.load(path)", or a
    full "sparsecore.x" name) is deprecated in favour of ``new``; ``stacklevel`` 3 points at the
    caller of the function that calls this."""
    if not old.startswith("sparsecore."):
        old = f"sparsecore.{old}"
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def module_getattr(module: str, renamed: Mapping[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` serving ``renamed`` ({old name: (new spelling, getter)})
    with a warning; any other missing name is an AttributeError as usual."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, get = renamed[name]
            warn(f"{module}.{name}", new)
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
