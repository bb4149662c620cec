"""The RPC transport from Python: calls, pipelining, error mapping, limits, faults."""

import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import rpc

ECHO, SLOW, RAISES, BLOCKS = 1, 2, 3, 4


@pytest.fixture
def server():
    s = rpc.RpcServer(num_reactors=2, max_frame_bytes=1 << 20)
    release = threading.Event()
    s.register(ECHO, lambda b: b)
    s.register(SLOW, lambda b: time.sleep(0.5))
    s.register(RAISES, lambda b: (_ for _ in ()).throw(ValueError(f"bad payload {b!r}")))
    s.start()
    yield s
    release.set()
    s.stop()


def test_echo_random_payloads(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    rng = np.random.default_rng()
    for n in [0, 1, 7, 4096, 100_000]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert c.call(ECHO, data) == data


def test_numpy_payload_and_reply_into_array(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    ids = np.random.default_rng().integers(-2**63, 2**63 - 1, 1000, dtype=np.int64)
    out = np.empty_like(ids)
    assert c.call_into(ECHO, ids, out) == ids.nbytes
    np.testing.assert_array_equal(out, ids)


def test_call_into_too_small_raises(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    with pytest.raises(ValueError, match="does not fit"):
        c.call_into(ECHO, b"x" * 100, np.empty(10, np.uint8))


def test_pipelined_call_many_keeps_order(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    payloads = [os.urandom(int(n)) for n in np.random.default_rng().integers(0, 50_000, 32)]
    assert c.call_many(ECHO, payloads) == payloads


def test_handler_value_error_is_value_error(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    with pytest.raises(ValueError, match="bad payload"):
        c.call(RAISES, b"zz")
    assert c.call(ECHO, b"ok") == b"ok"


def test_unknown_method(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    with pytest.raises(rpc.RpcUnknownMethodError):
        c.call(999, b"")
    assert issubclass(rpc.RpcUnknownMethodError, sc.RpcError)


def test_deadline_exceeded_on_slow_server(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    t0 = time.monotonic()
    with pytest.raises(rpc.RpcTimeoutError):
        c.call(SLOW, b"", timeout_ms=50)
    assert time.monotonic() - t0 < 5
    assert issubclass(rpc.RpcTimeoutError, TimeoutError)
    assert c.call(ECHO, b"after") == b"after"


def test_oversized_frame_is_refused_and_others_served(server):
    other = rpc.RpcClient("127.0.0.1", server.port)
    c = rpc.RpcClient("127.0.0.1", server.port)
    with pytest.raises(rpc.RpcError):
        c.call(ECHO, b"x" * (2 << 20))
    assert other.call(ECHO, b"fine") == b"fine"


def _raw_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    hdr = _recv_exact(s, 32)
    _recv_exact(s, struct.unpack_from("<Q", hdr, 24)[0])
    return s


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def test_bad_magic_gets_error_reply_then_close(server):
    s = _raw_connect(server.port)
    s.sendall(b"\x00" * 32)
    hdr = _recv_exact(s, 32)
    assert hdr is not None
    status = struct.unpack_from("<I", hdr, 20)[0]
    assert status == 1  # kBadFrame
    _recv_exact(s, struct.unpack_from("<Q", hdr, 24)[0])
    assert s.recv(1) == b""
    assert rpc.RpcClient("127.0.0.1", server.port).call(ECHO, b"a") == b"a"


def test_truncated_frame_does_not_disturb_server(server):
    s = _raw_connect(server.port)
    s.sendall(struct.pack("<IBBHQIIQ", 0x50524353, 1, 0, 0xFF01, 1, 0, 0, 56) + b"short")
    s.close()
    assert rpc.RpcClient("127.0.0.1", server.port).call(ECHO, b"b") == b"b"


def test_token_authentication():
    s = rpc.RpcServer(token="tok")
    s.register(ECHO, lambda b: b)
    s.start()
    try:
        assert rpc.RpcClient("127.0.0.1", s.port, token="tok").call(ECHO, b"x") == b"x"
        with pytest.raises(rpc.RpcAuthError):
            rpc.RpcClient("127.0.0.1", s.port, token="nope")
        with pytest.raises(rpc.RpcAuthError):
            rpc.RpcClient("127.0.0.1", s.port)
    finally:
        s.stop()


def test_dead_server_gives_connection_error():
    s = rpc.RpcServer()
    s.register(ECHO, lambda b: b)
    s.start()
    c = rpc.RpcClient("127.0.0.1", s.port)
    assert c.call(ECHO, b"x") == b"x"
    port = s.port
    s.stop()
    with pytest.raises(rpc.RpcConnectionError):
        c.call(ECHO, b"x")
    assert not c.connected
    with pytest.raises(ConnectionError):
        rpc.RpcClient("127.0.0.1", port)


def test_payload_type_checked(server):
    c = rpc.RpcClient("127.0.0.1", server.port)
    with pytest.raises(TypeError, match="bytes-like"):
        c.call(ECHO, 12)
    with pytest.raises(ValueError, match="method"):
        c.call(70000, b"")
