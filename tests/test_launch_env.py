"""sparsecore.launch without an engine: the worker's place from the environment (torchrun's and
a Kubernetes indexed Job's variables, each missing or wrong one named), the errors of
``python -m sparsecore.launch``, and one worker (rank 0 of 1) in process against a listening
server: a fresh job starts from snapshot step-0, a finished one trains nothing when run again,
a job resumed mid-way ends where the uninterrupted one does, and a snapshot of another
worker count is refused."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.launch import WorkerEnv, worker_env

from test_ps import _env


@pytest.mark.parametrize("environ, want", [
    ({}, WorkerEnv()),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"},
     WorkerEnv(rank=3, world_size=4, local_rank=1, attempt=2)),
    ({"JOB_COMPLETION_INDEX": "2", "WORLD_SIZE": "3"}, WorkerEnv(rank=2, world_size=3)),
    ({"RANK": " 0 ", "WORLD_SIZE": "1"}, WorkerEnv()),
    ({"RANK": "1", "JOB_COMPLETION_INDEX": "0", "WORLD_SIZE": "2"}, WorkerEnv(rank=1, world_size=2)),  # RANK wins
])
def test_worker_env_reads_torchrun_and_indexed_job_variables(environ, want):
    assert worker_env(environ) == want


@pytest.mark.parametrize("environ, message", [
    ({"WORLD_SIZE": "2"}, r"\$WORLD_SIZE is set but not the worker's rank"),
    ({"RANK": "0"}, r"\$RANK is set but not \$WORLD_SIZE"),
    ({"JOB_COMPLETION_INDEX": "0"}, r"\$JOB_COMPLETION_INDEX is set but not \$WORLD_SIZE"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"\$RANK must be below \$WORLD_SIZE \(2\), got 2"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"\$RANK must be >= 0, got -1"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"\$WORLD_SIZE must be >= 1, got 0"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, r"\$WORLD_SIZE must be an integer, got 'two'"),
    ({"RANK": "0", "WORLD_SIZE": str(2**16 + 1)}, r"\$WORLD_SIZE must be at most 65536"),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "x"}, r"\$LOCAL_RANK must be an integer"),
])
def test_worker_env_names_what_is_missing_or_wrong(environ, message):
    with pytest.raises(ValueError, match=message):
        worker_env(environ)


def launch(*args, **env):
    return subprocess.run([sys.executable, "-m", "sparsecore.launch", *map(str, args)], env={**_env(), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "no parameter servers: give --servers or $SPARSECORE_SERVERS"),
    (("--servers", "nohost"), {}, "'nohost' is not host:port"),
    ((), {"SPARSECORE_SERVERS": "a:70000"}, "'a:70000' is not host:port"),
    (("--servers", "a:1", "--snapshot-every", "0"), {}, "--snapshot-every must be >= 1, got 0"),
    (("--servers", "a:1", "--timeout", "0"), {}, "--timeout must be in"),
    (("--servers", "a:1"), {"RANK": "0"}, r"$RANK is set but not $WORLD_SIZE"),
    (("--servers", "a:1", "--token-file", "/nonexistent/token"), {}, "cannot read token file '/nonexistent/token'"),
    (("--servers", "a:1", "--checkpoint-dir", "ckpt"), {}, "--checkpoint-dir is for the embedded tables"),
    (("--servers", "a:1", "--mode", "bounded"), {}, "--mode must be one of sync, async, ssp"),
    (("--servers", "a:1", "--mode", "async", "--staleness", "2"), {}, "only with --mode ssp"),
    (("--coordinator", "c:1", "--servers", "a:1"), {}, "--servers with --coordinator"),
    (("--steps", "5"), {"SPARSECORE_COORDINATOR": "c:1", "SPARSECORE_SERVERS": "a:1"},
     "--servers with --coordinator"),
    (("--coordinator", "c:1", "--steps", "5", "--dense-optimizer", "rmsprop"), {}, "has no server-side twin"),
])
def test_launch_refuses_settings_that_cannot_work(args, env, message):
    done = launch(*args, **{"SPARSECORE_SERVERS": "", **env})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.startswith("sparsecore.launch: error: "), done.stderr


def test_launch_help_names_the_engine_variables():
    done = launch("--help")
    assert done.returncode == 0
    for text in ("$RANK", "$JOB_COMPLETION_INDEX", "$WORLD_SIZE", "$SPARSECORE_SERVERS", "--snapshot-every",
                 "--steps", "torchrun"):
        assert text in done.stdout, text


def test_sparsecore_ray_without_ray_says_how_to_install_it():
    code = "import sys; sys.modules['ray'] = None; import sparsecore.ray"
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ImportError: sparsecore.ray needs Ray: pip install 'sparsecore[ray]'" in \
        done.stderr, done.stderr


# ------------------------------------------------------------------- one worker, in process
torch = pytest.importorskip("torch")

from sparsecore import cli  # noqa: E402
from sparsecore.launch import run_worker  # noqa: E402

GROUPS = ["f0", "f5"]


def settings(steps):
    return cli.load_settings(None, {("train", "steps"): steps, ("data", "batch_size"): 16,
                                    ("synthetic", "vocab_size"): 200, ("synthetic", "eval_samples"): 200,
                                    ("model", "dim"): 3, ("model", "hidden"): [4], ("model", "groups"): GROUPS,
                                    ("train", "progress"): False, ("train", "log_every"): 0})


def rows(server):
    cluster = sc.connect([server.endpoint])
    out = {}
    for name in GROUPS:
        cluster.create_table(name, sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.05)), seed=0)
        out[name] = cluster.lookup(name, np.arange(200, dtype=np.int64))
    return out


def test_a_fresh_job_runs_from_step_0_and_a_finished_one_trains_nothing(tmp_path, capsys):
    with sc.Server(port=0, snapshot_dir=str(tmp_path)) as server:
        first = run_worker(settings(7), WorkerEnv(), servers=[server.endpoint], snapshot_every=3, timeout=30)
        assert (first["resumed_from"], first["steps"], first["step"]) == (0, 7, 7)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0", "step-3", "step-6", "step-7"]
        trained = rows(server)
        again = run_worker(settings(7), WorkerEnv(), servers=[server.endpoint], snapshot_every=3, timeout=30)
        assert (again["resumed_from"], again["steps"], again["step"]) == (7, 0, 7)
        assert again["eval"] == first["eval"]
        for name in GROUPS:
            np.testing.assert_array_equal(rows(server)[name], trained[name])
    assert "trained 0 steps" in capsys.readouterr().out


def test_a_job_resumed_from_a_snapshot_ends_as_the_uninterrupted_one(tmp_path):
    with sc.Server(port=0, snapshot_dir=str(tmp_path / "a")) as server:
        whole = run_worker(settings(9), WorkerEnv(), servers=[server.endpoint], snapshot_every=4, timeout=30)
        want = rows(server)
    with sc.Server(port=0, snapshot_dir=str(tmp_path / "b")) as server:
        run_worker(settings(6), WorkerEnv(), servers=[server.endpoint], snapshot_every=4, timeout=30)
        # As if the run had died before its snapshot at step 6: the servers hold step 6, the
        # newest snapshot is step 4, and the next run rolls steps 5 and 6 back.
        shutil.rmtree(tmp_path / "b" / "step-6")
        resumed = run_worker(settings(9), WorkerEnv(), servers=[server.endpoint], snapshot_every=4, timeout=30)
        assert (resumed["resumed_from"], resumed["steps"]) == (4, 5)
        got = rows(server)
    assert resumed["eval"] == whole["eval"]
    for name in GROUPS:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_snapshot_of_another_worker_count_is_refused(tmp_path):
    with sc.Server(port=0, snapshot_dir=str(tmp_path)) as server:
        run_worker(settings(2), WorkerEnv(), servers=[server.endpoint], snapshot_every=5, timeout=30)
        cluster = sc.connect([server.endpoint])
        dense = cluster.kv_get("sparsecore.launch/dense")
        cluster.kv_put("sparsecore.launch/dense", {**dense, "workers": 3})
        cluster.save(2, overwrite=True)
        with pytest.raises(RuntimeError, match="written by 3 workers; this job has 1"):
            run_worker(settings(4), WorkerEnv(), servers=[server.endpoint], snapshot_every=5, timeout=30)


def test_servers_without_a_snapshot_directory_are_refused():
    with sc.Server(port=0) as server:
        with pytest.raises(ValueError, match="no snapshot directory"):
            run_worker(settings(2), WorkerEnv(), servers=[server.endpoint], timeout=30)


def test_file_data_needs_steps_and_a_file_per_worker(tmp_path):
    with pytest.raises(cli.ConfigError, match="needs --steps"):
        run_worker(cli.load_settings(None, {("data", "format"): "criteo", ("data", "train"): ["x"]}), WorkerEnv(),
                   servers=["127.0.0.1:1"])
    data = tmp_path / "day_0"
    data.write_text("")
    with pytest.raises(cli.ConfigError, match="1 training file\\(s\\) for 2 workers"):
        cli.build_sources(cli.load_settings(None, {("data", "format"): "criteo", ("data", "train"): [str(data)]}),
                          (1, 2))
    with pytest.raises(cli.ConfigError, match="--follow reads one directory in one worker"):
        cli.build_sources(cli.load_settings(None, {("data", "format"): "criteo", ("data", "follow"): str(tmp_path)}),
                          (0, 2))


def test_synthetic_workers_read_disjoint_stretches_of_one_stream():
    job = settings(3)
    whole = cli.build_sources(cli.load_settings(None, {**{(s, k): v for s in job for k, v in job[s].items()},
                                                       ("train", "steps"): 6}))[0]
    parts = [cli.build_sources(job, (rank, 2))[0] for rank in range(2)]
    want = [whole.next_batch() for _ in range(6)]
    got = [parts[0].next_batch() for _ in range(3)] + [parts[1].next_batch() for _ in range(3)]
    assert all(part.next_batch() is None for part in parts)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.labels, b.labels)
        for name in a.sparse:
            np.testing.assert_array_equal(a.sparse[name][0], b.sparse[name][0])


def test_the_recovery_is_what_run_worker_is_given(tmp_path):
    from sparsecore.launch import SnapshotRecovery

    calls = []

    class Recording(SnapshotRecovery):
        def resume(self, trainer):
            calls.append("resume")
            return super().resume(trainer)

        def snapshot(self, trainer):
            calls.append(trainer.step)
            super().snapshot(trainer)

    with sc.Server(port=0, snapshot_dir=str(tmp_path)) as server:
        run_worker(settings(5), WorkerEnv(), servers=[server.endpoint], snapshot_every=2, timeout=30,
                   recovery=Recording)
    assert calls == ["resume", 2, 4, 5]


def test_a_snapshot_of_another_model_is_refused_with_what_does_not_fit(tmp_path):
    with sc.Server(port=0, snapshot_dir=str(tmp_path)) as server:
        run_worker(settings(2), WorkerEnv(), servers=[server.endpoint], snapshot_every=5, timeout=30)
        wider = settings(4)
        wider["model"]["hidden"] = [6]
        with pytest.raises(RuntimeError, match="does not fit this job's model"):
            run_worker(wider, WorkerEnv(), servers=[server.endpoint], snapshot_every=5, timeout=30)
