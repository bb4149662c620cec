"""What the coordinator and its members (servers, workers) say to each other.

The coordinator is an :class:`sparsecore.rpc.RpcServer` (the project's own frames, token
handshake and size limits); every request and reply is a JSON object, except the two that
carry a worker's state (a JSON header, then the state's bytes). Requests name their sender
(``role``, ``rank``, ``incarnation``: a random id per member process), so that a restarted
process is told apart from the one it replaces.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
from typing import Any, Optional

from .. import _core

# Method ids (the RPC layer reserves the top of the range for its handshake and pings).
REGISTER = 1       # {role, rank, incarnation, [address, num_servers, snapshots]} -> job description
HEARTBEAT = 2      # {role, rank, incarnation, [paused]} -> cluster state
BOUNDARY = 3       # {rank, incarnation, generation, step, final} -> {action, generation}
SNAPSHOT_STATE = 4  # header {rank, incarnation, generation, step, encoding} + state bytes -> {}
FETCH_STATE = 5    # {rank, incarnation, name} -> header {encoding, step} + state bytes
FAILED = 6         # {rank, incarnation, generation, why} -> {generation}
STATUS = 7         # {} -> cluster state (for launchers and tests)

ROLES = ("server", "worker")
MODES = ("sync", "async", "ssp")  # ssp: bounded staleness (sparsecore.connect)
# Worker states travel in one frame; the coordinator's frame limit is set from this.
DEFAULT_MAX_STATE_BYTES = 256 << 20
_HEADER = struct.Struct("<I")
MAX_HEADER_BYTES = 64 << 10


def new_incarnation() -> str:
    """A random id for one member process (a restart gets another)."""
    return secrets.token_hex(8)


def parse_address(address: str, what: str = "coordinator") -> tuple[str, int]:
    """``"host:port"`` -> (host, port); ValueError naming ``what`` otherwise."""
    if not isinstance(address, str):
        raise TypeError(f"{what} must be a 'host:port' string, got {type(address).__name__}")
    if len(address) > 300:
        raise ValueError(f"{what} must be 'host:port', got {len(address)} characters")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be 'host:port' with a port in [1, 65535], got {address!r}")
    return host, int(port)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(payload: bytes, what: str = "request") -> dict[str, Any]:
    """A JSON object from ``payload``; ValueError when it is not one."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(message).__name__}")
    return message


def pack_with_state(header: dict[str, Any], state: bytes) -> bytes:
    head = encode(header)
    return _HEADER.pack(len(head)) + head + state


def unpack_with_state(payload: bytes, what: str = "request") -> tuple[dict[str, Any], bytes]:
    """(header, state bytes) of a frame made by :func:`pack_with_state`; ValueError when the
    header's length does not fit the frame or is over MAX_HEADER_BYTES."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"{what} of {len(payload)} bytes is shorter than its header length")
    (n,) = _HEADER.unpack_from(payload)
    if n > MAX_HEADER_BYTES or _HEADER.size + n > len(payload):
        raise ValueError(f"{what}: header length {n} does not fit a frame of {len(payload)} bytes")
    return decode(payload[_HEADER.size:_HEADER.size + n], what), payload[_HEADER.size + n:]


def field(message: dict[str, Any], name: str, kind: type, what: str = "request") -> Any:
    """``message[name]`` checked to be a ``kind`` (bool is not an int); ValueError otherwise."""
    if name not in message:
        raise ValueError(f"{what} lacks '{name}'")
    value = message[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{what}: '{name}' must be an integer, got {value!r}"[:200])
    if kind is not int and not isinstance(value, kind):
        raise ValueError(f"{what}: '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value


class Link:
    """A member's connection to the coordinator: one RpcClient, opened again after the
    coordinator restarts. Not thread-safe; each thread of a member has its own."""

    def __init__(self, address: str, token: str = "", timeout: float = 10.0):
        self.host, self.port = parse_address(address)
        self.address = address
        self._token = token
        self._timeout_ms = max(1, int(timeout * 1000))
        self._client: Optional[Any] = None

    def call(self, method: int, payload: bytes) -> bytes:
        """Sends one request; on a broken connection the next call connects again. Raises
        RpcConnectionError/RpcTimeoutError (coordinator unreachable), RpcAuthError (wrong
        token), KeyError (unknown member), ValueError (refused request)."""
        if self._client is None or not self._client.connected:
            self._client = _core.RpcClient(self.host, self.port, token=self._token,
                                           connect_timeout_ms=min(self._timeout_ms, 5000),
                                           timeout_ms=self._timeout_ms, heartbeat_ms=0)
        try:
            return self._client.call(method, payload, self._timeout_ms)
        except (_core.RpcConnectionError, _core.RpcTimeoutError):
            self._client = None
            raise

    def request(self, method: int, message: dict[str, Any]) -> dict[str, Any]:
        return decode(self.call(method, encode(message)), "coordinator reply")

    def close(self) -> None:
        self._client = None


def is_unknown_member(error: BaseException) -> bool:
    return isinstance(error, KeyError) and "unknown member" in str(error)


UNREACHABLE = (_core.RpcConnectionError, _core.RpcTimeoutError)


def deadline_error(what: str, seconds: float) -> Exception:
    return _core.RpcTimeoutError(f"{what}: no progress within {seconds:g} s")


def sleep_until(deadline: float, interval: float, what: str, seconds: float) -> None:
    """Sleeps ``interval`` (less near ``deadline``); RpcTimeoutError once it passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise deadline_error(what, seconds)
    time.sleep(min(interval, left))
