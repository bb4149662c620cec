"""Starts a coordinated cluster as real processes on loopback - a coordinator, servers that
register with it, workers running tests/cluster_worker.py - kills and restarts any of them,
and reads the result. Every wait is bounded; logs go to files under the test's directory."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import sparsecore as sc
from sparsecore.cluster import protocol

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))
TOKEN = "cluster-test-token"
CLI = "import sys; from sparsecore.cli import main; sys.exit(main(sys.argv[1:]))"


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = PYTHON_DIR + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONFAULTHANDLER"] = "1"
    e["SPARSECORE_TOKEN"] = TOKEN
    e["OMP_NUM_THREADS"] = e["OPENBLAS_NUM_THREADS"] = "1"
    return e


class ClusterProcesses:
    def __init__(self, root, *, servers=2, workers=2, steps=12, every_steps=2, data=(), member_timeout=3.0):
        self.root = str(root)
        self.num_servers, self.num_workers, self.steps = servers, workers, steps
        self.every_steps, self.data, self.member_timeout = every_steps, list(data), member_timeout
        self.procs = {}  # (role, index) -> Popen
        self.addresses = {}  # server index -> "host:port"
        self.coordinator = None
        self.port = 0
        self.started = {}
        os.makedirs(os.path.join(self.root, "logs"), exist_ok=True)

    def _spawn(self, key, argv):
        n = self.started[key] = self.started.get(key, 0) + 1
        log = open(os.path.join(self.root, "logs", f"{key[0]}-{key[1]}-{n}.log"), "w")
        p = subprocess.Popen([sys.executable, *map(str, argv)], stdout=subprocess.PIPE, stderr=log, env=env(), text=True)
        log.close()
        self.procs[key] = p
        return p

    def _first_line(self, p, prefix, key):
        line = p.stdout.readline()
        assert line.startswith(prefix), f"{key}: {line!r}; log: {self.log(key)}"
        return line.split()

    def start_coordinator(self):
        key = ("coordinator", 0)
        p = self._spawn(key, ["-c", CLI, "coordinator", "--port", self.port, "--servers", self.num_servers,
                              "--workers", self.num_workers, "--snapshot-dir", os.path.join(self.root, "coordinator"),
                              "--snapshot-every-steps", self.every_steps, "--heartbeat", 0.2,
                              "--member-timeout", self.member_timeout, "--server-timeout", 20])
        self.coordinator = self._first_line(p, "coordinator on", key)[2]
        self.port = int(self.coordinator.rsplit(":", 1)[1])

    def start_server(self, i):
        key = ("server", i)
        p = self._spawn(key, ["-c", CLI, "server", "--port", "0", "--server-index", str(i), "--num-servers",
                              str(self.num_servers), "--snapshot-dir", os.path.join(self.root, "servers"),
                              "--coordinator", self.coordinator])
        self.addresses[i] = self._first_line(p, "listening on", key)[2]

    def start_worker(self, r):
        argv = [os.path.join(HERE, "cluster_worker.py"), "--coordinator", self.coordinator, "--rank", str(r),
                "--workers", str(self.num_workers), "--steps", str(self.steps), "--token", TOKEN,
                "--recovery-timeout", "60"]
        if self.data:
            argv += ["--data", *self.data]
        self._spawn(("worker", r), argv)

    def start(self):
        self.start_coordinator()
        for i in range(self.num_servers):
            self.start_server(i)
        for r in range(self.num_workers):
            self.start_worker(r)

    def kill(self, role, index):
        p = self.procs[(role, index)]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(10)

    def restart(self, role, index):
        {"coordinator": lambda i: self.start_coordinator(), "server": self.start_server,
         "worker": self.start_worker}[role](index)

    def alive(self, role, index):
        return self.procs[(role, index)].poll() is None

    def status(self, timeout=30.0):
        """The coordinator's status (retried while it restarts)."""
        link = protocol.Link(self.coordinator, TOKEN, timeout=5.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return link.request(protocol.STATUS, {})
            except protocol.UNREACHABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_until(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; status {s}; logs:\n{self.logs()}")
            time.sleep(0.02)

    def wait_done(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        for r in range(self.num_workers):
            p = self.procs[("worker", r)]
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"worker {r} did not finish; logs:\n{self.logs()}") from None
            assert p.returncode == 0, f"worker {r} exited {p.returncode}; logs:\n{self.logs()}"
            assert "finished" in out
        p = self.procs[("coordinator", 0)]
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the coordinator did not end; logs:\n{self.logs()}") from None
        assert p.returncode == 0 and "job done" in out, out

    def tables(self, names, ids):
        cluster = sc.connect([self.addresses[i] for i in range(self.num_servers)], token=TOKEN, timeout=30)
        from cluster_worker import TABLE

        out = {}
        for name in names:
            cluster.create_table(name, TABLE, seed=11)
            out[name] = cluster.lookup(name, ids)
        return out

    def final_states(self):
        """Every worker's state in the coordinator's final snapshot."""
        root = os.path.join(self.root, "coordinator")
        manifests = [json.load(open(os.path.join(root, d, "manifest.json")))
                     for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "manifest.json"))]
        final = max(manifests, key=lambda m: m["seq"])
        assert final["final"] and final["step"] == self.steps
        return {w["rank"]: json.load(open(os.path.join(root, final["name"], w["file"]))) for w in final["workers"]}

    def log(self, key):
        n = self.started.get(key, 0)
        path = os.path.join(self.root, "logs", f"{key[0]}-{key[1]}-{n}.log")
        return open(path).read()[-3000:] if os.path.exists(path) else ""

    def logs(self):
        return "\n".join(f"--- {k}:\n{self.log(k)}" for k in sorted(self.started))

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(10)
            if p.stdout:
                p.stdout.close()


def assert_same_tables(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"table {name}")
