"""``sparsecore serve``: a model directory (:func:`sparsecore.export_model`) served over the
project's RPC layer (for :class:`sparsecore.PredictClient` and the C++ ``PredictClient``) and
HTTP/1.1 JSON, with the requests of every connection batched together.

HTTP endpoints (``--http-port``):

- ``POST /v1/predict`` with ``{"features": {"<name>": [[id, ...], ...]}, "weights": {...},
  "dense": [[...], ...], "timeout_ms": N}`` (one list of ids per sample for every feature;
  weights and dense as the model needs) answers ``{"logits": [...], "version": V}``; 400 for a
  malformed request, 401 without the token, 413 for a body over ``--max-body-bytes``, 503
  when the queue is full, 504 past the deadline.
- ``GET /healthz``: ``{"status": "ok", "version": V}``.
- ``GET /metrics``: Prometheus text (requests, batches, samples, refusals, deadlines, queue,
  the model version, transport counters).

With a token (``--token-file`` or ``$SPARSECORE_TOKEN``), RPC clients prove it in the
handshake (as with ``sparsecore server``) and HTTP requests to ``/v1/predict`` and
``/metrics`` send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, Optional, Union

from . import _core

__all__ = ["PredictServer", "main"]


class PredictServer:
    """A prediction server in this process (what ``sparsecore serve`` runs). ``port`` is the
    RPC port (0: any free one, see :attr:`port`), ``http_port`` the HTTP port (None: no HTTP,
    0: any free one). ``max_batch`` samples per batch, gathered for at most ``max_wait``
    seconds, predicted by ``threads`` threads. ``default_timeout``: the deadline of HTTP
    requests that give no ``timeout_ms`` (None: none). ``http_timeout``: an HTTP connection
    must send its request, and read the answer, within it. ``poll_interval``: how often new
    exports of the model's stream are applied (None: never). Binds loopback unless told."""

    def __init__(self, model_dir: Union[str, os.PathLike], port: int = 0, http_port: Optional[int] = None, *,
                 address: str = "127.0.0.1", token: str = "", reactors: int = 1, max_batch: int = 256,
                 max_wait: float = 200e-6, threads: int = 2, max_queued: int = 4096,
                 default_timeout: Optional[float] = None, http_timeout: float = 10.0,
                 max_body_bytes: int = 1 << 20, max_http_connections: int = 256,
                 poll_interval: Optional[float] = 1.0):
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(0 <= int(port) < 65536, f"port must be in [0, 65535], got {port}")
        check(http_port is None or 0 <= int(http_port) < 65536, f"http_port must be in [0, 65535], got {http_port}")
        check(1 <= int(reactors) <= 256, f"reactors must be in [1, 256], got {reactors}")
        check(1 <= int(max_batch) <= 1 << 20, f"max_batch must be in [1, 1048576], got {max_batch}")
        check(0 <= float(max_wait) <= 10, f"max_wait must be in [0, 10] seconds, got {max_wait}")
        check(1 <= int(threads) <= 256, f"threads must be in [1, 256], got {threads}")
        check(int(max_queued) >= 1, f"max_queued must be >= 1, got {max_queued}")
        check(default_timeout is None or 0 < default_timeout <= 86400,
              f"default_timeout must be in (0, 86400] seconds or None, got {default_timeout}")
        check(0 < float(http_timeout) <= 86400, f"http_timeout must be in (0, 86400] seconds, got {http_timeout}")
        check(int(max_body_bytes) >= 1, f"max_body_bytes must be >= 1, got {max_body_bytes}")
        check(int(max_http_connections) >= 1, f"max_http_connections must be >= 1, got {max_http_connections}")
        check(poll_interval is None or 0 < poll_interval <= 86400,
              f"poll_interval must be in (0, 86400] seconds or None, got {poll_interval}")

        def ms(seconds: Optional[float]) -> int:
            return 0 if seconds is None else max(1, int(round(seconds * 1000)))

        self.address = address
        self._c = _core.PredictServer(
            os.fspath(model_dir), address, int(port), -1 if http_port is None else int(http_port), token,
            int(reactors), int(max_batch), int(round(float(max_wait) * 1e6)), int(threads), int(max_queued),
            ms(default_timeout), ms(http_timeout), int(max_body_bytes), int(max_http_connections), ms(poll_interval))
        self._c.start()

    @property
    def port(self) -> int:
        return self._c.port

    @property
    def http_port(self) -> Optional[int]:
        return None if self._c.http_port < 0 else self._c.http_port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def version(self) -> int:
        """The version (training step) of the rows served."""
        return self._c.version

    def stats(self) -> dict[str, int]:
        """Batching counters: requests, samples, batches, rejected, deadline_exceeded, failed, queued."""
        return dict(self._c.stats())

    def metrics(self) -> str:
        return self._c.metrics()

    def stop(self) -> None:
        self._c.stop()

    close = stop

    def __enter__(self) -> "PredictServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sparsecore serve``: serve until SIGTERM/SIGINT. Prints ``listening on HOST:PORT`` (and
    ``http on http://HOST:PORT``) once clients can connect."""
    from ._token import ENV_VAR, resolve_token

    p = argparse.ArgumentParser(
        prog="sparsecore serve",
        description="Serve a model directory written by sparsecore.export_model over RPC (sparsecore.PredictClient) "
                    "and HTTP/1.1 JSON (POST /v1/predict, GET /healthz, GET /metrics) until SIGTERM or SIGINT, "
                    "batching the requests of every connection; new exports of the model's stream are applied "
                    "while serving. Prints 'listening on HOST:PORT' once clients can connect.",
        epilog=f"The shared token: --token-file PATH (a file readable by its owner only) or ${ENV_VAR}; "
               "--token TEXT also works but shows in ps to every user of the machine. HTTP clients send "
               "'Authorization: Bearer TOKEN'.")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (sparsecore.export_model)")
    p.add_argument("--address", default="127.0.0.1", metavar="HOST",
                   help="bind address of both ports (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=0, metavar="N", help="RPC port (default: 0, any free port)")
    p.add_argument("--http-port", type=int, default=None, metavar="N",
                   help="also serve HTTP/1.1 JSON on this port (0: any free port, printed as 'http on "
                        "http://HOST:PORT'; default: off)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"file holding the shared token clients must prove they know (default: ${ENV_VAR})")
    p.add_argument("--token", default=None, metavar="TEXT",
                   help="the shared token itself (shows in ps to every user: prefer --token-file)")
    p.add_argument("--max-batch", type=int, default=256, metavar="N",
                   help="samples per batch, from the requests of every connection (default: 256)")
    p.add_argument("--max-wait-us", type=int, default=200, metavar="U",
                   help="how long a request may wait for others to batch with, in microseconds (default: 200)")
    p.add_argument("--threads", type=int, default=2, metavar="T", help="prediction threads (default: 2)")
    p.add_argument("--max-queued", type=int, default=4096, metavar="N",
                   help="requests waiting at most; more are refused as busy (default: 4096)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="deadline of HTTP requests that give no timeout_ms, in seconds (default: none)")
    p.add_argument("--http-timeout", type=float, default=10.0, metavar="S",
                   help="an HTTP connection must send a whole request, and read the answer, within S seconds, "
                        "or it is closed (default: 10)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest HTTP request body; larger ones are refused (413) before they are read "
                        "(default: 1048576)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="S",
                   help="apply new exports and deltas of the model's stream every S seconds (default: 1; 0: never)")
    args = p.parse_args(argv)

    def fail(message: str, code: int = 2) -> int:
        print(f"sparsecore serve: error: {message}", file=sys.stderr)
        return code

    try:
        token = resolve_token(args.token_file, args.token)
    except ValueError as e:
        return fail(str(e))
    if not os.path.isdir(args.model):
        return fail(f"--model '{args.model}' is not a directory")
    try:
        server = PredictServer(
            args.model, args.port, args.http_port, address=args.address, token=token, max_batch=args.max_batch,
            max_wait=args.max_wait_us / 1e6, threads=args.threads, max_queued=args.max_queued,
            default_timeout=args.timeout, http_timeout=args.http_timeout, max_body_bytes=args.max_body_bytes,
            poll_interval=args.poll_interval if args.poll_interval > 0 else None)
    except _core.CorruptDataError as e:
        return fail(f"cannot load --model: CorruptDataError: {e}", 1)
    except (ValueError, KeyError) as e:
        return fail(str(e))
    except (OSError, RuntimeError) as e:
        return fail(str(e), 1)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"listening on {server.endpoint} version {server.version}", flush=True)
    if server.http_port is not None:
        print(f"http on http://{args.address}:{server.http_port}", flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
