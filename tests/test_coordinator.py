"""The coordinator as a process: what it refuses (wrong token, oversized frames, unknown
members, malformed or lying requests), its "not ready" state and bounded waits, the
generation kept across restarts, snapshots by time, and its command line."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.cluster import Coordinator, ServerMember, Worker
from sparsecore.cluster import protocol as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_harness import CLI, TOKEN, env  # noqa: E402


@pytest.fixture
def coordinator(tmp_path):
    """A `sparsecore coordinator` process (1 server, 2 workers, token), its address."""
    p = subprocess.Popen([sys.executable, "-c", CLI, "coordinator", "--servers", "1", "--workers", "2",
                          "--snapshot-dir", str(tmp_path / "coord"), "--max-state-bytes", str(1 << 16),
                          "--heartbeat", "0.2", "--member-timeout", "5"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env(), text=True)
    line = p.stdout.readline()
    assert line.startswith("coordinator on"), line
    yield line.split()[2]
    p.kill()
    p.wait(10)
    p.stdout.close()


def link(address, token=TOKEN):
    return P.Link(address, token, timeout=5.0)


def hello(rank=0, incarnation="a1", role="worker"):
    return {"role": role, "rank": rank, "incarnation": incarnation}


def test_a_wrong_token_is_refused(coordinator):
    with pytest.raises(sc.RpcAuthError):
        link(coordinator, "not-the-token").request(P.STATUS, {})
    assert link(coordinator).request(P.STATUS, {})["phase"] == "waiting"


def test_an_oversized_frame_is_refused_and_others_are_served(coordinator):
    other = link(coordinator)
    other.request(P.REGISTER, hello())
    with pytest.raises(sc.RpcError):
        link(coordinator).call(P.SNAPSHOT_STATE, b"\0" * (2 << 20))
    assert other.request(P.HEARTBEAT, hello())["generation"] >= 1


def test_an_unknown_member_is_refused(coordinator):
    c = link(coordinator)
    for method in (P.HEARTBEAT, P.BOUNDARY, P.FAILED, P.FETCH_STATE):
        with pytest.raises(KeyError, match="unknown member"):
            c.request(method, dict(hello(1, "never-registered"), generation=1, step=0, final=False, name="x"))
    c.request(P.REGISTER, hello(1, "first"))
    with pytest.raises(KeyError, match="unknown member"):  # another incarnation of the same rank
        c.request(P.HEARTBEAT, hello(1, "second"))


@pytest.mark.parametrize("payload, match", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"role": "worker", "incarnation": "x"}', "lacks 'rank'"),
    (b'{"role": "worker", "rank": "0", "incarnation": "x"}', "integer"),
    (b'{"role": "worker", "rank": true, "incarnation": "x"}', "integer"),
    (b'{"role": "worker", "rank": 2, "incarnation": "x"}', "outside"),
    (b'{"role": "worker", "rank": -1, "incarnation": "x"}', "outside"),
    (b'{"role": "scheduler", "rank": 0, "incarnation": "x"}', "role"),
    (b'{"role": "worker", "rank": 0, "incarnation": ""}', "incarnation"),
    (b'{"role": "server", "rank": 0, "incarnation": "x", "num_servers": 2, "snapshots": true, "address": "h:1"}',
     "--num-servers 2"),
    (b'{"role": "server", "rank": 0, "incarnation": "x", "num_servers": 1, "snapshots": false, "address": "h:1"}',
     "snapshot-dir"),
    (b'{"role": "server", "rank": 0, "incarnation": "x", "num_servers": 1, "snapshots": true, "address": "nope"}',
     "host:port"),
    (b'{"role": "server", "rank": 0, "incarnation": "x", "num_servers": 1, "snapshots": true, "address": "'
     + b"h" * 5000 + b':1"}', "host:port"),
    (b'{"role": "worker", "rank": 0, "incarnation": "' + b"x" * 65 + b'"}', "incarnation"),
])
def test_a_malformed_registration_is_refused_with_what_was_wrong(coordinator, payload, match):
    with pytest.raises(ValueError, match=match):
        link(coordinator).call(P.REGISTER, payload)
    assert link(coordinator).request(P.STATUS, {})["workers"] == {}


def test_requests_that_lie_about_the_job_are_refused(coordinator):
    c = link(coordinator)
    c.request(P.REGISTER, hello())
    header = dict(hello(), generation=1, step=0, encoding="json")
    with pytest.raises(ValueError, match="no snapshot is pending"):
        c.call(P.SNAPSHOT_STATE, P.pack_with_state(header, b"{}"))
    with pytest.raises(ValueError, match="header length"):
        c.call(P.SNAPSHOT_STATE, (10**6).to_bytes(4, "little") + b"{}")
    with pytest.raises(ValueError, match="encoding"):
        c.call(P.SNAPSHOT_STATE, P.pack_with_state(dict(header, encoding="pickle"), b"x"))
    with pytest.raises(ValueError, match="not the one"):
        c.request(P.FETCH_STATE, dict(hello(), name="../../etc"))
    with pytest.raises(ValueError, match="step"):
        c.request(P.BOUNDARY, dict(hello(), generation=1, step=-3, final=False))
    # the cluster is not ready (server 0 and worker 1 are missing): a step is refused
    assert c.request(P.BOUNDARY, dict(hello(), generation=1, step=0, final=False))["action"] == "recover"


def test_a_worker_waits_for_missing_members_with_a_deadline(coordinator):
    status = link(coordinator).request(P.STATUS, {})
    assert status["phase"] == "waiting" and "server 0" in status["why"]
    worker = Worker(coordinator, 0, token=TOKEN, recovery_timeout=0.5)
    with pytest.raises(sc.RpcTimeoutError, match="ready"):
        worker.run(lambda cluster: None, steps=1)


def test_a_worker_without_a_coordinator_gives_up_at_its_deadline():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sc.RpcTimeoutError, match="registering"):
        Worker(f"127.0.0.1:{port}", 0, recovery_timeout=0.3, timeout=0.2).run(lambda cluster: None, steps=1)


def test_a_server_without_a_snapshot_dir_is_refused_by_the_coordinator(coordinator):
    done = subprocess.run([sys.executable, "-c", CLI, "server", "--coordinator", coordinator],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 2 and "refused" in done.stderr and "snapshot-dir" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--servers", "0", "--workers", "1"], "num_servers"),
    (["--servers", "1", "--workers", "1", "--mode", "bounded"], "invalid choice"),
    (["--servers", "1", "--workers", "1", "--mode", "async", "--staleness", "2"], "only with mode 'ssp'"),
    (["--servers", "1", "--workers", "1", "--mode", "ssp", "--staleness", "-1"], "staleness must be"),
    (["--servers", "1", "--workers", "1", "--heartbeat", "5", "--member-timeout", "2"], "heartbeat"),
    (["--servers", "1", "--workers", "1", "--port", "70000"], "--port"),
])
def test_the_command_line_refuses_bad_arguments(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-c", CLI, "coordinator", "--snapshot-dir", str(tmp_path), *args],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 2 and message in done.stderr


class CountingJob:
    """Two tables' worth of nothing: a step pushes one row; the state is the step count."""

    def __init__(self, cluster, rank):
        self.cluster, self.rank, self.steps = cluster, rank, 0
        cluster.create_table("t", sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0)), seed=1)

    def step(self, step):
        ids = np.array([self.rank, 10 + step], np.int64)
        self.cluster.push("t", ids, np.ones((2, 2), np.float32), step=step)
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class SlowJob(CountingJob):
    def step(self, step):
        time.sleep(0.01)
        super().step(step)


