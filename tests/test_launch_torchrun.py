"""torchrun: ``python -m sparsecore.launch`` under ``torchrun --standalone --nproc-per-node 2``
trains a small job against two ``sparsecore server`` processes to the end; with a worker killed
(SIGKILL) mid-run, and later a server killed and started again, torchrun restarts the group
(--max-restarts) each time, every worker rolls back to the newest snapshot, and the job ends
with the tables and dense model of the uninterrupted run, bit for bit. The same job with a
coordinator ($SPARSECORE_COORDINATOR, servers registered with it) survives a killed worker: the
coordinator rolls the restarted group back to its newest snapshot and the job ends with the
uninterrupted coordinated run's tables and server-side dense model, bit for bit. The training
loop of docs/launch.md runs under torchrun as written."""

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import sparsecore as sc

torch = pytest.importorskip("torch")

from test_ps import _env, start_server_process, stop  # noqa: E402

STEPS = 120
JOB = ["--steps", STEPS, "--snapshot-every", 20, "--batch-size", 32, "--vocab-size", 300, "--dim", 4,
       "--hidden", 8, "--eval-samples", 500, "--log-every", 10, "--timeout", 60, "--connect-wait", 60]
GROUPS = ["f0", "f12", "f22"]  # of the synthetic W2 job's 23 (fewer tables: shorter snapshots)


def start_servers(snapshots):
    return [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2, "--snapshot-dir", snapshots)
            for i in range(2)]


def job_config(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(f"[model]\ngroups = {GROUPS!r}\n".replace("'", '"'))
    return str(path)


def torchrun(addresses, *extra):
    env = _env()
    env["SPARSECORE_SERVERS"] = ",".join(addresses)
    env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", "2", "-m", "sparsecore.launch", *map(str, JOB), *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_job(addresses, config, on_line=None, timeout=300):
    """Runs the job under torchrun to its end (killed past ``timeout`` seconds); (exit status,
    output). ``on_line(line)`` sees each line of output as it comes."""
    proc = torchrun(addresses, "--config", config)
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        lines.append(f"(killed after {timeout} s)\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(30)
    return proc.returncode, "".join(lines)


def final_state(addresses, token=""):
    """Rows of every table for ids over the vocabulary and the dense state of the last snapshot."""
    cluster = sc.connect(addresses, timeout=30, token=token)
    rows = {}
    ids = np.arange(-5, 400, dtype=np.int64)
    for name in GROUPS:
        cluster.create_table(name, sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.05)), seed=0)
        rows[name] = cluster.lookup(name, ids)
    blob = cluster.kv_get("sparsecore.launch/dense")["torch"]
    dense = torch.load(io.BytesIO(base64.b64decode(blob)), weights_only=True)
    return rows, dense


def assert_same_state(a, b):
    (rows_a, dense_a), (rows_b, dense_b) = a, b
    for name in GROUPS:
        np.testing.assert_array_equal(rows_a[name], rows_b[name], err_msg=name)
    assert dense_a["step"] == dense_b["step"] == STEPS
    for key, value in dense_a["model"].items():
        assert torch.equal(value, dense_b["model"][key]), key
    for group_a, group_b in zip(dense_a["optimizer"]["state"].values(), dense_b["optimizer"]["state"].values()):
        for key in group_a:
            assert torch.equal(torch.as_tensor(group_a[key]), torch.as_tensor(group_b[key])), key


def evaluations(text):
    return [line for line in text.splitlines() if line.startswith("eval AUC")]


def test_torchrun_job_survives_a_killed_worker_and_a_killed_server(tmp_path):
    reference_servers = start_servers(tmp_path / "reference")
    servers = start_servers(tmp_path / "snapshots")
    config = job_config(tmp_path)
    try:
        rc, reference = run_job([a for _, a in reference_servers], config)
        assert rc == 0 and f"{STEPS} steps in all" in reference, reference
        assert len(evaluations(reference)) == 1, reference

        rank1, killed = [], []

        def inject_failures(line):
            found = re.search(r"rank 1 sparsecore.launch INFO worker 1 of 2 \(pid (\d+), attempt 0\)", line)
            if found:
                rank1.append(int(found.group(1)))
            if rank1 and not killed and "rank 1 sparsecore.trainer INFO step 50 " in line:
                os.kill(rank1[0], signal.SIGKILL)  # between the snapshots at steps 40 and 60, or just after
                killed.append("worker")
            elif killed == ["worker"] and "rank 0 sparsecore.trainer INFO step 90 " in line:  # in attempt 1
                process, address = servers[1]
                process.send_signal(signal.SIGKILL)
                process.wait(30)
                killed.append("server")
                # Its supervisor (a StatefulSet, systemd) starts it again with the same command.
                servers[1] = start_server_process("--port", address.rsplit(":", 1)[1], "--shards", 2,
                                                  "--server-index", 1, "--num-servers", 2,
                                                  "--snapshot-dir", tmp_path / "snapshots")

        rc, text = run_job([a for _, a in servers], config, inject_failures)
        assert rc == 0 and killed == ["worker", "server"], text
        resumed = [int(k) for k in re.findall(r"rank 1 sparsecore.launch INFO resumed from snapshot step-(\d+)", text)]
        assert len(resumed) == 3 and resumed[0] == 0 and 40 <= resumed[1] and 80 <= resumed[2] < STEPS, text
        assert "attempt 2)" in text
        assert evaluations(text) == evaluations(reference), text
        assert_same_state(final_state([a for _, a in servers]), final_state([a for _, a in reference_servers]))
    finally:
        for p, _ in reference_servers + servers:
            stop(p)


