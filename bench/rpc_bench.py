"""KV pull/push over loopback: 1000 ids x dim 18 float32 per request, one request in flight,
sparsecore's Python client beside redis-py MGET/MSET, pyzmq REQ/REP and a plain TCP exchange
of the same bytes. Prints keys/s and p50/p99 latency. Peers not installed are skipped.

    python bench/rpc_bench.py --requests 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import threading
import time

import numpy as np

import sparsecore as sc

IDS, DIM = 1000, 18


def measure(fn, requests):
    lat = np.empty(requests)
    for i in range(requests):
        t = time.perf_counter()
        fn()
        lat[i] = time.perf_counter() - t
    return lat


def sparsecore_cases():
    server = sc.Server(port=0, shards=1)
    ps = sc.connect([server.endpoint])
    ps.create_table("kv", sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.01)), seed=1)
    ids = np.random.default_rng(0).integers(0, 10**6, IDS).astype(np.int64)
    grads = np.ones((IDS, DIM), np.float32) * 1e-3
    ps.pull("kv", ids)
    return {"sparsecore pull": lambda: ps.pull("kv", ids), "sparsecore push": lambda: ps.push("kv", ids, grads)}, server.stop


def redis_cases():
    try:
        import redis
    except ImportError:
        return {}, None
    exe = shutil.which("redis-server")
    if not exe:
        return {}, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    keys = [f"k{i}" for i in range(IDS)]
    value = b"\0" * (DIM * 4)
    r.mset({k: value for k in keys})

    def stop():
        proc.terminate()
        proc.wait()
    return {"redis-py MGET": lambda: r.mget(keys), "redis-py MSET": lambda: r.mset({k: value for k in keys})}, stop


def zmq_cases():
    try:
        import zmq
    except ImportError:
        return {}, None
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    reply = b"\0" * (IDS * DIM * 4)
    stop_flag = threading.Event()

    def serve():
        while not stop_flag.is_set():
            if rep.poll(100):
                rep.recv()
                rep.send(reply)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    req = ctx.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{port}")
    payload = b"\0" * (IDS * 8)

    def call():
        req.send(payload)
        req.recv()

    def stop():
        stop_flag.set()
        t.join()
    return {"pyzmq REQ/REP": call}, stop


def tcp_cases():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    reply = b"\0" * (IDS * DIM * 4)
    req_bytes = IDS * 8

    def serve():
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                got = 0
                while got < req_bytes:
                    chunk = conn.recv(req_bytes - got)
                    if not chunk:
                        return
                    got += len(chunk)
                conn.sendall(reply)
        finally:
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    c = socket.create_connection(srv.getsockname())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(len(reply))
    payload = b"\0" * req_bytes

    def call():
        c.sendall(payload)
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            got += c.recv_into(view[got:])
    return {"plain TCP (same bytes)": call}, c.close


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cases, stops = {}, []
    for make in (sparsecore_cases, redis_cases, zmq_cases, tcp_cases):
        c, stop = make()
        if not c:
            print(f"skipped: {make.__name__[:-6]} not installed")
        cases.update(c)
        if stop:
            stops.append(stop)
    results = {}
    for name, fn in cases.items():
        fn()
        runs = [measure(fn, args.requests) for _ in range(args.repeats)]
        med = np.median([np.median(r) for r in runs])
        p99 = np.median([np.percentile(r, 99) for r in runs])
        results[name] = (IDS / med, med * 1e6, p99 * 1e6)
    base = results.get("sparsecore pull", (1,))[0]
    print(f"{'case':28s} {'keys/s':>12s} {'p50 us':>9s} {'p99 us':>9s} {'sparsecore pull / case':>24s}")
    for name, (kps, p50, p99) in results.items():
        print(f"{name:28s} {kps:12.0f} {p50:9.1f} {p99:9.1f} {base / kps:24.2f}")
    for s in stops:
        s()


if __name__ == "__main__":
    main()
