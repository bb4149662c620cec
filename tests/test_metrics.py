"""``sparsecore server --metrics-port``: Prometheus text over HTTP/1.1, scraped with real HTTP
clients from a real server process, and the endpoint's defences (malformed requests,
oversized heads, slow and silent clients, the connection limit)."""

import http.client
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import sparsecore as sc
from test_ps import _env, stop

TABLE = "user\"s\\table"  # a name that must be escaped in a label value


def start_server(metrics_timeout):
    p = subprocess.Popen([sys.executable, "-c", "import sys; from sparsecore.server import main; "
                          "sys.exit(main(sys.argv[1:]))", "--shards", "2", "--metrics-port", "0",
                          "--metrics-timeout", str(metrics_timeout)], stdout=subprocess.PIPE, env=_env(), text=True)
    first, second = p.stdout.readline(), p.stdout.readline()
    if not first.startswith("listening on"):
        stop(p)
        raise AssertionError(first)
    match = re.fullmatch(r"metrics on http://127\.0\.0\.1:(\d+)/metrics\n", second)
    if not match:
        stop(p)
        raise AssertionError(second)
    return p, first.split()[2], int(match.group(1))


@pytest.fixture
def server():
    """A real ``sparsecore server`` with 2 shards and a metrics endpoint whose deadline is
    short, so that dropping a silent client does not make the test wait long."""
    p, endpoint, port = start_server(0.5)
    try:
        yield p, endpoint, port
    finally:
        stop(p)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def parse_exposition(text):
    """{(name, labels): value} of the Prometheus text format, checking that every family has
    HELP and TYPE lines before its samples."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge")
            typed.add(name)
            continue
        m = re.fullmatch(r'([a-z_]+)(\{(.*)\})? (-?\d+)', line)
        assert m, line
        assert m.group(1) in typed, f"{m.group(1)} has no TYPE line"
        samples[(m.group(1), m.group(3) or "")] = int(m.group(4))
    return samples


def test_scrape_reports_tables_rpc_counters_and_memory(server):
    proc, endpoint, port = server
    cluster = sc.connect([endpoint])
    cfg = sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1), admission=sc.Admission(count_threshold=2))
    cluster.create_table(TABLE, cfg, seed=1)
    ids = np.arange(0, 300, dtype=np.int64)
    for _ in range(2):
        cluster.lookup(TABLE, ids, insert=True)
    cluster.push(TABLE, ids, np.ones((ids.size, 4), np.float32))
    host, rpc_port = endpoint.rsplit(":", 1)
    raw_client = sc.rpc.RpcClient(host, int(rpc_port))
    with pytest.raises(sc.RpcUnknownMethodError):
        raw_client.call(999, b"")  # answered with an error status
    stats = cluster.stats()

    m = parse_exposition(scrape(port))
    label = 'table="user\\"s\\\\table",shard="{}"'
    for shard, s in enumerate(stats):
        t = s["tables"][TABLE]
        assert m[("sparsecore_table_rows", label.format(shard))] == t["rows"] > 0
        assert m[("sparsecore_table_bytes", label.format(shard))] == t["bytes"] > 0
        for key in ("admitted", "rejected", "dropped_gradients"):
            assert m[(f"sparsecore_table_{key}_total", label.format(shard))] == t[key]
        assert m[("sparsecore_table_pending", label.format(shard))] == t["pending"]
        assert m[("sparsecore_shard_up", f'shard="{shard}"')] == 1
        assert m[("sparsecore_shard_pull_requests_total", f'shard="{shard}"')] == s["pull_requests"]
    assert sum(m[("sparsecore_table_rows", label.format(i))] for i in range(2)) == 300
    assert m[("sparsecore_rpc_requests_total", "")] > 0
    assert m[("sparsecore_rpc_errors_total", "")] >= 1  # the unknown method
    assert m[("sparsecore_rpc_received_bytes_total", "")] > 300 * 8
    assert m[("sparsecore_rpc_sent_bytes_total", "")] > 300 * 4 * 4
    assert m[("sparsecore_rpc_connections_open", "")] >= 1
    with open(f"/proc/{proc.pid}/status") as f:
        assert any(line.startswith("VmRSS:") for line in f)
    assert m[("process_resident_memory_bytes", "")] > 1 << 20
    assert m[("process_open_fds", "")] > 0


def test_other_paths_and_methods_are_refused(server):
    _, _, port = server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
    assert e.value.code == 404
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/metrics", body=b"")
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "GET"
    r.read()
    conn.request("GET", "/metrics?x=1")  # keep-alive: the same connection serves on
    r = conn.getresponse()
    assert r.status == 200 and b"sparsecore_rpc_requests_total" in r.read()
    conn.close()


def raw(port, data, timeout=30):
    """Sends `data` on a fresh connection and returns everything the server sends until it
    closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


