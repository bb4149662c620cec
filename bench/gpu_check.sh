#!/usr/bin/env bash
# The device check, in one command on a machine with an NVIDIA GPU, within 8 minutes:
#   preflight   seconds, before anything is built: nvidia-smi lists a GPU of compute
#               capability >= 8.0 (the build targets sm_80 and sm_90), its driver supports the
#               CUDA version of nvcc, compute-sanitizer is installed, and torch (when installed)
#               sees the GPU;
#   configure   CUDA kernels on, GoogleTest found (without it there are no C++ device tests);
#   build       only what the device run needs: the CUDA test binaries and the Python module;
#   then        sparsecore sees the device, the device variants of the C++ (ctest
#               --no-tests=error) and Python CUDA tests (the emulated ones run in CI),
#               compute-sanitizer memcheck / initcheck / synccheck on the C++ device tests,
#               the shift-matmul check, the CUDA benchmarks beside torch and the roofline.
# A device stage fails when it prints "skipped: no device", when ctest reports a skipped
# test, or when a benchmark answers {"skipped": ...}: a run without device coverage is red.
# Each stage has a time limit (the limits add up to STAGE_LIMITS_TOTAL < 480 s); the first
# failure of preflight, configure, build or device-visible stops the run.
# Writes $OUT (default <build>/gpu_check): gpu_check.json and gpu_check.md (stages, limits,
# exit codes, seconds, the first failure and why), and one log per stage.
# Usage: bench/gpu_check.sh [build dir]
#        bench/gpu_check.sh --plan               the stages and their limits, as JSON
#        bench/gpu_check.sh --coverage-gap LOG   exit 3 when a stage log shows skipped device tests
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# name:limit_seconds, in the order they run.
STAGES=(preflight:10 configure:40 build:160 device-visible:10 ctest-device:40 pytest-device:50 quant-cuda:20
  sanitizer-memcheck:35 sanitizer-initcheck:20 sanitizer-synccheck:20 bench-cuda:15 roofline:30)
