"""The sparsecore command: help, the train job from flags and TOML, clear errors, server.

Most tests run the command as a user does (a subprocess: exit codes, messages, summaries);
stderr is then not a terminal, so there is no progress bar."""

import gzip
import os
import re
import subprocess
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
    out = capsys.readouterr().out
    assert "trained 3 steps, 600 samples" in out and "5 steps in all" in out


def test_server_help_lists_the_server_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["server", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--snapshot-dir" in out and "--shards" in out


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


# ----------------------------------------------------------------------------- as a user runs it
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
TINY = ["--batch-size", "10", "--dim", "2", "--hidden", "4", "--threads", "1"]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SPARSECORE_TOKEN", None)
    env.update(extra)
    return env


def run(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "sparsecore.cli", *map(str, args)], capture_output=True,
                          text=True, env=env or _env(), timeout=timeout)


def criteo_line(i):
    ints = [str((i * 7 + k) % 11) for k in range(13)]
    cats = [format((i * 31 + k * 17) % 97, "08x") for k in range(26)]
    return "\t".join([str(i % 2)] + ints + cats)


def write_lines(path, lines, opener=open):
    with opener(path, "wt") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def test_a_file_of_another_layout_fails_naming_the_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "four.tsv", ["1\t2\t3\t4"] * 20)
    r = run("train", "--data-format", "criteo", "--train-data", path, *TINY)
    assert r.returncode == 1
    assert f"{path}:1: expected 40 fields, found 4" in r.stderr and "no line of the data parses" in r.stderr
    assert "trained" not in r.stdout


def test_a_comma_separated_file_read_as_tsv_fails_saying_so(tmp_path):
    path = write_lines(tmp_path / "commas.tsv", [f"{i % 2},u{i},{i}" for i in range(30)])
    r = run("train", "--data-format", "tsv", "--train-data", path, "--columns", "y:label,user:categorical,x:dense",
            *TINY)
    assert r.returncode == 1 and "expected 3 fields, found 1 (delimiter tab)" in r.stderr


def test_malformed_lines_beyond_max_bad_fraction_fail_and_below_it_train(tmp_path):
    lines = [criteo_line(i) for i in range(200)]
    lines[50:55] = ["oops"] * 5  # 2.5 %
    path = write_lines(tmp_path / "some_bad.tsv", lines)
    r = run("train", "--data-format", "criteo", "--train-data", path, *TINY)
    assert r.returncode == 1
    assert "more than max_bad_fraction 0.01" in r.stderr and f"{path}:51: expected 40 fields, found 1" in r.stderr
    r = run("train", "--data-format", "criteo", "--train-data", path, "--max-bad-fraction", "0.05", *TINY)
    assert r.returncode == 0, r.stderr
    assert "trained 20 steps, 195 samples" in r.stdout


def test_the_summary_says_when_the_data_ran_out_before_steps(tmp_path):
    path = write_lines(tmp_path / "short.tsv", [criteo_line(i) for i in range(45)])
    r = run("train", "--data-format", "criteo", "--train-data", path, "--steps", "300", *TINY)
    assert r.returncode == 0, r.stderr
    assert "trained 5 steps, 45 samples" in r.stdout
    assert "ran out after 5 of the 300 steps asked for" in r.stdout
    rate = float(re.search(r"\(([\d,]+) samples/s\)", r.stdout).group(1).replace(",", ""))
    seconds = float(re.search(r"samples in ([\d.]+) s", r.stdout).group(1))
    assert rate <= 45 / max(seconds - 0.05, 1e-9) or seconds == 0.0  # computed from the 45 samples read


def test_an_empty_training_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "empty.tsv", [])
    r = run("train", "--data-format", "criteo", "--train-data", path, *TINY)
    assert r.returncode == 1 and "holds no sample" in r.stderr


def test_gzip_input_trains_like_the_plain_file(tmp_path):
    lines = [criteo_line(i) for i in range(60)]
    plain = write_lines(tmp_path / "day.tsv", lines)
    packed = write_lines(tmp_path / "day.tsv.gz", lines, opener=gzip.open)
    outs = []
    for path in (plain, packed):
        r = run("train", "--data-format", "criteo", "--train-data", path, "--eval-data", plain, "--deterministic",
                *TINY)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.splitlines()[-1])  # the eval line
        assert "trained 6 steps, 60 samples" in r.stdout
    assert outs[0] == outs[1]


def test_epochs_and_shuffle_read_every_sample_each_epoch(tmp_path):
    paths = [write_lines(tmp_path / f"part{k}.tsv", [criteo_line(i) for i in range(20 * k, 20 * k + 20)])
             for k in range(3)]
    r = run("train", "--data-format", "criteo", "--train-data", *paths, "--epochs", "3", "--shuffle",
            "--shuffle-buffer", "25", *TINY)
    assert r.returncode == 0, r.stderr
    assert "trained 18 steps, 180 samples" in r.stdout and "ran out" not in r.stdout


