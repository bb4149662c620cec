"""The sparsecore command: help, the train job from flags and TOML, clear errors, server."""

import sys
import types

import pytest

pytest.importorskip("torch")

from sparsecore import cli  # noqa: E402

SMALL = ["train", "--vocab-size", "300", "--batch-size", "200", "--steps", "4", "--eval-samples", "800", "--hidden", "8",
         "--dim", "3", "--no-progress", "--threads", "2"]


def test_help_lists_the_main_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--data-format", "--train-data", "--batch-size", "--steps", "--sparse-optimizer",
                 "--dense-lr", "--checkpoint-dir", "--plot", "--compression", "planted"):
        assert flag in text, flag


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_synthetic_job_prints_auc_next_to_the_planted_optimum(capsys):
    assert cli.main(SMALL + ["-q"]) == 0
    out = capsys.readouterr().out
    assert "trained 4 steps" in out and "planted optimum" in out and "GAUC" in out


def test_toml_config_sets_the_job_and_flags_win(tmp_path, capsys):
    config = tmp_path / "job.toml"
    config.write_text("""
[data]
batch_size = 100
[synthetic]
vocab_size = 200
eval_samples = 400
[model]
dim = 2
hidden = [4]
[sparse_optimizer]
name = "ftrl"
lr = 0.1
l1 = 0.01
[dense_optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
steps = 3
progress = false
""")
    settings = cli.load_settings(str(config), {("train", "steps"): 2})
    assert settings["train"]["steps"] == 2 and settings["data"]["batch_size"] == 100
    assert cli.main(["train", "--config", str(config), "--steps", "2", "-q"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out


def test_csv_job_from_files(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("".join(f"{i % 2},{i % 5},u{i % 3}|u{i % 4},{i * 0.1}\n" for i in range(50)))
    config = tmp_path / "csv.toml"
    config.write_text(f"""
[data]
format = "csv"
train = ["{train}"]
eval = ["{train}"]
batch_size = 10
[data.columns]
label = "label"
item = "categorical"
tags = "multi_categorical"
price = "dense"
[model]
dim = 4
hidden = [8]
[train]
steps = 3
progress = false
""")
    assert cli.main(["train", "--config", str(config), "-q"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "eval AUC" in out and "planted" not in out


@pytest.mark.parametrize("text,message", [
    ("[modle]\ndim = 3\n", "unknown section [modle]"),
    ("[model]\nwidth = 3\n", "unknown key 'width' in [model]"),
    ("[model\n", "not valid TOML"),
    ("[sparse_optimizer]\nname = 'adamax'\n", "unknown name 'adamax'"),
    ("[sparse_optimizer]\nname = 'sgd'\nbeta = 1\n", "sparse_optimizer 'sgd'"),
    ("[data]\nformat = 'csv'\ntrain = ['/no/such/file.csv']\n", "'/no/such/file.csv' does not exist"),
    ("[data]\nformat = 'xml'\n", "unknown format 'xml'"),
    ("[data]\ntrain = ['x.csv']\n", "data.format is 'synthetic'"),
])
def test_bad_settings_are_clear_errors_before_training(tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert cli.main(["train", "--config", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert "sparsecore train: error:" in err and message in err


def test_unknown_group_in_the_model_is_an_error(tmp_path, capsys):
    config = tmp_path / "groups.toml"
    config.write_text("[model]\ngroups = ['f0', 'page']\n")
    assert cli.main(SMALL + ["--config", str(config), "-q"]) == 1
    assert "unknown columns ['page']" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert cli.main(["train", "--config", "/no/such.toml"]) == 2
    assert "cannot read config '/no/such.toml'" in capsys.readouterr().err


def test_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path, capsys):
    path = tmp_path / "curves.png"
    code = cli.main(SMALL + ["--plot", str(path), "--log-every", "1", "--eval-every", "2", "-q"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2
        assert "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err
        return
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_dir_resumes_the_job(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    assert cli.main(SMALL + ["--checkpoint-dir", ckpt, "--steps", "2", "-q"]) == 0
    assert cli.main(SMALL + ["--checkpoint-dir", ckpt, "--steps", "5", "-q"]) == 0
    assert "trained 3 steps (5 in all)" in capsys.readouterr().out


def test_server_without_a_server_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sparsecore.server", None)
    assert cli.main(["server", "--port", "1"]) == 2
    assert "no parameter server" in capsys.readouterr().err


def test_server_passes_its_arguments_on(monkeypatch):
    calls = []
    fake = types.ModuleType("sparsecore.server")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "sparsecore.server", fake)
    assert cli.main(["server", "--port", "7000", "--shards", "4"]) == 0
    assert calls == [["--port", "7000", "--shards", "4"]]


def test_the_example_config_holds_the_defaults():
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "w2.toml")
    assert cli.load_settings(path) == cli.DEFAULTS
