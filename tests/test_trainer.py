"""Trainer: learning the planted model, GAUC, checkpoints and resume in a new process, and
bad input stopped before training starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore import cli  # noqa: E402
from sparsecore.data import CsvReader, SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402
from sparsecore.trainer import Trainer  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(sc.__file__))


def small_config(seed, **overrides):
    base = dict(num_groups=4, num_user_groups=2, vocab_size=100, min_bag=1, max_bag=4, weight_std=0.4,
                samples_per_view=4, batch_size=500, seed=seed)
    return SyntheticConfig.w2(**{**base, **overrides})


def make_trainer(source, dim=4, optimizer=None, model=None, **kwargs):
    names = source.config.names() if hasattr(source, "config") else ["a", "b"]
    tables = {n: sc.TableConfig(dim=dim, optimizer=optimizer or sc.Adagrad(lr=0.3)) for n in names}
    model = model if model is not None else mlp(dim * len(names), [16])
    return Trainer(source, model, tables, dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                   progress=False, **kwargs)


@pytest.mark.parametrize("compressed", [True, False])
def test_short_run_reaches_the_planted_auc(rng, compressed):
    cfg = small_config(int(rng.integers(1 << 30)))
    torch.manual_seed(int(rng.integers(1 << 30)))
    # 100k samples leave a gap of about 0.004-0.008 over random configs (40k: up to 0.02).
    trainer = make_trainer(SyntheticData(cfg, num_samples=100_000, compressed=compressed))
    result = trainer.fit()
    assert result.steps == 200 and result.samples == 100_000
    held_out = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 20_000, compressed=compressed)
    metrics = trainer.evaluate(held_out)
    assert metrics["samples"] == 20_000
    assert metrics["planted_auc"] - metrics["auc"] < 0.02, metrics
    # GAUC: users are page views of 4 samples each.
    assert np.isfinite(metrics["gauc"]) and metrics["planted_gauc"] - metrics["gauc"] < 0.04, metrics


def test_fit_calls_on_interval_and_records_history():
    trainer = make_trainer(SyntheticData(small_config(1), num_samples=5000), log_every=2)
    seen = []
    trainer.fit(every=3, on_interval=lambda t: seen.append(t.step))
    assert seen == [3, 6, 9]
    assert [h["step"] for h in trainer.history] == [2, 4, 6, 8, 10]
    assert all(sum(h["rows"].values()) > 0 for h in trainer.history)


def test_fit_rewinds_the_source_to_the_last_trained_batch():
    source = SyntheticData(small_config(2), num_samples=50_000)
    trainer = make_trainer(source, prefetch=4)
    trainer.fit(3)
    assert source.position == 1500 and trainer.samples == 1500  # batches read ahead are not lost


# ---------------------------------------------------------------------------- resume
def job_settings(ckpt, steps):
    return cli.load_settings(None, {
        ("synthetic", "vocab_size"): 500, ("synthetic", "eval_samples"): 1000, ("data", "batch_size"): 300,
        ("model", "hidden"): [16], ("model", "dim"): 4, ("train", "steps"): steps, ("train", "threads"): 2,
        ("train", "checkpoint_dir"): str(ckpt), ("train", "deterministic"): True, ("train", "progress"): False,
        ("train", "log_every"): 0, ("train", "seed"): 5})


def load_state(ckpt):
    with open(os.path.join(ckpt, "trainer.json")) as f:
        meta = json.load(f)
    dense = torch.load(os.path.join(ckpt, "dense.pt"), weights_only=False)
    emb = sc.EmbeddingCollection.load(os.path.join(ckpt, "embedding"))
    tables = {}
    for name in emb.names:
        e = emb.export(name)
        order = np.argsort(e["keys"])
        tables[name] = {k: v[order] for k, v in e.items()}
    return meta, dense, tables


@pytest.fixture
def deterministic_torch():
    yield
    torch.use_deterministic_algorithms(False)


def test_resume_in_a_new_process_is_exact(tmp_path, deterministic_torch):
    steps, k = 8, 3
    cli.run_train(job_settings(tmp_path / "full", steps))
    cli.run_train(job_settings(tmp_path / "part", k))
    meta_k, _, _ = load_state(tmp_path / "part")
    assert meta_k["step"] == k and meta_k["reader"]["position"] == k * 300
    code = ("import sys; from sparsecore import cli; from test_trainer import job_settings; "
            f"cli.run_train(job_settings(sys.argv[1], {steps}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PYTHON_DIR, os.path.dirname(__file__)])}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "part")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stderr or f"trained {steps - k} steps" in done.stdout
    meta_a, dense_a, tables_a = load_state(tmp_path / "full")
    meta_b, dense_b, tables_b = load_state(tmp_path / "part")
    # No sample skipped or read twice: the same count, position and bit-identical state.
    assert meta_a["step"] == meta_b["step"] == steps
    assert meta_a["samples"] == meta_b["samples"] == steps * 300
    assert meta_a["reader"] == meta_b["reader"]
    for name, t in dense_a["model"].items():
        assert torch.equal(t, dense_b["model"][name]), name
    for name in tables_a:
        for field, values in tables_a[name].items():
            np.testing.assert_array_equal(values, tables_b[name][field], err_msg=f"{name}.{field}")


def test_resume_over_a_file_reader_reads_every_line_once(tmp_path, deterministic_torch):
    path = tmp_path / "clicks.csv"
    rows = [f"{i % 2},u{i % 7},i{i % 11}" for i in range(60)]
    path.write_text("\n".join(rows) + "\n")
    columns = {"label": "label", "user": "categorical", "item": "categorical"}

    def trainer():
        torch.manual_seed(0)
        source = CsvReader(str(path), columns, batch_size=8)
        tables = {n: sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)) for n in ("user", "item")}
        model = mlp(6, [4])
        return Trainer(source, model, tables, dense_optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       progress=False, deterministic=True)

    a = trainer()
    a.fit(5)
    a.save(tmp_path / "ckpt")
    b = trainer()
    b.restore(tmp_path / "ckpt")
    assert b.step == 5 and b.samples == 40
    result = b.fit()  # the rest of the file: 20 samples, none twice
    assert result.samples == 20 and b.samples == 60
    full = trainer()
    full.fit()
    for name in ("user", "item"):
        np.testing.assert_array_equal(np.sort(full.embedding.collection.export(name)["keys"]),
                                      np.sort(b.embedding.collection.export(name)["keys"]))
        for ids in [full.embedding.collection.export(name)["keys"]]:
            np.testing.assert_array_equal(full.embedding.collection.lookup(name, ids),
                                          b.embedding.collection.lookup(name, ids))


def test_save_refuses_to_overwrite_when_asked(tmp_path):
    trainer = make_trainer(SyntheticData(small_config(3), num_samples=1000))
    trainer.fit(1)
    trainer.save(tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        trainer.save(tmp_path)  # overwrite=False is the default
    trainer.save(tmp_path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no finished trainer checkpoint"):
        make_trainer(SyntheticData(small_config(3))).restore(tmp_path / "missing")


def test_a_save_removes_only_the_stagings_of_saves_that_died(tmp_path):
    trainer = make_trainer(SyntheticData(small_config(3), num_samples=1000))
    trainer.fit(1)
    died = tmp_path / ".ck.saving-0123456789abcdef"  # how a save names its staging directory
    os.makedirs(died / "embedding")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("x")
    kept = [".ck.saving-notours", ".ck.saving-0123456789ABCDEF", "ck.saving-0123456789abcdef", "elsewhere"]
    for name in kept[:3]:
        (tmp_path / name).mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / ".ck.saving-fedcba9876543210")  # not ours, not followed
    kept.append(".ck.saving-fedcba9876543210")
    trainer.save(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["ck"])
    assert (tmp_path / "elsewhere" / "keep").read_text() == "x"
    make_trainer(SyntheticData(small_config(3))).restore(tmp_path / "ck")


# ---------------------------------------------------------------------------- bad input
def assert_untouched(trainer):
    assert trainer.step == 0
    assert sum(trainer.embedding.collection.sizes().values()) == 0


def test_unknown_columns_stop_before_training():
    source = SyntheticData(small_config(4), num_samples=1000)
    model = mlp(8, [4])
    tables = {"f0": sc.TableConfig(dim=4), "clicks": sc.TableConfig(dim=4)}
    trainer = Trainer(source, model, tables, progress=False)
    with pytest.raises(ValueError, match=r"unknown columns \['clicks'\]"):
        trainer.fit(2)
    assert_untouched(trainer)
    assert source.position == 0


def test_model_width_mismatch_stops_before_training():
    trainer = make_trainer(SyntheticData(small_config(5), num_samples=1000), model=mlp(15, [4]))
    with pytest.raises(ValueError, match="pooled width 16"):
        trainer.fit(2)
    assert_untouched(trainer)


def test_labels_outside_0_1_stop_before_training(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,x,y\n2,x,z\n0,w,y\n")
    source = CsvReader(str(path), {"label": "label", "a": "categorical", "b": "categorical"})
    trainer = make_trainer(source)
    with pytest.raises(ValueError, match=r"labels in \{0, 1\}, got \[2.0\]"):
        trainer.fit()
    assert_untouched(trainer)


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot open"):
        CsvReader(str(tmp_path / "missing.csv"), {"label": "label", "a": "categorical"})


def test_non_finite_loss_stops_the_run():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return x.sum(1) * self.scale

    trainer = make_trainer(SyntheticData(small_config(6), num_samples=2000), model=Exploding())
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        trainer.fit()
    assert trainer.step == 0
