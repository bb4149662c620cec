#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: build with the CUDA kernels (warnings as
# errors, ptxas report checked), run the CUDA tests on the device and under emulation (C++
# and Python), compute-sanitizer memcheck and racecheck on the device tests when installed,
# the CUDA benchmarks side by side with torch, then the roofline benchmark (JSON).
# Every stage has its own time limit so the whole run fits in 10 minutes; a summary of the
# stages' exit codes comes last, and the script exits non-zero if any stage failed.
# Usage: bench/gpu_check.sh [build dir]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/gpu}
out=${OUT:-$build/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$root/python"
summary=()
failed=0

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  summary+=("$name: rc=$rc in $((SECONDS - t0))s")
  [ $rc -eq 0 ] || failed=1
  return $rc
}

nvidia-smi -L || { echo "gpu_check: no GPU visible (nvidia-smi failed)"; exit 1; }
stage configure 120 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSECORE_CUDA=ON \
  -DSPARSECORE_PYTHON=ON -DSPARSECORE_TESTS=ON -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" || exit 1
stage build 300 cmake --build "$build" -j "$(nproc)" || { printf '%s\n' "${summary[@]}"; exit 1; }
for f in "$build"/_core*.so "$build"/libsparsecore.so*; do ln -sf "$f" "$root/python/sparsecore/$(basename "$f")"; done

stage ctest-cuda 120 ctest --test-dir "$build" -R '^cuda\.' --output-on-failure -j 4
stage pytest-cuda 120 python3 -m pytest "$root"/tests/test_cuda*.py "$root"/tests/test_quant_cuda.py -q -rs
stage quant-cuda 90 bash -c "PYTHONPATH='$root/python' python3 '$root/bench/gpu_quant_check.py' > '$out/quant_cuda.json'"
cat "$out/quant_cuda.json" 2>/dev/null
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    stage "sanitizer-$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$build/csrc/cuda/tests/sparsecore_cuda_tests" --gtest_filter='*device*'
  done
else
  summary+=("compute-sanitizer: not found, memcheck/racecheck skipped")
fi
stage bench-cuda 90 python3 -m pytest "$root/bench/test_bench_cuda.py" -q --benchmark-min-rounds=5 \
  --benchmark-max-time=0.5 --benchmark-json="$out/bench_cuda.json"
[ -f "$out/bench_cuda.json" ] && python3 "$root/bench/report.py" "$out/bench_cuda.json" || true
stage roofline 150 bash -c "python3 '$root/bench/cuda_roofline.py' > '$out/roofline.json'"
cat "$out/roofline.json" 2>/dev/null

echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $failed
