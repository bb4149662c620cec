#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with the CUDA kernels, run the CUDA tests on the
# device (and the emulated ones), compute-sanitizer memcheck/racecheck when installed, then
# the roofline benchmark. Usage: bench/gpu_check.sh [build dir]   (prints a JSON result last)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/gpu}
nvidia-smi -L || { echo "gpu_check: no GPU visible (nvidia-smi failed)"; exit 1; }
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSECORE_CUDA=ON -DSPARSECORE_PYTHON=ON \
  -DSPARSECORE_TESTS=ON -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)"
cmake --build "$build" -j "$(nproc)"
for f in "$build"/_core*.so "$build"/libsparsecore.so*; do ln -sf "$f" "$root/python/sparsecore/$(basename "$f")"; done
ctest --test-dir "$build" -R '^cuda\.' --output-on-failure
PYTHONPATH="$root/python" python3 -m pytest "$root/tests/test_cuda.py" -q -rs
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 1 "$build/csrc/cuda/tests/sparsecore_cuda_tests" \
      --gtest_filter='*device*'
  done
else
  echo "gpu_check: compute-sanitizer not found; memcheck/racecheck skipped"
fi
PYTHONPATH="$root/python" python3 "$root/bench/cuda_roofline.py"
