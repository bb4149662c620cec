"""KV pull/push over loopback (the KV workload of bench/README.md): 1000 ids x dim 18 float32 per request,
sparsecore beside redis-server (redis-benchmark and redis-py), pyzmq REQ/REP and
DEALER/ROUTER (servers that answer a fixed reply: the pyzmq transport), a pyzmq REQ/REP KV
server (a dict from id to row and NumPy rows: what a Python user would serve behind pyzmq),
grpcio unary with raw bytes, and a plain TCP exchange of the same bytes (the transport bound).
Every server runs in its own process; clients run here (Python) or in the
C++ driver ``sparsecore_kv_bench`` (bench/kv_bench.cpp, built with the tests).

sparsecore runs as it does by default (threads sleep while they wait) and in poll mode
(server ``--poll-us 200``, client ``connect(poll=200e-6)``: both poll their sockets instead of
sleeping, as Seastar's reactor does; each burns a core meanwhile).

Groups (one table, printed at the end of one run):
  kv-pull-1      pull, one request in flight
  kv-push-1      push (MSET for redis), one request in flight
  kv-pull-16     pull, 16 requests in flight (pipelined on one connection; redis-benchmark
                 runs 16 connections, one request each)
  kv-servers     C++ pull, 16 in flight, against 1 and 2 server processes

    python bench/rpc_bench.py [--requests 2000] [--repeats 3]

Peers that are not installed are skipped with a message. bench/test_kv.py runs the same
cases as pytest-benchmark groups.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import numpy as np

IDS, DIM = 1000, 18
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def python_env() -> dict:
    """The environment of a child Python: it imports the sparsecore this process imports
    (the source tree's python/ in development, site-packages once installed)."""
    try:
        import sparsecore
        root = str(Path(sparsecore.__file__).resolve().parent.parent)
    except ImportError:
        root = str(ROOT / "python")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


# ------------------------------------------------------------------------------ processes
class Process:
    """A server in a child process that prints ``listening on host:port`` when ready."""

    def __init__(self, cmd: list[str], env: Optional[dict] = None, timeout: float = 30.0):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=env or python_env())
        deadline = time.monotonic() + timeout
        self.endpoint = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("listening on "):
                self.endpoint = line.split()[2]
                return
        self.stop()
        raise RuntimeError(f"{cmd[:3]} did not start")

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the process has used so far (all its threads; Linux's
        /proc, 0.0 elsewhere or once it has exited)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


POLL_US = 200  # poll mode's window (server --poll-us, client poll=), as Seastar's idle poll


# A server process that is sent SIGTERM when the process that started it dies (Linux's
# PR_SET_PDEATHSIG), so that a benchmark killed outright leaves no server behind.
SERVER_CODE = """import sys
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))
from sparsecore.server import main
sys.exit(main(sys.argv[1:]))"""


