"""The shared token of servers and workers, from a file or the environment.

A token given on the command line shows in ``ps`` to every user of the machine; a file
(``--token-file``, readable by its owner only) or the ``SPARSECORE_TOKEN`` variable does not.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

__all__ = ["ENV_VAR", "resolve_token"]

ENV_VAR = "SPARSECORE_TOKEN"


def read_token_file(path: str) -> str:
    """The token in ``path``: its text without surrounding whitespace (a trailing newline is
    usual). Raises ValueError naming the file when it cannot be read or holds no token."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ValueError(f"cannot read token file '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"token file '{path}' is not UTF-8 text") from None
    if not token:
        raise ValueError(f"token file '{path}' is empty")
    if "\n" in token:
        raise ValueError(f"token file '{path}' holds more than one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        import logging

        logging.getLogger("sparsecore").warning("token file '%s' is readable by other users (chmod 600 it)", path)
    return token


def resolve_token(token_file: Optional[str] = None, token: Optional[str] = None) -> str:
    """``token_file`` when given, else ``token`` when given, else ``$SPARSECORE_TOKEN``, else
    "" (no authentication)."""
    if token_file:
        return read_token_file(token_file)
    if token:
        return token
    return os.environ.get(ENV_VAR, "")
