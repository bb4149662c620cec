"""A real ``sparsecore server`` in a child process, seen from outside as an attacker sees it:
its memory, descriptors and CPU time read from /proc, and raw frames on a loopback socket
(the wire format of csrc/sparsecore/rpc/frame.h)."""

from __future__ import annotations

import hashlib
import hmac
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Callable, Optional

import sparsecore as sc

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))

# FrameHeader: magic, version, flags, method, request id, timeout_ms, status, payload bytes.
HEADER = struct.Struct("<IBBHQIIQ")
MAGIC, VERSION, FLAG_RESPONSE = 0x50524353, 1, 1
METHOD_HELLO, METHOD_AUTH = 0xFF00, 0xFF01
HELLO = struct.Struct("<II16s")      # num_reactors, token_required, server_nonce
AUTH = struct.Struct("<II16s32s")    # reactor, reserved, client_nonce, client_mac


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"
    return env


class ServerProcess:
    """``sparsecore server`` (or, with ``server_kwargs``, a ``Server(port=0, **kwargs)``) in a
    child process whose descriptor limit is ``nofile`` when given. Use as a context manager."""

    def __init__(self, *args: object, nofile: Optional[int] = None, server_kwargs: Optional[dict] = None):
        if server_kwargs is None:
            code = "import sys; from sparsecore.server import main; sys.exit(main(sys.argv[1:]))"
        else:
            code = ("import signal, threading; from sparsecore.server import Server; "
                    f"s = Server(0, **{server_kwargs!r}); print('listening on', s.endpoint, flush=True); "
                    "done = threading.Event(); signal.signal(signal.SIGTERM, lambda *_: done.set()); "
                    "done.wait(); s.stop()")

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                                     env=_env(), text=True, preexec_fn=limit_descriptors)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}")
        self.endpoint = line.split()[2]
        host, port = self.endpoint.rsplit(":", 1)
        self.host, self.port = host, int(port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory now (VmRSS)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def open_descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_ticks(self) -> int:
        """User + system CPU time so far, in clock ticks (/proc/<pid>/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def transport_stats(self, token: str = "") -> dict:
        client = sc.rpc.RpcClient(self.host, self.port, token=token, connect_timeout_ms=10_000)
        return client.transport_stats(timeout_ms=10_000)

    def serves_a_client(self, token: str = "") -> bool:
        """A real worker connects, creates a table, pulls rows and pushes gradients."""
        import numpy as np
        ps = sc.connect([self.endpoint], token=token, timeout=30.0)
        ps.create_table("probe", sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.5)), seed=3)
        ids = np.arange(10, dtype=np.int64)
        before = ps.lookup("probe", ids, insert=True)
        ps.push("probe", ids, np.ones((10, 4), np.float32))
        after = ps.lookup("probe", ids, insert=True)
        return bool(np.allclose(after, before - 0.5))

    def serves_a_client_eventually(self) -> bool:
        """serves_a_client, False instead of a connection error (for wait_until)."""
        try:
            return self.serves_a_client()
        except (sc.RpcConnectionError, sc.RpcTimeoutError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` seconds pass (a bound, not a timing
    claim); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return condition()
        time.sleep(interval)


def header(method: int, payload_bytes: int, *, flags: int = 0, request_id: int = 1) -> bytes:
    return HEADER.pack(MAGIC, VERSION, flags, method, request_id, 0, 0, payload_bytes)


class RawPeer:
    """A loopback socket to the server that has read the hello frame; frames are hand-made."""

    def __init__(self, host: str, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        head = self.read_exact(HEADER.size)
        _, _, _, method, _, _, _, size = HEADER.unpack(head)
        assert method == METHOD_HELLO, method
        self.num_reactors, self.token_required, self.server_nonce = HELLO.unpack(self.read_exact(size))

    def read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the server")
            out += chunk
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def authenticate(self, token: str = "") -> None:
        """The client's side of the handshake (HMAC of both nonces under the token)."""
        client_nonce = os.urandom(16)
        mac = b"\0" * 32
        if token:
            mac = hmac.new(token.encode(), b"sparsecore-client" + self.server_nonce + client_nonce,
                           hashlib.sha256).digest()
        self.send(header(METHOD_AUTH, AUTH.size) + AUTH.pack(0, 0, client_nonce, mac))
        head = HEADER.unpack(self.read_exact(HEADER.size))
        reply = self.read_exact(head[7])
        if head[6] != 0:
            raise PermissionError(reply.decode(errors="replace"))

    def read_frame(self) -> tuple[tuple, bytes]:
        head = HEADER.unpack(self.read_exact(HEADER.size))
        return head, self.read_exact(head[7])

    def closed_by_server(self) -> bool:
        """Reads (and drops) whatever the server sends until it closes the connection; False
        when the socket's timeout passes first."""
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