def docs_block(path, heading, language="python"):
    """The first ``language`` block under ``heading`` in ``path``."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)) as f:
        text = f.read()
    section = text[text.index(heading):]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start:section.index("```", start)]


def test_the_docs_own_training_loop_runs_under_torchrun_as_written(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(docs_block("docs/launch.md", "## Your own training loop"))
    servers = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        env = {**_env(), "SPARSECORE_SERVERS": ",".join(a for _, a in servers), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sum(shard["push_requests"] for shard in sc.connect([a for _, a in servers]).stats()) > 0
    finally:
        for p, _ in servers:
            stop(p)


# --- with a coordinator ---------------------------------------------------------------------------
COORDINATED_STEPS = 40
COORDINATED_JOB = ["--steps", COORDINATED_STEPS, "--batch-size", 32, "--vocab-size", 300, "--dim", 4, "--hidden", 8,
                   "--eval-samples", 500, "--log-every", 5, "--timeout", 60, "--connect-wait", 120]


def coordinated_cluster(root):
    from cluster_harness import ClusterProcesses

    procs = ClusterProcesses(root, servers=2, workers=2, steps=COORDINATED_STEPS, every_steps=10, member_timeout=5.0)
    procs.start_coordinator()
    for i in range(2):
        procs.start_server(i)
    return procs


def run_coordinated(procs, config, on_line=None):
    """The coordinated job under torchrun (the coordinator's address in $SPARSECORE_COORDINATOR);
    (exit status, output)."""
    from cluster_harness import env as cluster_env

    environment = cluster_env()
    environment["SPARSECORE_COORDINATOR"] = procs.coordinator
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", "1", "-m", "sparsecore.launch", *map(str, COORDINATED_JOB), "--config", config]
    proc = subprocess.Popen(args, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # ends when every process of the run has exited (bounded by wait below)
        lines.append(line)
        if on_line is not None:
            on_line(line)
    try:
        proc.wait(240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines)


def coordinated_state(addresses, token):
    """Rows of every table and the dense variables on the servers at a coordinated job's end."""
    from sparsecore.cluster.trainer_job import DENSE_NAME
    from sparsecore.torch import place_by_size

    cluster = sc.connect(addresses, timeout=30, token=token)
    ids = np.arange(-5, 400, dtype=np.int64)
    state = {}
    for name in GROUPS:
        cluster.create_table(name, sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.05)), seed=0)
        state[name] = cluster.lookup(name, ids)
    sizes = [8 * 4 * len(GROUPS), 8, 8, 1]  # the MLP 12 -> 8 -> 1: weights and biases
    for i, shard in enumerate(place_by_size(sizes, cluster.total_shards)):
        state[f"dense/{i}"] = cluster.dense_pull(f"{DENSE_NAME}/{i}", 0, shard=shard)
    return state


def assert_same_coordinated_state(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_torchrun_job_with_a_coordinator_survives_a_killed_worker(tmp_path):
    from cluster_harness import TOKEN

    config = job_config(tmp_path)
    reference = coordinated_cluster(tmp_path / "reference")
    procs = coordinated_cluster(tmp_path / "run")
    try:
        rc, want = run_coordinated(reference, config)
        assert rc == 0 and len(evaluations(want)) == 1, want + reference.logs()
        rank1, killed = [], []

        def kill_rank1(line):
            found = re.search(r"rank 1 sparsecore.launch INFO worker 1 of 2 \(pid (\d+), attempt 0\)", line)
            if found:
                rank1.append(int(found.group(1)))
            if rank1 and not killed and "rank 1 sparsecore.trainer INFO step 25 " in line:
                os.kill(rank1[0], signal.SIGKILL)  # after the coordinator's snapshot at step 20
                killed.append(rank1[0])

        rc, text = run_coordinated(procs, config, kill_rank1)
        assert rc == 0 and killed, text + procs.logs()
        resumed = [int(s) for s in re.findall(r"rank 1 sparsecore.cluster INFO worker 1: generation \d+ from step (\d+)",
                                              text)]
        assert len(resumed) == 2 and resumed[0] == 0 and 20 <= resumed[1] < COORDINATED_STEPS, text
        assert evaluations(text) == evaluations(want), text
        assert_same_coordinated_state(coordinated_state([procs.addresses[i] for i in range(2)], TOKEN),
                                      coordinated_state([reference.addresses[i] for i in range(2)], TOKEN))
    finally:
        reference.close()
        procs.close()