class FailingJob(CountingJob):
    def step(self, step):
        if step == 2:
            raise ZeroDivisionError("a bug in the training code")
        super().step(step)


def run_in_process(tmp_path, steps, job=CountingJob, workers=2, errors=None, worker_args=None, **coordinator_args):
    """A coordinator, one server and worker threads in this process; the coordinator's final
    status. Errors of the workers go to ``errors`` when given, else fail the test.
    ``worker_args``: more keyword arguments of each Worker."""
    coord = Coordinator(num_servers=1, num_workers=workers, snapshot_dir=str(tmp_path / "coord"), heartbeat=0.1,
                        member_timeout=5.0, **coordinator_args).start()
    server = sc.Server(port=0, snapshot_dir=str(tmp_path / "servers"))
    member = ServerMember(coord.endpoint, server_index=0, num_servers=1, address=server.endpoint).start()
    failed = [] if errors is None else errors

    def work(rank):
        try:
            Worker(coord.endpoint, rank, recovery_timeout=30, **(worker_args or {})).run(lambda c: job(c, rank),
                                                                                       steps=steps)
        except Exception as e:  # reported below
            failed.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        if errors is None:
            assert not failed
            assert coord.wait(10)
        return coord.status()
    finally:
        member.stop()
        coord.stop()
        server.stop()


