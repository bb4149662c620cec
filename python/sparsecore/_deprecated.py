"""Old spellings of the public API, kept for one release. Each use warns (DeprecationWarning,
pointing at the caller's line) and then does exactly what the new spelling does."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping


def warn(old: str, new: str, *, stacklevel: int = 3) -> None:
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
