"""Attacks on the RPC transport of a real ``sparsecore server`` over loopback: what a peer
can make the server allocate or keep open, before and after it authenticates. Every test is
bounded in count and time, and asserts outcomes (alive, closed, memory and descriptors
bounded, a real client served), never timings."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

import sparsecore as sc
from server_process import FLAG_RESPONSE, METHOD_AUTH, RawPeer, ServerProcess, header, wait_until

TOKEN = "s3cret-token"
MiB = 1 << 20
KINFO = 10  # ps method answered without reading its payload


@pytest.mark.parametrize("token", ["", TOKEN], ids=["no-token", "token"])
def test_oversize_headers_before_auth_allocate_nothing_and_close(token):
    with ServerProcess("--token", token) as server:
        base = server.rss_bytes()
        peers = []
        for i in range(20):
            peer = RawPeer(server.host, server.port)
            # Just under the server's frame limit (256 MiB), no body: a request, an auth
            # request too large for a handshake, and a response.
            method, flags = [(10, 0), (METHOD_AUTH, 0), (10, FLAG_RESPONSE)][i % 3]
            peer.send(header(method, 256 * MiB - 64, flags=flags, request_id=i))
            peers.append(peer)
        closed = [peer.closed_by_server() for peer in peers]
        for peer in peers:
            peer.close()
        assert server.alive()
        assert all(closed), closed
        assert server.rss_bytes() < base + 64 * MiB
        assert server.serves_a_client(token)
        assert server.transport_stats(token)["frames_rejected"] >= 20


def test_response_flagged_frame_before_auth_closes_the_connection():
    with ServerProcess() as server:
        peer = RawPeer(server.host, server.port)
        peer.send(header(10, 1000, flags=FLAG_RESPONSE) + bytes(1000))
        assert peer.closed_by_server()
        peer.close()
        assert server.serves_a_client()


def test_request_other_than_auth_before_auth_closes_the_connection():
    with ServerProcess() as server:
        peer = RawPeer(server.host, server.port)
        peer.send(header(KINFO, 0))
        (_, _, _, _, _, _, status, _), message = peer.read_frame()
        assert status != 0 and b"authenticate" in message
        assert peer.closed_by_server()
        peer.close()


def test_a_few_bytes_then_close_releases_every_descriptor():
    # No handshake timeout: the EOF alone must reclaim each connection.
    with ServerProcess("--handshake-timeout", "0", nofile=256) as server:
        assert server.serves_a_client()
        baseline = server.open_descriptors()
        for _ in range(1500):
            # Once the server has accepted (the hello came), a few bytes of a header and the
            # FIN in one segment (corked until close): one edge for both.
            peer = RawPeer(server.host, server.port, timeout=10)
            peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            peer.send(b"\x53\x43\x52\x50\x01")
            peer.close()
        assert wait_until(lambda: server.open_descriptors() <= baseline)
        assert server.alive()
        assert server.serves_a_client()


def test_descriptor_exhaustion_backs_off_and_recovers():
    nofile = 64
    with ServerProcess(nofile=nofile) as server:
        held = []
        try:
            # Far more connections than the server has descriptors: the rest wait in its
            # backlog while accept() fails with EMFILE.
            for _ in range(3 * nofile):
                held.append(socket.create_connection((server.host, server.port), timeout=20))
            assert wait_until(lambda: server.open_descriptors() >= nofile - 2)
            ticks = server.cpu_ticks()  # for the failure message only
            assert server.alive()
        finally:
            for s in held:
                s.close()
        # Once the flood is gone a real client is served (it may first wait in the backlog).
        assert wait_until(server.serves_a_client_eventually)
        stats = server.transport_stats()
        assert stats["accept_backoffs"] >= 1, (stats, ticks)
        assert stats["connections_accepted"] >= 3 * nofile


def test_handshake_timeout_closes_a_silent_connection():
    with ServerProcess("--handshake-timeout", "0.3") as server:
        peer = RawPeer(server.host, server.port)
        assert peer.closed_by_server()  # silent after the hello: closed by the server
        peer.close()
        assert server.transport_stats()["handshake_timeouts"] >= 1
        assert server.serves_a_client()


def test_idle_timeout_closes_a_silent_authenticated_connection():
    with ServerProcess("--idle-timeout", "0.3") as server:
        peer = RawPeer(server.host, server.port)
        peer.authenticate()
        assert peer.closed_by_server()
        peer.close()
        assert server.transport_stats()["idle_timeouts"] >= 1


def test_pull_whose_reply_exceeds_the_frame_limit_is_refused_before_allocating():
    with ServerProcess() as server:
        base = server.rss_bytes()
        ps = sc.connect([server.endpoint], timeout=30.0)
        ps.create_table("wide", sc.TableConfig(dim=1 << 20, optimizer=sc.SGD(lr=0.1)))
        with pytest.raises(ValueError, match="frame limit"):
            ps.lookup("wide", np.arange(256, dtype=np.int64), insert=True)  # 1 GiB of rows
        assert server.rss_bytes() < base + 64 * MiB
        assert sum(s.get("tables", {}).get("wide", {}).get("rows", 0) for s in ps.stats()) == 0
        assert server.serves_a_client()


def budget_server():
    return ServerProcess(server_kwargs={"memory_budget": 16 * MiB})


def test_payload_over_the_memory_budget_is_refused_and_the_connection_goes_on():
    with budget_server() as server:
        client = sc.rpc.RpcClient(server.host, server.port, timeout_ms=30_000)
        with pytest.raises(sc.RpcError, match="memory budget"):
            client.call(KINFO, bytes(20 * MiB))
        assert client.connected
        assert b"num_servers" in client.call(KINFO, b"")
        assert client.transport_stats()["memory_refusals"] == 1


def test_memory_budget_is_shared_by_every_connection():
    with budget_server() as server:
        # Connection A announces 10 MiB and sends part of it: its frame holds the budget.
        a = RawPeer(server.host, server.port)
        a.authenticate()
        a.send(header(KINFO, 10 * MiB, request_id=7) + bytes(MiB))
        b = sc.rpc.RpcClient(server.host, server.port, timeout_ms=30_000)
        assert wait_until(lambda: b.transport_stats()["memory_reserved_bytes"] > 8 * MiB)
        with pytest.raises(sc.RpcError, match="in use"):
            b.call(KINFO, bytes(10 * MiB))
        # A completes its frame and is answered; the budget is free again for B.
        sender = threading.Thread(target=a.send, args=(bytes(9 * MiB),))
        sender.start()
        (_, _, _, _, request_id, _, status, _), _ = a.read_frame()
        sender.join()
        assert (request_id, status) == (7, 0)
        assert b"num_servers" in b.call(KINFO, bytes(10 * MiB))
        a.close()
        assert wait_until(lambda: b.transport_stats()["memory_reserved_bytes"] == 0)


@pytest.mark.parametrize("kwargs", [{"handshake_timeout": -1}, {"idle_timeout": float("nan")},
                                    {"idle_timeout": 1e9}, {"memory_budget": 1000}])
def test_connection_limits_out_of_range_are_refused(kwargs):
    with pytest.raises(ValueError):
        sc.Server(0, **kwargs)