def test_epochs_and_shuffle_are_for_files():
    r = run("train", "--epochs", "2", "--steps", "1")
    assert r.returncode == 2 and "--epochs and --shuffle are for files" in r.stderr


def test_csv_columns_on_the_command_line_are_checked_against_the_header(tmp_path):
    rows = ["ts,user,clicked,genres"] + [f"{i},u{i % 7},{i % 2},g{i % 3}|g{i % 5}" for i in range(40)]
    path = write_lines(tmp_path / "ratings.csv", rows)
    r = run("train", "--data-format", "csv", "--header", "--train-data", path, "--columns",
            "clicked:label,user:categorical,genres:multi_categorical", *TINY)
    assert r.returncode == 0, r.stderr
    assert "trained 4 steps, 40 samples" in r.stdout and "2 tables" in r.stdout
    r = run("train", "--data-format", "csv", "--header", "--train-data", path, "--columns",
            "clicked:label,usr:categorical", *TINY)
    assert r.returncode == 2 and "columns ['usr'] are not in the header" in r.stderr and "ts, user" in r.stderr
    r = run("train", "--data-format", "csv", "--train-data", path, "--columns", "clicked:label,user", *TINY)
    assert r.returncode == 2 and "cannot read 'user'" in r.stderr


def test_tsv_format_reads_tabs_with_a_positional_schema(tmp_path):
    path = write_lines(tmp_path / "a.tsv", [f"{i % 2}\tu{i % 4}\t{i * 0.5}" for i in range(30)])
    r = run("train", "--data-format", "tsv", "--train-data", path, "--columns", "y:label,user:categorical,x:dense",
            *TINY)
    assert r.returncode == 0, r.stderr
    assert "trained 3 steps, 30 samples" in r.stdout


def test_an_unknown_flag_prints_the_usage_of_train():
    r = run("train", "--bogus", "3")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: sparsecore train") and "unrecognized arguments: --bogus 3" in r.stderr


def test_help_placeholders_are_words():
    r = run("train", "--help")
    assert r.returncode == 0
    for shown in ("--batch-size N", "--plot PNG", "--train-data PATH", "--columns SPEC", "--delimiter CHAR",
                  "--servers HOST:PORT,...", "--token-file PATH", "--max-bad-fraction X", "--epochs N"):
        assert shown in r.stdout, shown
    assert not re.search(r"[A-Z_]+\.[A-Z_]+", r.stdout)  # no DATA.BATCH_SIZE


def test_no_progress_bar_when_stderr_is_not_a_terminal_but_a_line_per_interval():
    r = run(*[a for a in SMALL if a != "--no-progress"], "--log-every", "2")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "step/s" not in r.stderr
    assert len(re.findall(r"step \d+ loss", r.stderr)) == 2


def test_other_libraries_info_logs_are_not_printed():
    script = ("import logging, sys\n"
              "from sparsecore import cli\n"
              "def job(settings):\n"
              "    logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
              "    logging.getLogger('sparsecore.trainer').info('ours')\n"
              "cli.run_train = job\n"
              "sys.exit(cli.main(['train']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ours" in r.stderr and "fontManager" not in r.stderr


def test_without_torch_train_says_how_to_install_it():
    script = "import sys; sys.modules['torch'] = None\nfrom sparsecore import cli\nsys.exit(cli.main(['train']))\n"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2
    assert "pip install torch==2.13.0" in r.stderr and "download.pytorch.org/whl/cpu" in r.stderr


def test_plot_evaluates_periodically_and_draws_the_planted_optimum(tmp_path, monkeypatch, capsys):
    from sparsecore.trainer import Trainer

    calls = []
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))  # presence is checked
    monkeypatch.setattr(Trainer, "plot", lambda self, path, points, planted=None: calls.append(
        (path, list(points), planted, list(self.history))))
    assert cli.main(SMALL + ["--steps", "20", "--plot", str(tmp_path / "c.png"), "-q"]) == 0
    (path, points, planted, history), = calls
    assert [s for s, _ in points] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert planted is not None and 0.5 < planted < 1
    assert len(history) == 20 and all("samples_per_s" in h and "rows" in h for h in history)