STAGE_LIMITS_TOTAL=0
for s in "${STAGES[@]}"; do STAGE_LIMITS_TOTAL=$((STAGE_LIMITS_TOTAL + ${s#*:})); done

# Why a device stage's log shows no device coverage ("" when it does not).
coverage_gap() {
  if grep -q "skipped: no device" "$1"; then
    echo "a device test was skipped (\"skipped: no device\"): the run has no device coverage"
  elif grep -q '\*\*\*Skipped' "$1"; then
    echo "ctest skipped $(grep -c '\*\*\*Skipped' "$1") device test(s)"
  elif grep -q '"skipped"' "$1"; then
    echo "the benchmark skipped: $(grep -m1 '"skipped"' "$1")"
  fi
}

if [ "${1:-}" = "--plan" ]; then
  printf '{"total_limit_s": %d, "stages": [' "$STAGE_LIMITS_TOTAL"
  sep=""
  for s in "${STAGES[@]}"; do
    printf '%s{"name": "%s", "limit_s": %d}' "$sep" "${s%%:*}" "${s#*:}"
    sep=", "
  done
  printf ']}\n'
  exit 0
fi

if [ "${1:-}" = "--coverage-gap" ]; then  # --coverage-gap LOG: the verdict on one stage log
  gap=$(coverage_gap "$2")
  [ -z "$gap" ] || { echo "gpu_check: $gap"; exit 3; }
  exit 0
fi

build=${1:-$root/build/gpu}
out=${OUT:-$build/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$root/python"
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
declare -A rc_of seconds_of
failure=""

limit_of() {
  local s
  for s in "${STAGES[@]}"; do [ "${s%%:*}" = "$1" ] && echo "${s#*:}" && return; done
  echo "gpu_check: unknown stage $1" >&2
  exit 2
}

json_string() {  # a JSON string literal of $1
  local v=${1//\\/\\\\}
  v=${v//\"/\\\"}
  v=$(printf '%s' "$v" | tr '\n\t\r' '   ')
  printf '"%s"' "$v"
}

write_summary() {
  local ok=true status s name
  [ -z "$failure" ] || ok=false
  {
    printf '{"ok": %s, "failure": %s, "total_limit_s": %d, "out": %s, "stages": [' "$ok" \
      "$(json_string "$failure")" "$STAGE_LIMITS_TOTAL" "$(json_string "$out")"
    local sep=""
    for s in "${STAGES[@]}"; do
      name=${s%%:*}
      if [ -z "${rc_of[$name]+x}" ]; then
        printf '%s{"name": "%s", "limit_s": %d, "status": "not run"}' "$sep" "$name" "${s#*:}"
      else
        status=passed
        [ "${rc_of[$name]}" -eq 0 ] || status=failed
        printf '%s{"name": "%s", "limit_s": %d, "status": "%s", "rc": %d, "seconds": %d}' "$sep" "$name" \
          "${s#*:}" "$status" "${rc_of[$name]}" "${seconds_of[$name]}"
      fi
      sep=", "
    done
    printf ']}\n'
  } >"$out/gpu_check.json"
  {
    echo "# gpu_check: $([ "$ok" = true ] && echo passed || echo FAILED)"
    echo
    [ -z "$failure" ] || { echo "First failure: $failure"; echo; }
    echo "| stage | limit (s) | status | exit code | seconds |"
    echo "| --- | --- | --- | --- | --- |"
    for s in "${STAGES[@]}"; do
      name=${s%%:*}
      if [ -z "${rc_of[$name]+x}" ]; then
        echo "| $name | ${s#*:} | not run | | |"
      else
        status=passed
        [ "${rc_of[$name]}" -eq 0 ] || status=failed
        echo "| $name | ${s#*:} | $status | ${rc_of[$name]} | ${seconds_of[$name]} |"
      fi
    done
  } >"$out/gpu_check.md"
}
trap 'write_summary; echo "gpu_check: summary in $out/gpu_check.json and $out/gpu_check.md"' EXIT

fail() {  # fail STAGE REASON: record the first failure
  echo "gpu_check: $1 failed: $2" >&2
  [ -n "$failure" ] || failure="$1: $2"
}

# stage NAME COMMAND: runs `bash -c COMMAND` under the stage's limit, output to the console
# and to $out/NAME.log. Returns the exit code, made non-zero when the device was skipped.
stage() {
  local name=$1 cmd=$2 limit t0 rc gap
  limit=$(limit_of "$name")
  t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" bash -c "$cmd" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  gap=$(coverage_gap "$out/$name.log")
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "$name" "timed out after ${limit}s"
  elif [ "$rc" -ne 0 ]; then
    fail "$name" "exit code $rc (log: $out/$name.log): $(grep -m1 -i 'gpu_check:\|error\|failed' "$out/$name.log" || true)"
  elif [ -n "$gap" ]; then
    rc=3
    fail "$name" "$gap"
  fi
  rc_of[$name]=$rc
  seconds_of[$name]=$((SECONDS - t0))
  return "$rc"
}

# Exported for the preflight stage's own shell.
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
preflight() {
  local smi gpus cc driver_cuda toolkit
  command -v nvidia-smi >/dev/null || { echo "gpu_check: no GPU: nvidia-smi not found (no NVIDIA driver)"; return 1; }
  smi=$(nvidia-smi 2>&1) || { echo "gpu_check: no GPU: nvidia-smi failed: $(echo "$smi" | head -2)"; return 1; }
  gpus=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>&1) || {
    echo "gpu_check: nvidia-smi cannot list GPUs: $gpus"
    return 1
  }
  [ -n "$gpus" ] || { echo "gpu_check: no GPU: nvidia-smi lists none"; return 1; }
  echo "GPU: $gpus"
  cc=$(echo "$gpus" | head -1 | awk -F', *' '{print $2}')
  version_at_least "$cc" 8.0 || { echo "gpu_check: compute capability $cc < 8.0 (the build targets sm_80, sm_90)"; return 1; }
  [ -x "$NVCC" ] || { echo "gpu_check: nvcc not found (CUDACXX, PATH, /usr/local/cuda/bin)"; return 1; }
  toolkit=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p' | head -1)
  driver_cuda=$(echo "$smi" | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
  [ -n "$toolkit" ] && [ -n "$driver_cuda" ] || {
    echo "gpu_check: cannot read the CUDA versions (nvcc: '$toolkit', driver: '$driver_cuda')"
    return 1
  }
  version_at_least "$driver_cuda" "$toolkit" || {
    echo "gpu_check: the driver supports CUDA $driver_cuda but the build uses CUDA $toolkit (nvcc): update the driver"
    return 1
  }
  echo "CUDA: toolkit $toolkit, driver supports $driver_cuda"
  command -v compute-sanitizer >/dev/null || { echo "gpu_check: compute-sanitizer not found (CUDA toolkit)"; return 1; }
  if python3 -c 'import torch' 2>/dev/null; then
    python3 -c 'import torch; assert torch.cuda.is_available(), "torch is installed but torch.cuda.is_available() is False"' ||
      { echo "gpu_check: torch does not see the GPU"; return 1; }
  fi
  python3 -c 'import pytest, pybind11' || { echo "gpu_check: python3 needs pytest and pybind11"; return 1; }
}
export -f version_at_least preflight
export NVCC=$nvcc

stage preflight preflight || exit 1
stage configure "cmake -S '$root' -B '$build' -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSECORE_CUDA=ON \
  -DSPARSECORE_PYTHON=ON -DSPARSECORE_TESTS=ON -DCMAKE_CUDA_COMPILER='$nvcc' \
  -Dpybind11_DIR=\"\$(python3 -m pybind11 --cmakedir)\" && { cmake --build '$build' --target help | grep -q sparsecore_cuda_tests ||
  { echo 'gpu_check: GoogleTest not found by CMake (install libgtest-dev): no C++ device tests'; exit 1; }; }" || exit 1
stage build "cmake --build '$build' -j \$(nproc) --target sparsecore_cuda_tests sparsecore_cuda_shift_matmul_tests _core" ||
  exit 1
for f in "$build"/_core*.so "$build"/libsparsecore.so*; do ln -sf "$f" "$root/python/sparsecore/$(basename "$f")"; done
stage device-visible "python3 -c 'import sys; from sparsecore import cuda; cuda.is_available() or \
  sys.exit(\"gpu_check: sparsecore.cuda sees no device: \" + cuda.unavailable_reason())'" || exit 1

tests=$build/csrc/cuda/tests
stage ctest-device "ctest --test-dir '$build' -R '^cuda\\..*/device' --no-tests=error --output-on-failure -j 4"
stage pytest-device "cd '$root' && python3 -m pytest tests/test_cuda*.py tests/test_quant_cuda.py tests/test_initial_values.py \
  -k 'not emulated' -q -rs -p no:cacheprovider"
stage quant-cuda "python3 '$root/bench/gpu_quant_check.py' > '$out/quant_cuda.json'; rc=\$?; cat '$out/quant_cuda.json'; exit \$rc"
for tool in memcheck initcheck synccheck; do
  stage "sanitizer-$tool" "compute-sanitizer --tool $tool --error-exitcode 1 '$tests/sparsecore_cuda_tests' \
    --gtest_filter='*/device*'"
done
stage bench-cuda "cd '$root' && python3 -m pytest bench/test_bench_cuda.py -k 'not emulated' -q -rs -p no:cacheprovider \
  --benchmark-min-rounds=3 --benchmark-max-time=0.2 --benchmark-json='$out/bench_cuda.json' && \
  python3 bench/report.py '$out/bench_cuda.json'"
stage roofline "python3 '$root/bench/cuda_roofline.py' > '$out/roofline.json'; rc=\$?; cat '$out/roofline.json'; exit \$rc"

write_summary
cat "$out/gpu_check.md"
[ -z "$failure" ]