MALFORMED = {
    "bare-lf": (b"GET /metrics HTTP/1.1\n\n", 400),
    "no-host": (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "http-3": (b"GET /metrics HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    "chunked": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    "body": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413),  # GET has none
    "huge-header": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "huge-target": (b"GET /" + b"m" * 9000 + b" HTTP/1.1\r\n", 431),  # refused before the head ends
}


@pytest.mark.parametrize("request_bytes, status", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_and_oversized_requests_get_their_status_and_a_close(server, request_bytes, status):
    _, _, port = server
    reply = raw(port, request_bytes)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert b"Connection: close" in reply
    assert "sparsecore_rpc_requests_total" in scrape(port)  # still serving


def test_silent_and_slow_clients_are_dropped_at_the_deadline(server):
    _, _, port = server
    assert raw(port, b"") == b""  # sends nothing: closed without an answer
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metr")
        for piece in (b"ics HTTP/1.1\r\n", b"Host: x\r\n"):  # too slow to finish in time
            time.sleep(0.3)
            try:
                s.sendall(piece)
            except OSError:
                break
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        assert b"200 OK" not in out
    m = parse_exposition(scrape(port))
    assert m[("sparsecore_metrics_timeouts_total", "")] >= 2


def test_every_connection_is_reclaimed_and_the_limit_holds():
    """70 clients at once against a limit of 64 (and a deadline long enough that none is
    dropped meanwhile): 6 are answered 503; once all close, the server holds no connection
    and no descriptor more than before."""
    proc, _, port = start_server(60)
    try:
        def open_fds():
            return len(os.listdir(f"/proc/{proc.pid}/fd"))

        scrape(port)
        before = open_fds()
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(70)]
        refused, waiting = 0, list(held)
        deadline = time.monotonic() + 60  # a bound on the test, not a measurement
        while refused < 70 - 64 and time.monotonic() < deadline:
            ready, _, _ = select.select(waiting, [], [], 1.0)
            for s in ready:
                reply = s.recv(4096)
                assert reply.startswith(b"HTTP/1.1 503 ") or reply == b"", reply
                refused += reply.startswith(b"HTTP/1.1 503 ")
                waiting.remove(s)
        assert refused == 70 - 64
        for s in held:
            s.close()
        m = {}
        for _ in range(500):  # bounded wait for the server to see every close
            try:
                m = parse_exposition(scrape(port))
            except urllib.error.HTTPError as e:  # 503 while the closes are still on their way
                assert e.code == 503
                time.sleep(0.02)
                continue
            if m[("sparsecore_metrics_connections_open", "")] == 1 and open_fds() <= before:
                break
            time.sleep(0.02)
        assert m[("sparsecore_metrics_connections_open", "")] == 1  # the scrape itself
        assert m[("sparsecore_metrics_connections_refused_total", "")] >= 6
        assert open_fds() <= before
    finally:
        stop(proc)


def test_embedded_server_renders_the_same_families():
    server = sc.Server(shards=2)
    client = server.client()
    client.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=0.1)))
    client.lookup("t", np.arange(10, dtype=np.int64), insert=True)
    m = parse_exposition(server.metrics())
    assert m[("sparsecore_table_rows", 'table="t",shard="0"')] + m[("sparsecore_table_rows", 'table="t",shard="1"')] == 10
    with pytest.raises(ValueError, match="listening"):
        sc.Server(metrics_port=0)


def test_metrics_flags_are_checked():
    for args, message in [(["--metrics-port", "70000"], "--metrics-port"), (["--metrics-timeout", "0"],
                                                                              "--metrics-timeout")]:
        p = subprocess.run([sys.executable, "-c", "import sys; from sparsecore.server import main; "
                            "sys.exit(main(sys.argv[1:]))", *args], capture_output=True, text=True, env=_env(),
                           timeout=60)
        assert p.returncode == 2 and message in p.stderr, p.stderr


def test_a_request_sent_before_a_half_close_is_answered(server):
    _, _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)  # as `curl --http1.1 -N` or a shell script may do
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert len(body) == length and b"process_resident_memory_bytes" in body


def test_a_metrics_port_in_use_is_an_error_naming_it(server):
    _, endpoint, _ = server
    busy = endpoint.rsplit(":", 1)[1]  # the first server's RPC port
    p = subprocess.run([sys.executable, "-c", "import sys; from sparsecore.server import main; "
                        "sys.exit(main(sys.argv[1:]))", "--metrics-port", busy], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert p.returncode == 1 and busy in p.stderr, p.stderr