# ----------------------------------------------------------------------------- server and --servers
def start_server(*args, env=None):
    p = subprocess.Popen([sys.executable, "-m", "sparsecore.cli", "server", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env or _env())
    line = p.stdout.readline()
    if not line.startswith("listening on"):
        p.kill()
        p.wait()
        raise AssertionError(f"server did not start: {line!r} {p.stderr.read()}")
    return p, line.split()[2]


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def run_server_expecting_an_error(*args):
    r = subprocess.run([sys.executable, "-m", "sparsecore.cli", "server", *map(str, args)], capture_output=True,
                       text=True, env=_env(), timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    return r


@pytest.mark.parametrize("args,message", [
    (["--shards", "0"], "--shards must be >= 1, got 0"),
    (["--port", "70000"], "--port must be in [0, 65535]"),
    (["--server-index", "2", "--num-servers", "2"], "--server-index must be in [0, --num-servers)"),
    (["--token-file", "/no/such/token"], "cannot read token file '/no/such/token'"),
])
def test_server_argument_errors_are_one_line_and_exit_2(args, message):
    r = run_server_expecting_an_error(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"sparsecore server: error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert message in r.stderr


def test_server_unknown_flag_prints_its_usage():
    r = run_server_expecting_an_error("--bogus", "2")
    assert r.returncode == 2 and r.stderr.startswith("usage: sparsecore server")


def test_server_refuses_a_snapshot_dir_it_cannot_create(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = run_server_expecting_an_error("--snapshot-dir", blocker / "snapshots")
    assert r.returncode == 2 and "cannot create --snapshot-dir" in r.stderr
    r = run_server_expecting_an_error("--snapshot-dir", blocker)
    assert r.returncode == 2 and "is not a directory" in r.stderr


def test_server_creates_a_missing_snapshot_dir(tmp_path):
    p, _ = start_server("--snapshot-dir", tmp_path / "new" / "snaps")
    stop(p)
    assert (tmp_path / "new" / "snaps").is_dir()


def test_server_help_has_text_for_every_flag():
    r = subprocess.run([sys.executable, "-m", "sparsecore.cli", "server", "--help"], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert r.returncode == 0
    for flag in ("--address", "--port", "--shards", "--snapshot-dir", "--server-index", "--num-servers",
                 "--token-file", "--token", "--poll-us"):
        assert re.search(rf"^\s+{flag} [A-Z]+\s+[A-Za-z(]", r.stdout, re.M), flag


def test_train_against_servers_with_a_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    p, endpoint = start_server("--token-file", token, "--shards", "2")
    try:
        path = write_lines(tmp_path / "d.tsv", [criteo_line(i) for i in range(40)])
        job = ["train", "--data-format", "criteo", "--train-data", path, "--servers", endpoint, *TINY]
        r = run(*job, "--token-file", token)
        assert r.returncode == 0, r.stderr
        assert "trained 4 steps, 40 samples" in r.stdout and "26 tables" in r.stdout
        r = run(*job, env=_env(SPARSECORE_TOKEN="s3cret"))
        assert r.returncode == 0, r.stderr
        r = run(*job, env=_env(SPARSECORE_TOKEN="wrong"))
        assert r.returncode in (1, 2) and "sparsecore train: error:" in r.stderr and "Traceback" not in r.stderr
    finally:
        stop(p)


def test_train_servers_argument_errors(tmp_path):
    r = run("train", "--servers", "localhost", "--steps", "1")
    assert r.returncode == 2 and "'localhost' is not host:port" in r.stderr
    r = run("train", "--token-file", tmp_path / "t", "--steps", "1")
    assert r.returncode == 2 and "--token-file is for --servers" in r.stderr


# ----------------------------------------------------------------------------- the Trainer under the CLI
class _ReadOnlySource:
    """Batches whose labels and dense features are read-only arrays (as from pandas or Arrow)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        if self.i == self.batches:
            return None
        self.i += 1
        import numpy as np

        from sparsecore.data import Batch

        labels, dense = np.array([0.0, 1.0, 1.0], np.float32), np.ones((3, 2), np.float32)
        labels.flags.writeable = dense.flags.writeable = False
        ids = np.array([1, 2, 3], np.int64)
        return Batch(sparse={"g": (ids, np.array([0, 1, 2, 3], np.int64))}, labels=labels, dense=dense, num_samples=3)


def _tiny_trainer(batches, **kw):
    import torch

    import sparsecore as sc
    from sparsecore.trainer import Trainer

    model = torch.nn.Linear(4 + 2, 1)
    return Trainer(_ReadOnlySource(batches), model, {"g": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1))},
                   use_dense=True, log_every=0, **kw)


def test_read_only_arrays_train_without_the_numpy_writable_warning():
    import warnings

    trainer = _tiny_trainer(3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.fit(3).steps == 3


def test_progress_bar_total_is_what_was_trained_when_the_data_ends_first(monkeypatch):
    import tqdm

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "disable": True})
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    result = _tiny_trainer(3, progress=True).fit(10)
    assert result.steps == 3 and bars[0].total == 3


def _readme_block(marker):
    """The Python block holding ``marker`` in the README or docs/launch.md (its training loop)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = "".join(open(os.path.join(root, path)).read() for path in ("README.md", os.path.join("docs", "launch.md")))
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_readme_worker_script_runs_as_written_against_a_server(tmp_path):
    import socket

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    script = tmp_path / "train.py"
    script.write_text(_readme_block("dist.init_process_group"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    p, endpoint = start_server("--token-file", token)
    try:
        env = _env(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port),
                   SPARSECORE_SERVERS=endpoint, SPARSECORE_TOKEN="t0ken")
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        stop(p)
