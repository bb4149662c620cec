"""sparsecore's RPC transport: an epoll server with one reactor thread per core and a client
with many requests in flight (docs/architecture.md, "Files and frames").

Most users meet it through :func:`sparsecore.connect` and :class:`sparsecore.Server`; these
classes are the raw transport, useful for custom services and for measuring it::

    server = RpcServer(num_reactors=2, token="s3cret")
    server.register(1, lambda payload: payload[::-1])
    server.start()
    client = RpcClient("127.0.0.1", server.port, token="s3cret")
    client.call(1, b"abc")            # b"cba"

Errors: :class:`RpcConnectionError` (peer gone; also a ``ConnectionError``),
:class:`RpcTimeoutError` (also a ``TimeoutError``), :class:`RpcUnknownMethodError`,
:class:`RpcProtocolError`, :class:`RpcAuthError`, :class:`RpcStepAbortedError` (a synchronous step
or barrier abandoned because a worker left or rejoined), all :class:`RpcError`. A server method that
raises ``ValueError``/``TypeError``/``KeyError`` raises the same type at the caller.
"""

from __future__ import annotations

from ._core import (
    RpcAuthError,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcServer,
    RpcStepAbortedError,
    RpcTimeoutError,
    RpcUnknownMethodError,
)
from ._deprecated import module_getattr

__all__ = [
    "RpcAuthError", "RpcClient", "RpcConnectionError", "RpcError", "RpcProtocolError", "RpcServer",
    "RpcStepAbortedError", "RpcTimeoutError", "RpcUnknownMethodError",
]

# Renamed (every exception class ends in Error); the old names warn for one more release.
__getattr__ = module_getattr(__name__, {
    "RpcTimeout": ("sparsecore.rpc.RpcTimeoutError", lambda: RpcTimeoutError),
    "RpcUnknownMethod": ("sparsecore.rpc.RpcUnknownMethodError", lambda: RpcUnknownMethodError),
})