def sparsecore_server_processes(stack: ExitStack, count: int, shards: int = 1, poll_us: int = 0,
                                threads: Optional[int] = None) -> list[Process]:
    """Starts ``count`` servers of one cluster on free loopback ports; ``stack`` stops them
    (each one started is registered before the next starts, so a failed start stops the
    others). ``threads``: each server's compute pool (SPARSECORE_NUM_THREADS), and its
    OpenMP threads; None leaves the inherited environment."""
    env = python_env()
    if threads is not None:
        env.update(SPARSECORE_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    procs = []
    for i in range(count):
        p = Process([sys.executable, "-c", SERVER_CODE, "--port", "0", "--shards", str(shards), "--server-index", str(i),
                     "--num-servers", str(count), "--poll-us", str(poll_us)], env=env)
        stack.callback(p.stop)
        procs.append(p)
    return procs


def sparsecore_servers(stack: ExitStack, count: int, shards: int = 1, poll_us: int = 0,
                       threads: Optional[int] = None) -> list[str]:
    """The endpoints of :func:`sparsecore_server_processes`."""
    return [p.endpoint for p in sparsecore_server_processes(stack, count, shards, poll_us, threads)]


def peer_server(stack: ExitStack, kind: str) -> Process:
    p = Process([sys.executable, str(Path(__file__).resolve()), "--serve", kind])
    stack.callback(p.stop)
    return p


def kv_bench_binary() -> Optional[str]:
    """The C++ driver: $SPARSECORE_KV_BENCH, or the developer or CI build's."""
    if os.environ.get("SPARSECORE_KV_BENCH"):
        path = Path(os.environ["SPARSECORE_KV_BENCH"])
        return str(path) if path.is_file() else None
    for build in ("build/dev", "build/ci"):
        path = ROOT / build / "tests/sparsecore_kv_bench"
        if path.is_file():
            return str(path)
    return None


# ------------------------------------------------------------------ peer servers (--serve)
def serve(kind: str) -> None:
    reply = b"\0" * (IDS * DIM * 4)
    if kind == "zmq-kv":
        # What a Python user would put behind pyzmq as a KV server: a dict from id to row
        # index and the rows in one NumPy array (unknown ids read as zero rows). It holds the
        # rows of the benchmark's fixed draws, as the sparsecore server does after warm-up.
        import zmq
        ids = np.unique(np.concatenate(id_batches()))
        rows = np.random.default_rng(0).normal(size=(len(ids) + 1, DIM)).astype(np.float32)
        rows[-1] = 0
        index = {int(k): i for i, k in enumerate(ids)}
        missing = len(ids)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REP)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        print(f"listening on 127.0.0.1:{port}", flush=True)
        while True:
            keys = np.frombuffer(sock.recv(copy=False).buffer, np.int64)
            at = np.fromiter(map(index.get, keys.tolist(), [missing] * len(keys)), np.int64, len(keys))
            sock.send(rows[at])
    if kind in ("zmq-rep", "zmq-router"):
        import zmq
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REP if kind == "zmq-rep" else zmq.ROUTER)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        print(f"listening on 127.0.0.1:{port}", flush=True)
        while True:
            if kind == "zmq-rep":
                sock.recv()
                sock.send(reply, copy=False)
            else:
                ident, _ = sock.recv_multipart()
                sock.send_multipart([ident, reply], copy=False)
    if kind == "grpc":
        from concurrent import futures

        import grpc
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1),
                             options=[("grpc.max_receive_message_length", 1 << 24),
                                      ("grpc.max_send_message_length", 1 << 24)])
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: reply)  # raw bytes both ways
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kv", {"Pull": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        server.wait_for_termination()
    raise ValueError(f"unknown server kind {kind!r}")


# ----------------------------------------------------------------------------- measuring
def result(case: str, latencies_s: np.ndarray, seconds: float, inflight: int = 1) -> dict:
    return {"case": case, "inflight": inflight, "requests": len(latencies_s),
            "keys_per_s": len(latencies_s) * IDS / seconds,
            "p50_us": float(np.percentile(latencies_s, 50) * 1e6), "p99_us": float(np.percentile(latencies_s, 99) * 1e6)}


def measure(case: str, fn: Callable[[], Any], requests: int) -> dict:
    fn()
    lat = np.empty(requests)
    start = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        fn()
        lat[i] = time.perf_counter() - t
    return result(case, lat, time.perf_counter() - start)


def id_batches(count: int = 64) -> list[np.ndarray]:
    """Fixed draws (64 batches of uniform ids): the table holds the same rows however often it runs."""
    rng = np.random.default_rng(1234)
    return [rng.integers(0, 10**6, IDS).astype(np.int64) for _ in range(count)]


def cpp_case(mode: str, servers: list[str], inflight: int, requests: int, poll_us: int = 0) -> Optional[dict]:
    exe = kv_bench_binary()
    if exe is None:
        return None
    cmd = [exe, mode, "--inflight", str(inflight), "--requests", str(requests), "--poll-us", str(poll_us)]
    if servers:
        cmd += ["--servers", ",".join(servers)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-benchmark") is not None


def redis_server(stack: ExitStack) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait()))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def redis_benchmark(port: int, command: list[str], clients: int, requests: int) -> dict:
    out = subprocess.run([shutil.which("redis-benchmark"), "-p", str(port), "-c", str(clients), "-n", str(requests),
                          "--csv", *command], capture_output=True, text=True, timeout=600)
    rows = [line for line in out.stdout.splitlines() if line and not line.startswith('"test"')]
    if out.returncode != 0 or not rows:
        raise RuntimeError(f"redis-benchmark failed: {out.stderr.strip()[-500:]}")
    fields = [f.strip('"') for f in rows[-1].split('","')]
    rps, p50_ms, p99_ms = float(fields[1]), float(fields[4]), float(fields[6])
    name = f"redis-benchmark {command[0]}" + (f" ({clients} connections)" if clients > 1 else "")
    return {"case": name, "inflight": clients, "requests": requests, "keys_per_s": rps * IDS,
            "p50_us": p50_ms * 1e3, "p99_us": p99_ms * 1e3}


def redis_keys() -> tuple[list[str], bytes]:
    return [f"k{i}" for i in range(IDS)], b"x" * (DIM * 4)


def redis_py_client(port: int):
    try:
        import redis
    except ImportError:
        return None
    r = redis.Redis(port=port)
    keys, value = redis_keys()
    r.mset(dict.fromkeys(keys, value))
    return r


