"""bench/gpu_check.sh cannot pass without device coverage: without a GPU it fails in its
preflight within seconds, says why, builds nothing and writes a failed summary; an old
driver, an old GPU or a broken driver fail the same way (faked tools on PATH); a stage log
with skipped device tests is a failure; the stage limits fit in 8 minutes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
TIMEOUT = 60  # the preflight answers in well under a second; the bound only stops a hang


def run_check(tmp_path: Path, env_extra: dict[str, str] | None = None, path_prefix: Path | None = None):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    env.update(env_extra or {})
    build = tmp_path / "build"
    proc = subprocess.run(["bash", str(SCRIPT), str(build)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    return proc, summary, build


def fake_tool(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_gpu(directory: Path, cuda_version: str, compute_cap: str) -> None:
    fake_tool(directory, "nvidia-smi", f"""
if [ "$1" = "--query-gpu=name,compute_cap" ]; then echo "NVIDIA H100 80GB HBM3, {compute_cap}"; exit 0; fi
echo "| NVIDIA-SMI 520.00    Driver Version: 520.00    CUDA Version: {cuda_version}     |"
""")


def assert_failed_in_preflight(proc, summary, build, reason: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert reason in output, output
    assert summary["ok"] is False and summary["failure"].startswith("preflight") and reason in summary["failure"]
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["preflight"]["status"] == "failed"
    assert all(s["status"] == "not run" for name, s in stages.items() if name != "preflight")
    assert not build.exists(), "nothing may be configured or built before the preflight passes"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU driver is installed here (nvidia-smi found)")
def test_fails_fast_on_a_machine_without_a_gpu_and_says_why(tmp_path):
    proc, summary, build = run_check(tmp_path)
    assert_failed_in_preflight(proc, summary, build, "nvidia-smi not found")
    assert "FAILED" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_a_driver_that_cannot_talk_to_the_gpu_fails_the_preflight(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\"; exit 9\n")
    proc, summary, build = run_check(tmp_path, path_prefix=tmp_path / "bin")
    assert_failed_in_preflight(proc, summary, build, "nvidia-smi failed")


def test_a_driver_older_than_the_toolkit_fails_the_preflight_naming_both(tmp_path):
    fake_gpu(tmp_path / "bin", "11.8", "9.0")
    nvcc = fake_tool(tmp_path / "bin", "nvcc", "echo 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    proc, summary, build = run_check(tmp_path, {"CUDACXX": str(nvcc)}, tmp_path / "bin")
    assert_failed_in_preflight(proc, summary, build, "the driver supports CUDA 11.8 but the build uses CUDA 12.4")


def test_a_gpu_older_than_the_build_targets_fails_the_preflight(tmp_path):
    fake_gpu(tmp_path / "bin", "12.4", "7.0")
    proc, summary, build = run_check(tmp_path, path_prefix=tmp_path / "bin")
    assert_failed_in_preflight(proc, summary, build, "compute capability 7.0 < 8.0")


@pytest.mark.parametrize("log", [
    "SKIPPED [4] tests/test_cuda.py:15: skipped: no device\n12 passed, 4 skipped\n",
    "19/81 Test #19: cuda.Backends/CudaHashTable.Grows/device ....***Skipped   0.00 sec\n100% tests passed\n",
    '{"skipped": "no device: no CUDA driver"}\n',
], ids=["pytest", "ctest", "benchmark-json"])
def test_skipped_device_tests_are_a_failure(tmp_path, log):
    path = tmp_path / "stage.log"
    path.write_text(log)
    proc = subprocess.run(["bash", str(SCRIPT), "--coverage-gap", str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 3 and "gpu_check:" in proc.stdout


def test_a_stage_log_with_device_coverage_passes(tmp_path):
    path = tmp_path / "stage.log"
    path.write_text("100% tests passed, 0 tests failed out of 23\n")
    proc = subprocess.run(["bash", str(SCRIPT), "--coverage-gap", str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout


def test_stage_limits_fit_in_eight_minutes():
    plan = json.loads(subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True,
                                     timeout=TIMEOUT, check=True).stdout)
    limits = [s["limit_s"] for s in plan["stages"]]
    assert all(limit > 0 for limit in limits) and sum(limits) == plan["total_limit_s"] < 8 * 60
    names = [s["name"] for s in plan["stages"]]
    assert names[:3] == ["preflight", "configure", "build"]
    assert {"ctest-device", "pytest-device", "sanitizer-memcheck"} <= set(names)


def test_the_script_runs_only_device_variants_and_requires_tests_to_exist():
    text = SCRIPT.read_text()
    assert "--no-tests=error" in text
    assert "-R '^cuda\\\\..*/device'" in text and "-k 'not emulated'" in text
    assert "--target sparsecore_cuda_tests sparsecore_cuda_shift_matmul_tests _core" in text
