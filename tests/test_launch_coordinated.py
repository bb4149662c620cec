"""The job of ``sparsecore train`` as a worker of a coordinated job, in process (a coordinator
and a server with its member in this process, loopback): ``sparsecore train --coordinator``
trains to the end through ``sparsecore.cluster.Worker``; a job whose coordinator runs another
mode is refused; ``--mode`` without a coordinator is refused by ``sparsecore train``."""

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.cluster import Coordinator, ServerMember

torch = pytest.importorskip("torch")

from sparsecore import cli  # noqa: E402
from sparsecore.cluster.trainer_job import DENSE_NAME  # noqa: E402

JOB = ["--steps", "6", "--batch-size", "16", "--vocab-size", "200", "--eval-samples", "200", "--dim", "3",
       "--hidden", "4", "--log-every", "0", "-q"]


@pytest.fixture
def coordinated(tmp_path):
    def start(**options):
        coordinator = Coordinator(num_servers=1, num_workers=1, snapshot_dir=str(tmp_path / "coordinator"),
                                  snapshot_every_steps=3, heartbeat=0.1, member_timeout=2.0, **options).start()
        server = sc.Server(port=0, shards=2, snapshot_dir=str(tmp_path / "servers"))
        member = ServerMember(coordinator.endpoint, server_index=0, num_servers=1, address=server.endpoint).start()
        started.append((coordinator, server, member))
        return coordinator, server
    started = []
    yield start
    for coordinator, server, member in started:
        member.stop()
        coordinator.stop()
        server.stop()


def test_sparsecore_train_with_a_coordinator_trains_through_it(coordinated, monkeypatch, capsys):
    coordinator, server = coordinated()
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(["train", "--coordinator", coordinator.endpoint, *JOB]) == 0
    out = capsys.readouterr().out
    assert "6 steps in all on 1 workers" in out and "eval AUC" in out
    status = coordinator.status()
    assert status["phase"] == "done" and status["snapshot_step"] == 6
    # The dense model lives on the server, where the final snapshot has it.
    cluster = sc.connect([server.endpoint])
    assert np.isfinite(cluster.dense_pull(f"{DENSE_NAME}/0", 0, shard=0)).all()


def test_a_worker_of_another_mode_than_its_coordinator_is_refused(coordinated, monkeypatch, capsys):
    coordinator, _ = coordinated(mode="async")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(["train", "--coordinator", coordinator.endpoint, "--mode", "sync", *JOB]) == 1
    assert "runs mode 'async'" in capsys.readouterr().err


def test_mode_without_a_coordinator_is_refused(capsys):
    assert cli.main(["train", "--mode", "ssp", "--staleness", "2", *JOB]) == 2
    assert "give --coordinator" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [["--mode", "ssp", "--staleness", "2"], ["--mode", "async"]], ids=["ssp", "async"])
def test_the_coordinators_mode_reaches_the_workers_connection(coordinated, monkeypatch, capsys, mode):
    options = {"mode": mode[1], "staleness": int(mode[3]) if len(mode) > 2 else 0}
    coordinator, server = coordinated(**options)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(["train", "--coordinator", coordinator.endpoint, *mode, *JOB]) == 0
    assert coordinator.status()["phase"] == "done"
    stats = sc.connect([server.endpoint]).stats()
    if mode[1] == "ssp":  # the server's gate counted this worker's clock
        assert any(shard.get("staleness") for shard in stats)