def zmq_dealer(port: int, inflight: int, requests: int) -> dict:
    import zmq
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.connect(f"tcp://127.0.0.1:{port}")
    payload = b"\0" * (IDS * 8)
    sent, lat, stamps = 0, [], []
    start = time.perf_counter()
    while len(lat) < requests:
        while sent < requests and len(stamps) < inflight:
            stamps.append(time.perf_counter())
            s.send(payload, copy=False)
            sent += 1
        s.recv(copy=False)
        lat.append(time.perf_counter() - stamps.pop(0))
    seconds = time.perf_counter() - start
    s.close()
    return result(f"pyzmq DEALER/ROUTER ({inflight} in flight)", np.array(lat), seconds, inflight)


# ----------------------------------------------------------------------------- the cases
class PeerMissing(Exception):
    """A peer (or the C++ driver) is not installed: the case is skipped with this message."""


CASES = [  # (group, case id); the order of the one-run table
    ("kv-pull-1", "sparsecore-cpp"), ("kv-pull-1", "sparsecore-python"),
    ("kv-pull-1", "sparsecore-cpp-poll"), ("kv-pull-1", "sparsecore-python-poll"), ("kv-pull-1", "plain-tcp"),
    ("kv-pull-1", "redis-benchmark"), ("kv-pull-1", "redis-py"), ("kv-pull-1", "pyzmq-req-rep"),
    ("kv-pull-1", "pyzmq-kv"), ("kv-pull-1", "grpcio-unary"),
    ("kv-push-1", "sparsecore-cpp"), ("kv-push-1", "sparsecore-python"), ("kv-push-1", "redis-benchmark"),
    ("kv-push-1", "redis-py"),
    ("kv-pull-16", "sparsecore-cpp"), ("kv-pull-16", "sparsecore-cpp-poll"), ("kv-pull-16", "plain-tcp"),
    ("kv-pull-16", "redis-benchmark"),
    ("kv-pull-16", "pyzmq-dealer-router"),
    ("kv-servers", "sparsecore-cpp-1-server"), ("kv-servers", "sparsecore-cpp-2-servers"),
]


