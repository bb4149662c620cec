"""Hand-made multi-table requests (kPullTables, kPushTables) sent to a real server process:
a truncated or padded payload, counts that lie, too many tables, a repeated id, a NaN, a name
that is not a table. Each gets an error reply; the connection and the server keep serving and
no table changes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import sparsecore as sc
from server_process import RawPeer, ServerProcess, header

PULL_TABLES, PUSH_TABLES = 23, 24
TABLES_HEADER = struct.Struct("<IIqII")  # num_tables, flags, step, worker, num_workers
TABLE_ENTRY = struct.Struct("<IIQ")      # name_bytes, reserved, num_ids
DIM = 4
CFG = sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.5))


def request(tables, *, num_tables=None, grads=True, counts=None, flags=1):
    """tables: [(name, ids)]; counts overrides what the entries say."""
    out = TABLES_HEADER.pack(len(tables) if num_tables is None else num_tables, flags, 0, 0, 0)
    for i, (name, ids) in enumerate(tables):
        out += TABLE_ENTRY.pack(len(name.encode()), 0, len(ids) if counts is None else counts[i])
    for name, _ in tables:
        raw = name.encode()
        out += raw + bytes(-len(raw) % 8)
    for _, ids in tables:
        out += np.asarray(ids, np.int64).tobytes()
    if grads:
        for _, ids in tables:
            out += np.ones((len(ids), DIM), np.float32).tobytes()
    return out


def ask(peer, method, payload, request_id):
    peer.send(header(method, len(payload), request_id=request_id) + payload)
    (_, _, _, _, rid, _, status, _), message = peer.read_frame()
    assert rid == request_id
    return status, message


GOOD = [("t", [1, 2, 3]), ("u", [7, 8])]
BAD = {
    "truncated": (PUSH_TABLES, request(GOOD)[:-5]),
    "padded": (PUSH_TABLES, request(GOOD) + bytes(8)),
    "lying id count": (PUSH_TABLES, request(GOOD, counts=[4, 2])),
    "huge id count": (PUSH_TABLES, request(GOOD, counts=[2**62, 2])),
    "lying table count": (PUSH_TABLES, request(GOOD, num_tables=3)),
    "no table": (PUSH_TABLES, request([])),
    "too many tables": (PUSH_TABLES, request([("t", [])] * 1025)),
    "huge table count": (PULL_TABLES, request(GOOD, num_tables=2**31, grads=False)),
    "repeated id": (PUSH_TABLES, request([("t", [1, 2, 1]), ("u", [7, 8])])),
    "table twice": (PUSH_TABLES, request([("t", [1]), ("t", [2])])),
    "not a table": (PUSH_TABLES, request([("t", [1, 2, 3]), ("nope", [7])])),
    "pull not a table": (PULL_TABLES, request([("t", [1]), ("nope", [7])], grads=False)),
    "pull with gradients": (PULL_TABLES, request(GOOD)),
    "header only": (PUSH_TABLES, TABLES_HEADER.pack(2, 0, 0, 0, 0)),
}


def nan_push():
    payload = bytearray(request(GOOD))
    struct.pack_into("<f", payload, len(payload) - 4, float("nan"))  # the last gradient of table u
    return bytes(payload)


@pytest.mark.parametrize("shards", [1, 2])
def test_hostile_multi_table_requests_are_refused_and_change_nothing(shards):
    with ServerProcess("--shards", shards) as server:
        ps = sc.connect([server.endpoint], timeout=30.0)
        for name in ("t", "u"):
            ps.create_table(name, CFG, seed=3)
        ids = np.arange(1, 9, dtype=np.int64)
        before = {name: ps.lookup(name, ids, insert=True) for name in ("t", "u")}
        rows_before = [s["tables"] for s in ps.stats()]
        peer = RawPeer(server.host, server.port)
        peer.authenticate()
        cases = dict(BAD, nan=(PUSH_TABLES, nan_push()))
        for i, (what, (method, payload)) in enumerate(cases.items()):
            status, message = ask(peer, method, payload, 100 + i)
            assert status != 0, f"{what}: accepted"
            assert message, what
        assert server.alive()
        for name in ("t", "u"):
            np.testing.assert_array_equal(ps.lookup(name, ids), before[name])
        assert [s["tables"] for s in ps.stats()] == rows_before
        if shards == 1:  # the same connection still serves, and a well-made request applies
            status, rows = ask(peer, PULL_TABLES, request(GOOD, grads=False), 998)
            assert status == 0
            want = np.concatenate([ps.lookup("t", [1, 2, 3]), ps.lookup("u", [7, 8])])
            np.testing.assert_array_equal(np.frombuffer(rows, np.float32).reshape(5, DIM), want)
            status, _ = ask(peer, PUSH_TABLES, request(GOOD), 999)
            assert status == 0
            np.testing.assert_array_equal(ps.lookup("u", [7, 8]), want[3:] - 0.5)
        peer.close()
        assert server.serves_a_client()


def test_ids_that_another_shard_owns_are_refused_and_create_no_row():
    """A server that is shard 0 of a 2-server cluster refuses pulls and pushes naming ids that
    shard 1 owns (a client with another view of the cluster, or a forged request): such a row
    would never be found again by a lookup routed by the cluster's layout."""
    import json

    from sparsecore.config import tables_to_json

    with ServerProcess("--server-index", 0, "--num-servers", 2) as server:
        peer = RawPeer(server.host, server.port)
        peer.authenticate()
        table = json.loads(tables_to_json({"t": CFG}))[0]
        status, message = ask(peer, 11, json.dumps({"table": table, "seed": 3}).encode(), 1)
        assert status == 0, message
        status, message = ask(peer, PULL_TABLES, request([("t", list(range(64)))], grads=False), 2)
        assert status != 0 and b"belongs to shard 1 of 2" in message
        status, message = ask(peer, PUSH_TABLES, request([("t", list(range(64)))]), 3)
        assert status != 0 and b"belongs to shard 1 of 2" in message
        owned, foreign = [], []
        for k in range(64):  # one id at a time: each is owned by exactly one of the two shards
            status, _ = ask(peer, PULL_TABLES, request([("t", [k])], grads=False), 10 + k)
            (owned if status == 0 else foreign).append(k)
            single = struct.pack("<IIQqII", 1, 1, 1, 0, 0, 0) + b"t" + bytes(7) + struct.pack("<q", k)
            status, _ = ask(peer, 12, single, 100 + k)  # the single-table pull checks the same
            assert (status == 0) == (k in owned), k
        assert owned and foreign
        status, stats = ask(peer, 16, b"{}", 999)
        assert status == 0
        assert json.loads(stats)["tables"]["t"]["rows"] == len(owned)
        peer.close()
        assert server.alive()
