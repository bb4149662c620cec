"""Resume says what it resumed: `sparsecore train --checkpoint-every N` killed while
checkpointing resumes from the last complete checkpoint (never silently from step 0), and a
resume that finds no checkpoint warns. Saves never replace a directory that holds anything
but a checkpoint."""

import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from checkpoint_support import child_env  # noqa: E402


def train_args(ckpt, steps):
    return [sys.executable, "-m", "sparsecore.cli", "train", "--steps", str(steps), "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "1", "--vocab-size", "300", "--batch-size", "200", "--dim", "4", "--hidden", "8",
            "--eval-samples", "1000", "--threads", "1", "--log-every", "0"]


def small_trainer():
    cfg = SyntheticConfig.w2(num_groups=2, num_user_groups=1, vocab_size=100, min_bag=1, max_bag=3, batch_size=100,
                             seed=1)
    model = mlp(8, [4])
    return Trainer(SyntheticData(cfg), model, {n: sc.TableConfig(dim=4) for n in cfg.names()}, progress=False)


def test_train_killed_while_checkpointing_resumes_from_the_last_complete_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    child = subprocess.Popen(train_args(ckpt, 10_000), env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        saved = 0
        for line in child.stderr:
            if "saved checkpoint" in line:
                saved += 1
                if saved == 2:  # then die somewhere in the next checkpoints
                    time.sleep(random.uniform(0, 0.2))
                    break
        assert saved == 2
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rerun = subprocess.run(train_args(ckpt, 4), env=child_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [line for line in rerun.stderr.splitlines() if "resumed from checkpoint" in line]
    assert resumed, rerun.stderr[-3000:]
    assert int(resumed[0].split(" at step ")[1].split()[0]) >= 2
    assert "training starts from step 0" not in rerun.stderr


def test_resume_without_a_checkpoint_warns(tmp_path, caplog):
    trainer = small_trainer()
    with caplog.at_level(logging.WARNING, logger="sparsecore.trainer"):
        assert trainer.resume(tmp_path / "nothing") is False
    assert "no finished checkpoint" in caplog.text and "step 0" in caplog.text
    assert trainer.step == 0


def test_resume_logs_the_checkpoint_it_resumed(tmp_path, caplog):
    trainer = small_trainer()
    trainer.fit(2)
    trainer.save(tmp_path / "ck")
    again = small_trainer()
    with caplog.at_level(logging.INFO, logger="sparsecore.trainer"):
        assert again.resume(tmp_path / "ck") is True
    assert f"resumed from checkpoint {tmp_path / 'ck'} at step 2" in caplog.text
    assert again.step == 2


def test_a_damaged_trainer_marker_is_corrupt_data_not_a_fresh_start(tmp_path):
    trainer = small_trainer()
    trainer.fit(1)
    trainer.save(tmp_path / "ck")
    (tmp_path / "ck" / "trainer.json").write_text('{"format": "sparsecore.trainer", "step": "x"')
    with pytest.raises(sc.CorruptDataError):
        small_trainer().resume(tmp_path / "ck")


def test_save_never_replaces_a_directory_holding_something_else(tmp_path):
    trainer = small_trainer()
    trainer.fit(1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not part of a trainer checkpoint"):
        trainer.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    emb = sc.EmbeddingCollection({"a": sc.TableConfig(dim=2)}, seed=1)
    with pytest.raises(ValueError, match="not part of a checkpoint"):
        emb.save(tmp_path / "mine", overwrite=True)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_overwriting_saves_leave_one_directory_and_no_staging(tmp_path):
    trainer = small_trainer()
    for _ in range(3):
        trainer.fit(1)
        trainer.save(tmp_path / "ck", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert sorted(os.listdir(tmp_path / "ck")) == ["dense.pt", "embedding", "trainer.json"]
    again = small_trainer()
    again.restore(tmp_path / "ck")
    assert again.step == 3


def test_a_trainer_over_a_cluster_keeps_its_tables_in_a_named_server_snapshot(tmp_path):
    server = sc.Server(snapshot_dir=tmp_path / "snaps")
    cfg = SyntheticConfig.w2(num_groups=2, num_user_groups=1, vocab_size=100, min_bag=1, max_bag=3, batch_size=100,
                             seed=1)
    tables = {n: sc.TableConfig(dim=4) for n in cfg.names()}

    def trainer():
        torch.manual_seed(0)
        return Trainer(SyntheticData(cfg), mlp(8, [4]), tables, progress=False, server=server.client())

    a = trainer()
    a.fit(3)
    a.save(tmp_path / "ck")
    assert os.listdir(tmp_path / "snaps") == ["step-3"]
    ids = {n: a.embedding.collection.lookup(n, list(range(100))) for n in tables}
    a.fit(2)
    b = trainer()
    b.restore(tmp_path / "ck")
    assert b.step == 3
    for n in tables:
        assert (b.embedding.collection.lookup(n, list(range(100))) == ids[n]).all()
