"""Ray: ``sparsecore.ray`` on a local Ray cluster (loopback, no dashboard) runs a small job with
a coordinator actor, two server actors and two worker actors to the end; with a server actor
killed (SIGKILL) mid-run, Ray restarts it, it registers with the coordinator again, the
coordinator rolls every member back to the newest snapshot (the workers in their actors), and
the job ends with the uninterrupted run's tables and dense model, bit for bit. Skipped
(visibly) without ray: pip install 'sparsecore[ray]'."""

import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'sparsecore[ray]'")
torch = pytest.importorskip("torch")

import sparsecore.ray as scray  # noqa: E402
from sparsecore import cli  # noqa: E402

from test_launch_torchrun import assert_same_coordinated_state, coordinated_state, job_config  # noqa: E402
from test_ps import PYTHON_DIR  # noqa: E402

STEPS = 60


def job_flags(tmp_path):
    return ["--config", job_config(tmp_path), "--steps", STEPS, "--batch-size", 32, "--vocab-size", 300,
            "--dim", 4, "--hidden", 8, "--eval-samples", 500, "--log-every", 0]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": PYTHON_DIR, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def job(tmp_path, name, token="t0ken"):
    return scray.Job(job_flags(tmp_path), num_servers=2, num_workers=2, shards=1, snapshot_dir=str(tmp_path / name),
                     snapshot_every=20, max_failures=1, token=token, address="127.0.0.1", timeout=60, quiet=True,
                     member_timeout=3.0)


def test_ray_job_survives_a_killed_server_actor(tmp_path, local_ray):
    reference = job(tmp_path, "reference")
    try:
        reference.start_servers()
        want = reference.run()
        assert [r["step"] for r in want] == [STEPS, STEPS] and [r["recoveries"] for r in want] == [0, 0]
        want_state = coordinated_state(reference.endpoints(), "t0ken")
    finally:
        reference.shutdown()

    interrupted = job(tmp_path, "snapshots")
    killed = []

    def kill_server_mid_run(pid):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (ray.get(interrupted.coordinator.status.remote()).get("snapshot_step") or 0) >= 20:
                break
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    try:
        interrupted.start_servers()
        pid = ray.get(interrupted.servers[1].pid.remote(), timeout=60)
        killer = threading.Thread(target=kill_server_mid_run, args=(pid,), daemon=True)
        killer.start()
        got = interrupted.run()
        killer.join(60)
        assert killed and interrupted.failures == 0  # no worker actor was replaced
        assert ray.get(interrupted.servers[1].pid.remote()) != pid  # Ray restarted the actor
        assert [r["step"] for r in got] == [STEPS, STEPS]
        assert all(r["recoveries"] >= 1 for r in got)  # both workers rolled back in their actors
        assert got[0]["eval"] == want[0]["eval"]
        assert_same_coordinated_state(coordinated_state(interrupted.endpoints(), "t0ken"), want_state)
    finally:
        interrupted.shutdown()


@pytest.mark.parametrize("flags, options, message", [
    (["--servers", "a:1", "--steps", "5"], {}, "the job names --servers"),
    (["--data-format", "criteo", "--train-data", "x"], {}, "needs --steps"),
    (["--steps", "5"], {"num_workers": 0}, "num_workers must be an integer >= 1"),
    (["--steps", "5"], {"snapshot_dir": ""}, "snapshot_dir is required"),
    (["--steps", "5"], {"max_failures": -1}, "max_failures must be >= 0"),
    (["--no-such-flag"], {}, "cannot read the job's flags"),
])
def test_jobs_that_cannot_work_are_refused_before_anything_starts(flags, options, message):
    with pytest.raises((cli.ConfigError, ValueError), match=message):
        scray.Job(flags, **{"snapshot_dir": "snaps", **options})


def test_a_setting_that_fails_in_the_workers_is_not_retried(tmp_path, local_ray):
    runner = scray.Job(["--steps", "2", "--sparse-optimizer", "nope"], num_servers=1, num_workers=1,
                       snapshot_dir=str(tmp_path / "snaps"), address="127.0.0.1", timeout=60, max_failures=3)
    try:
        runner.start_servers()
        with pytest.raises(ray.exceptions.RayTaskError, match="unknown name 'nope'"):
            runner.run()
        assert runner.failures == 0
    finally:
        runner.shutdown()