def manifests(root):
    return sorted((json.load(open(os.path.join(root, d, "manifest.json"))) for d in os.listdir(root)
                   if os.path.isfile(os.path.join(root, d, "manifest.json"))), key=lambda m: m["seq"])


def test_snapshots_are_taken_at_the_first_step_every_k_steps_and_at_the_end(tmp_path):
    status = run_in_process(tmp_path, 7, snapshot_every_steps=3, keep=10)
    assert status["phase"] == "done" and status["snapshot_step"] == 7
    found = manifests(str(tmp_path / "coord"))
    assert [m["step"] for m in found] == [0, 3, 6, 7]
    assert found[-1]["final"] and [w["rank"] for w in found[-1]["workers"]] == [0, 1]
    assert json.load(open(tmp_path / "coord" / found[-1]["name"] / "worker-1.state")) == {"steps": 7}
    assert os.path.isdir(tmp_path / "servers" / found[-1]["name"])  # the servers' part, same name


def test_only_the_newest_snapshots_are_kept(tmp_path):
    run_in_process(tmp_path, 6, snapshot_every_steps=1, keep=2)
    kept = manifests(str(tmp_path / "coord"))
    assert [m["step"] for m in kept] == [5, 6]
    # The servers keep the same ones, and nothing hidden is left behind.
    assert sorted(os.listdir(tmp_path / "servers")) == [m["name"] for m in kept]


def test_a_restarted_coordinator_continues_the_generation_count_and_knows_the_job_is_done(tmp_path):
    run_in_process(tmp_path, 2)
    again = Coordinator(num_servers=1, num_workers=2, snapshot_dir=str(tmp_path / "coord"), heartbeat=0.1,
                        member_timeout=0.5)
    try:
        status = again.status()
        assert status["phase"] == "done" and status["generation"] >= 2 and status["snapshot_step"] == 2
    finally:
        again.stop()


def test_a_coordinator_refuses_bad_arguments(tmp_path):
    for kwargs, match in [({"num_servers": 0}, "num_servers"), ({"mode": "bounded"}, "mode"),
                          ({"mode": "async", "staleness": 2}, "only with mode 'ssp'"),
                          ({"heartbeat": 3.0, "member_timeout": 1.0}, "heartbeat"), ({"keep": 0}, "keep")]:
        args = {"num_servers": 1, "num_workers": 1, "snapshot_dir": str(tmp_path / "c"), **kwargs}
        with pytest.raises(ValueError, match=match):
            Coordinator(**args)


def test_asynchronous_workers_meet_at_the_same_barrier_steps(tmp_path):
    run_in_process(tmp_path, 6, mode="async", snapshot_every_steps=2, keep=10)
    found = manifests(str(tmp_path / "coord"))
    assert [m["step"] for m in found] == [0, 2, 4, 6] and {m["mode"] for m in found} == {"async"}
    for m in found:
        for w in m["workers"]:
            assert json.load(open(tmp_path / "coord" / m["name"] / w["file"])) == {"steps": m["step"]}


def test_snapshots_by_time_stop_every_worker_at_the_same_step(tmp_path):
    # 30 steps of at least 10 ms each: a snapshot falls due at least once before the end
    run_in_process(tmp_path, 30, job=SlowJob, snapshot_every_seconds=0.05, keep=100)
    found = manifests(str(tmp_path / "coord"))
    assert found[0]["step"] == 0 and found[-1]["step"] == 30 and len(found) >= 3
    for m in found:
        for w in m["workers"]:
            assert json.load(open(tmp_path / "coord" / m["name"] / w["file"])) == {"steps": m["step"]}


def test_an_error_of_the_training_code_propagates_instead_of_rolling_back(tmp_path):
    errors = []
    run_in_process(tmp_path, 5, job=FailingJob, workers=1, errors=errors)
    assert [type(e) for e in errors] == [ZeroDivisionError]