class KvCases:
    """Runs one case at a time; servers start on first use and stop at close()."""

    def __init__(self, requests: int):
        self.requests = requests
        self.stack = ExitStack()
        self._servers: dict[tuple[int, int], list[str]] = {}
        self._ps: dict[int, Any] = {}
        self._redis: Optional[int] = None
        self.batches = id_batches()
        self.grads = np.full((IDS, DIM), 1e-3, np.float32)
        self._next = 0
        self._peers: dict[str, Any] = {}

    def peer(self, kind: str) -> Any:
        """A peer's server process (or, for "grpc-channel", a channel to it), started once."""
        if kind not in self._peers:
            if kind == "grpc-channel":
                import grpc
                channel = grpc.insecure_channel(self.peer("grpc").endpoint)
                self.stack.callback(channel.close)
                self._peers[kind] = channel
            else:
                self._peers[kind] = peer_server(self.stack, kind)
        return self._peers[kind]

    def setup(self, group: str, case: str) -> None:
        """Starts what `case` needs (servers, clients), so that run() measures only requests."""
        if (case.startswith("sparsecore-cpp") or case == "plain-tcp") and kv_bench_binary() is None:
            raise PeerMissing("sparsecore_kv_bench is not built (scripts/dev-build, or set SPARSECORE_KV_BENCH)")
        if case == "sparsecore-cpp-poll":
            self.servers(1, POLL_US)
        elif case.startswith("sparsecore-cpp"):
            self.servers(int(case.split("-")[2]) if case.startswith("sparsecore-cpp-") else 1)
        elif case.startswith("sparsecore-python"):
            self.ps(POLL_US if case.endswith("-poll") else 0)
        elif case.startswith("redis"):
            port = self.redis_port()
            if case == "redis-py" and "redis-py" not in self._peers:
                self._peers["redis-py"] = redis_py_client(port)
            if case == "redis-py" and self._peers["redis-py"] is None:
                raise PeerMissing("redis-py not installed")
        elif case.startswith("pyzmq"):
            try:
                import zmq  # noqa: F401
            except ImportError:
                raise PeerMissing("pyzmq not installed") from None
            self.peer({"pyzmq-dealer-router": "zmq-router", "pyzmq-kv": "zmq-kv"}.get(case, "zmq-rep"))
        elif case == "grpcio-unary":
            try:
                import grpc  # noqa: F401
            except ImportError:
                raise PeerMissing("grpcio not installed") from None
            self.peer("grpc-channel")

    def close(self) -> None:
        self.stack.close()

    def servers(self, count: int, poll_us: int = 0) -> list[str]:
        """`count` server processes (poll mode when poll_us > 0), started once."""
        if (count, poll_us) not in self._servers:
            self._servers[(count, poll_us)] = sparsecore_servers(self.stack, count, poll_us=poll_us)
        return self._servers[(count, poll_us)]

    def ps(self, poll_us: int = 0):
        """The Python client of one server process (both in poll mode when poll_us > 0)."""
        if poll_us not in self._ps:
            import sparsecore as sc
            ps = sc.connect(self.servers(1, poll_us), poll=poll_us / 1e6)
            ps.create_table("kv", sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.01)), seed=1)
            for b in self.batches:
                ps.lookup("kv", b, insert=True)
            self._ps[poll_us] = ps
        return self._ps[poll_us]

    def batch(self) -> np.ndarray:
        self._next += 1
        return self.batches[self._next % len(self.batches)]

    def redis_port(self) -> int:
        if not redis_available():
            raise PeerMissing("redis-server / redis-benchmark not installed")
        if self._redis is None:
            self._redis = redis_server(self.stack)
        return self._redis

    def cpp(self, mode: str, servers: list[str], inflight: int, poll_us: int = 0) -> dict:
        r = cpp_case(mode, servers, inflight, self.requests * (4 if inflight > 1 else 1), poll_us)
        if r is None:
            raise PeerMissing("sparsecore_kv_bench is not built (scripts/dev-build, or set SPARSECORE_KV_BENCH)")
        return r

    def run(self, group: str, case: str) -> dict:
        """Measures one case; raises PeerMissing when it cannot run here."""
        self.setup(group, case)
        n, many = self.requests, self.requests * 4
        keys, value = redis_keys()
        if case == "sparsecore-cpp":
            return self.cpp({"kv-push-1": "push"}.get(group, "pull"), self.servers(1), 16 if group == "kv-pull-16" else 1)
        if case == "sparsecore-cpp-poll":
            return self.cpp("pull", self.servers(1, POLL_US), 16 if group == "kv-pull-16" else 1, POLL_US)
        if case.startswith("sparsecore-cpp-"):
            count = int(case.split("-")[2])
            r = self.cpp("pull", self.servers(count), 16)
            r["case"] = f"sparsecore C++ pull, {count} server process{'es' if count > 1 else ''}"
            return r
        if case.startswith("sparsecore-python"):
            poll = case.endswith("-poll")
            ps = self.ps(POLL_US if poll else 0)
            if group == "kv-push-1":
                return measure("sparsecore Python push", lambda: ps.push("kv", self.batch(), self.grads), n)
            rows = np.empty((IDS, DIM), np.float32)
            return measure("sparsecore Python pull" + (" (poll mode)" if poll else ""),
                           lambda: ps.lookup("kv", self.batch(), insert=True, out=rows), n)
        if case == "plain-tcp":
            return self.cpp("tcp", [], 16 if group == "kv-pull-16" else 1)
        if case == "redis-benchmark":
            port = self.redis_port()
            if group == "kv-push-1":
                return redis_benchmark(port, ["MSET", *[x for k in keys for x in (k, value.decode())]], 1, n)
            return redis_benchmark(port, ["MGET", *keys], 16 if group == "kv-pull-16" else 1, many if group == "kv-pull-16" else n)
        if case == "redis-py":
            r = self._peers["redis-py"]
            if group == "kv-push-1":
                mapping = dict.fromkeys(keys, value)
                return measure("redis-py MSET", lambda: r.mset(mapping), max(n // 4, 1))
            return measure("redis-py MGET", lambda: r.mget(keys), n)
        if case.startswith("pyzmq"):
            import zmq
            if case == "pyzmq-dealer-router":
                return zmq_dealer(self.peer("zmq-router").port, 16, many)
            req = zmq.Context.instance().socket(zmq.REQ)
            if case == "pyzmq-kv":
                req.connect(f"tcp://{self.peer('zmq-kv').endpoint}")
                rows = np.empty((IDS, DIM), np.float32)

                def pull():  # ids out, rows back into an array, as sparsecore's pull(out=) does
                    req.send(self.batch(), copy=False)
                    rows[:] = np.frombuffer(req.recv(copy=False).buffer, np.float32).reshape(IDS, DIM)
                try:
                    return measure("pyzmq REQ/REP KV server (dict + NumPy rows)", pull, n)
                finally:
                    req.close()
            req.connect(f"tcp://{self.peer('zmq-rep').endpoint}")
            payload = b"\0" * (IDS * 8)
            try:
                return measure("pyzmq REQ/REP", lambda: (req.send(payload, copy=False), req.recv(copy=False)), n)
            finally:
                req.close()
        if case == "grpcio-unary":
            call = self.peer("grpc-channel").unary_unary("/kv/Pull")  # no serializers: raw bytes both ways
            payload = b"\0" * (IDS * 8)
            return measure("grpcio unary (raw bytes)", lambda: call(payload), n)
        raise ValueError(f"unknown case {case!r}")


def all_cases(requests: int, repeats: int = 1, log: Callable[[str], None] = print) -> list[tuple[str, dict]]:
    """Every case of every group, the whole list `repeats` times over (so that the machine's
    noise spreads over all cases alike); per case the median of its runs' keys/s, p50 and p99.
    Missing peers are logged and skipped."""
    runs: dict[tuple[str, str], list[dict]] = {}
    runner = KvCases(requests)
    try:
        for _ in range(repeats):
            for group, case in CASES:
                try:
                    runs.setdefault((group, case), []).append(runner.run(group, case))
                except PeerMissing as e:
                    if (group, case) not in runs:
                        log(f"skipped {group} {case}: {e}")
                    runs[(group, case)] = []
    finally:
        runner.close()
    rows = []
    for (group, case), results in runs.items():
        if results:
            merged = dict(results[0])
            for key in ("keys_per_s", "p50_us", "p99_us"):
                merged[key] = float(np.median([r[key] for r in results]))
            merged["runs"] = len(results)
            rows.append((group, merged))
    return rows


def table(rows: list[tuple[str, dict]]) -> str:
    """One table: per group, each case's keys/s, p50/p99 and sparsecore's keys/s over it."""
    out = ["| group | case | in flight | keys/s | p50 us | p99 us | sparsecore / case |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    order = ["kv-pull-1", "kv-push-1", "kv-pull-16", "kv-servers"]
    for group in order:
        grp = [r for g, r in rows if g == group]
        ours = next((r for r in grp if r["case"].startswith("sparsecore C++")), grp[0] if grp else None)
        for r in grp:
            ratio = ours["keys_per_s"] / r["keys_per_s"] if ours else float("nan")
            out.append(f"| {group} | {r['case']} | {r['inflight']} | {r['keys_per_s']:,.0f} | {r['p50_us']:.1f} | "
                       f"{r['p99_us']:.1f} | {ratio:.2f}x |")
    return "\n".join(out)


def targets(rows: list[tuple[str, dict]]) -> list[str]:
    """The issue's targets as ratios measured in this run (reported, never asserted)."""
    by = {(g, r["case"]): r["keys_per_s"] for g, r in rows}

    def ratio(a, b):
        return f"{by[a] / by[b]:.2f}x" if a in by and b in by else "n/a"
    return [
        f"C++ pull / redis-benchmark MGET (1 in flight): {ratio(('kv-pull-1', 'sparsecore C++ pull'), ('kv-pull-1', 'redis-benchmark MGET'))} (target >= 3x)",
        f"Python pull / pyzmq REQ/REP: {ratio(('kv-pull-1', 'sparsecore Python pull'), ('kv-pull-1', 'pyzmq REQ/REP'))} (target >= 2x)",
        f"Python pull / pyzmq REQ/REP KV server: "
        f"{ratio(('kv-pull-1', 'sparsecore Python pull'), ('kv-pull-1', 'pyzmq REQ/REP KV server (dict + NumPy rows)'))}",
        f"C++ pull / plain TCP, 16 in flight: {ratio(('kv-pull-16', 'sparsecore C++ pull'), ('kv-pull-16', 'plain TCP C++'))} (target >= 0.60x)",
        "Poll mode (server --poll-us and client poll, both "
        f"{POLL_US} us): C++ pull / redis-benchmark MGET "
        f"{ratio(('kv-pull-1', 'sparsecore C++ pull (poll mode)'), ('kv-pull-1', 'redis-benchmark MGET'))}, "
        f"Python pull / pyzmq REQ/REP "
        f"{ratio(('kv-pull-1', 'sparsecore Python pull (poll mode)'), ('kv-pull-1', 'pyzmq REQ/REP'))}, "
        f"C++ pull / plain TCP, 16 in flight "
        f"{ratio(('kv-pull-16', 'sparsecore C++ pull (poll mode)'), ('kv-pull-16', 'plain TCP C++'))}",
    ]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per case (x4 for 16 in flight)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the whole case list; medians are reported")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run a peer's server
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    rows = all_cases(args.requests, args.repeats)
    print(table(rows))
    print()
    print("\n".join(targets(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
