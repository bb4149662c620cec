"""The Trainer over a followed directory: progressive validation equals an offline reference,
checkpoints resume the stream exactly, table statistics in the log, history and plot, and
``sparsecore train --follow``."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import FollowDirectory, LibsvmReader, SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

from test_follow import BATCH, open_files, write_partition  # noqa: E402

PARTITIONS = ["p00", "p01", "p02", "p03"]
DIM = 4


@pytest.fixture
def stream(tmp_path, rng):
    root = tmp_path / "stream"
    for name in PARTITIONS:
        write_partition(root, name, rng)
    return root


def make(source, *, progressive=False, log_every=0, tables=None):
    torch.manual_seed(5)
    model = mlp(DIM, [8])
    tables = tables or {"features": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1))}
    return Trainer(source, model, tables, dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                   progress=False, deterministic=True, seed=3, log_every=log_every, progressive=progressive)


def snapshot(trainer):
    ids = np.arange(0, 200, dtype=np.int64)
    rows = trainer.embedding.collection.lookup("features", ids)
    return rows, [p.detach().clone() for p in trainer.model.parameters()]


def progressive_entries(trainer):
    return [(h["partition"], h["step"], h["auc"], h["logloss"], h["samples"]) for h in trainer.history
            if "partition" in h]


def test_progressive_metrics_equal_an_offline_reference(stream):
    trainer = make(FollowDirectory(stream, open_files, timeout=0), progressive=True)
    result = trainer.fit()
    per_partition = 2 * 150 // BATCH + 1
    assert result.steps == len(PARTITIONS) * per_partition
    got = progressive_entries(trainer)
    assert [g[0] for g in got] == PARTITIONS

    # The reference: evaluate each partition, then train on it, one partition at a time.
    files = [sorted(str(stream / p / f) for f in os.listdir(stream / p) if not f.startswith("_"))
             for p in PARTITIONS]
    reference = make(open_files(files[0]))
    expected = []
    for name, paths in zip(PARTITIONS, files):
        m = reference.evaluate(open_files(paths))
        expected.append((name, reference.step, m["auc"], m["logloss"], m["samples"]))
        reference.source = open_files(paths)
        reference.fit()
    assert got == expected
    assert got[-1][2] > 0.6  # it learned the planted rule (a check on the data, not the equality)
    rows, params = snapshot(trainer)
    ref_rows, ref_params = snapshot(reference)
    np.testing.assert_array_equal(rows, ref_rows)
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cut", [3, 5, 7, 11])
def test_a_checkpoint_resumes_the_stream_exactly(stream, tmp_path, cut):
    full = make(FollowDirectory(stream, open_files, timeout=0), progressive=True)
    full.fit()
    first = make(FollowDirectory(stream, open_files, timeout=0), progressive=True)
    assert first.fit(cut).steps == cut
    first.save(tmp_path / "ckpt")
    resumed = make(FollowDirectory(stream, open_files, timeout=0), progressive=True)
    resumed.restore(tmp_path / "ckpt")
    assert resumed.source.partition == first.source.partition
    resumed.fit()
    assert resumed.step == full.step
    assert progressive_entries(resumed) == progressive_entries(full)  # none evaluated twice
    rows, params = snapshot(resumed)
    full_rows, full_params = snapshot(full)
    np.testing.assert_array_equal(rows, full_rows)
    for a, b in zip(params, full_params):
        assert torch.equal(a, b)


def test_plain_following_trains_on_every_partition(stream):
    trainer = make(FollowDirectory(stream, open_files, timeout=0))
    assert trainer.fit().samples == len(PARTITIONS) * 2 * 150
    assert progressive_entries(trainer) == []


def test_progressive_needs_a_followed_directory():
    with pytest.raises(ValueError, match="FollowDirectory"):
        make(LibsvmReader.__new__(LibsvmReader), progressive=True)


def test_table_statistics_in_the_log_history_and_plot(tmp_path, caplog):
    cfg = SyntheticConfig.w2(num_groups=2, num_user_groups=1, vocab_size=300, batch_size=100, seed=2,
                             samples_per_view=1)
    tables = {name: sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1), admission=sc.Admission(count_threshold=2))
              for name in cfg.names()}
    torch.manual_seed(0)
    model = mlp(DIM * 2, [8])
    trainer = Trainer(SyntheticData(cfg, num_samples=1000), model, tables, progress=False, log_every=2)
    with caplog.at_level(logging.INFO, logger="sparsecore.trainer"):
        trainer.fit()
    assert [h["step"] for h in trainer.history] == [2, 4, 6, 8, 10]
    stats = trainer.embedding.collection.table_stats()
    last = trainer.history[-1]
    assert last["tables"] == stats
    for name, t in stats.items():
        assert list(t) == list(sc._core.TABLE_STATS_FIELDS)
        assert last["rows"][name] == t["rows"] == trainer.embedding.collection.table_size(name)
        assert t["bytes"] > 0 and t["admitted"] == t["rows"] and t["rejected"] > 0
        assert t == {**trainer.embedding.collection.admission_stats()[name], "rows": t["rows"], "bytes": t["bytes"],
                     "expired": 0, "evicted": 0, "refused": 0}  # no expiry on these tables
    assert any("tables:" in r.getMessage() and "admitted" in r.getMessage() for r in caplog.records)
    pytest.importorskip("matplotlib")
    trainer.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_statistics_of_tables_on_servers_sum_the_shards():
    server = sc.Server(shards=3)
    tables = {"t": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.1), admission=sc.Admission(count_threshold=2))}
    remote = sc.EmbeddingCollection(tables, 1, server=server)
    ids = np.arange(-50, 500, 3, dtype=np.int64)
    for k in (1, 2):
        remote.lookup("t", ids[: len(ids) // k], insert=True)
    stats = remote.table_stats()["t"]
    shards = server.client().stats()
    assert len(shards) == 3 and all(s["tables"]["t"]["rows"] > 0 for s in shards)
    assert stats == {k: sum(s["tables"]["t"][k] for s in shards) for k in sc._core.TABLE_STATS_FIELDS}
    assert stats["rows"] == remote.sizes()["t"] == stats["admitted"] == len(ids) // 2
    assert stats["pending"] == len(ids) - len(ids) // 2 and stats["bytes"] > 0


# ----------------------------------------------------------------------------- the command line
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))


def test_train_follow_reports_progressive_validation(stream, tmp_path):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["--data-format", "libsvm", "--follow", str(stream), "--follow-timeout", "0", "--batch-size", "64",
            "--dim", "2", "--hidden", "4", "--threads", "1", "--checkpoint-dir", str(tmp_path / "ckpt")]
    p = subprocess.run([sys.executable, "-m", "sparsecore.cli", "train", *args], capture_output=True, text=True,
                       env=env, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "progressive validation over 4 partitions; the last, p03: AUC" in p.stdout
    assert "partition p00 progressive AUC" in p.stderr
    write_partition(stream, "p04", np.random.default_rng(9))  # a new hour: the resumed job reads only it
    p = subprocess.run([sys.executable, "-m", "sparsecore.cli", "train", *args], capture_output=True, text=True,
                       env=env, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "progressive validation over 5 partitions; the last, p04" in p.stdout
    assert "trained 5 steps" in p.stdout


def test_train_follow_settings_are_checked(stream, tmp_path):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for extra, message in [(["--train-data", str(stream / "p00" / "part-00000")], "give one"),
                           (["--epochs", "2"], "--epochs"), (["--follow-timeout", "-1"], "follow_timeout")]:
        p = subprocess.run([sys.executable, "-m", "sparsecore.cli", "train", "--data-format", "libsvm", "--follow",
                            str(stream), *extra], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2 and message in p.stderr, p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-m", "sparsecore.cli", "train", "--data-format", "libsvm", "--follow",
                        str(empty), "--follow-timeout", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "no complete partition" in p.stderr, p.stderr