def test_a_worker_rolling_back_ends_its_connections_so_the_others_do_not_wait_out_their_deadline(tmp_path, caplog):
    # Worker 0 loses a server at step 3 (raised here as a lost connection would be) while worker
    # 1's synchronous push of step 3 waits for it on the server. Every job is kept alive, as a
    # trainer job outlives its generation: only the roll-back itself may end worker 0's
    # connections. Until they end, the server counts worker 0 present and holds worker 1's push.
    kept, lost, pushing = [], threading.Event(), threading.Event()

    class LinkLostJob(CountingJob):
        def __init__(self, cluster, rank):
            super().__init__(cluster, rank)
            kept.append(self)

        def step(self, step):
            if step == 3 and not lost.is_set():
                if self.rank == 1:
                    pushing.set()
                else:
                    assert pushing.wait(30)
                    time.sleep(0.2)  # worker 1's push reaches the server
                    lost.set()
                    raise sc.RpcConnectionError("connection to a server lost")
            super().step(step)

    caplog.set_level("WARNING", logger="sparsecore.cluster")
    status = run_in_process(tmp_path, 6, job=LinkLostJob, worker_args={"timeout": 20}, snapshot_every_steps=2)
    assert status["phase"] == "done" and lost.is_set()
    rollbacks = [r.getMessage() for r in caplog.records if "rolling back" in r.getMessage()]
    assert any(m.startswith("worker 0") for m in rollbacks)
    assert not any("RpcTimeoutError" in m for m in rollbacks), rollbacks
    with pytest.raises(sc.RpcConnectionError):  # the first generation's connections of worker 0 ended
        next(j for j in kept if j.rank == 0).cluster.lookup("t", np.array([0], np.int64))


class HugeStateJob(CountingJob):
    def state_dict(self):
        return b"x" * (1 << 17)


def test_a_state_over_the_coordinators_limit_is_refused_naming_the_limit(tmp_path):
    errors = []
    run_in_process(tmp_path, 2, job=HugeStateJob, workers=1, errors=errors, max_state_bytes=1 << 16)
    assert [type(e) for e in errors] == [ValueError] and "--max-state-bytes 65536" in str(errors[0])


def test_a_server_that_heartbeats_but_does_not_answer_on_its_port_is_dead(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    coord = Coordinator(num_servers=1, num_workers=1, snapshot_dir=str(tmp_path / "c"), heartbeat=0.05,
                        member_timeout=0.5).start()
    try:
        c = link(coord.endpoint, "")
        server = hello(0, "s1", "server")
        c.request(P.REGISTER, dict(server, address=f"127.0.0.1:{port}", num_servers=1, snapshots=True))
        deadline = time.monotonic() + 30
        with pytest.raises(KeyError, match="unknown member"):
            while time.monotonic() < deadline:  # its heartbeats keep coming; its port never answers
                c.request(P.HEARTBEAT, server)
                time.sleep(0.02)
        assert coord.status()["servers"] == {}
    finally:
        coord.stop()


def test_a_worker_of_another_mode_is_refused_and_the_coordinators_mode_is_what_workers_read(tmp_path):
    coordinator = Coordinator(num_servers=1, num_workers=1, snapshot_dir=str(tmp_path / "c"), mode="ssp",
                              staleness=2, heartbeat=0.1, member_timeout=0.5).start()
    try:
        status = coordinator.status()
        assert (status["mode"], status["staleness"]) == ("ssp", 2)
        for mode, staleness in [("sync", None), ("async", None), ("ssp", 3)]:
            worker = Worker(coordinator.endpoint, 0, mode=mode, staleness=staleness, recovery_timeout=5, timeout=2)
            with pytest.raises(ValueError, match=r"mode .* the coordinator .* runs mode 'ssp' \(staleness 2\)"):
                worker.run(lambda cluster: None, steps=1)
        # ssp with no step ahead is sync, on both sides.
        plain = Coordinator(num_servers=1, num_workers=1, snapshot_dir=str(tmp_path / "d"), mode="ssp")
        assert plain.mode == "sync"
        plain.stop()
    finally:
        coordinator.stop()
