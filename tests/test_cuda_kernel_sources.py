"""Every CUDA kernel declares its launch bounds (SC_LAUNCH_BOUNDS: the block size launches are
held to and the register budget that keeps the hot kernels out of local memory;
SC_LAUNCH_BOUNDS_WIDE: the same blocks with a larger register budget, for the fused update), and
the kernels are compiled without floating-point contraction."""

from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
KERNEL = re.compile(r"__global__\s+void\s+(\w+)(?:\s*\(|\s+(\w+)\s*\()")


def kernels() -> list[tuple[str, str, str]]:
    """(file, first word after `void`, kernel name) of every kernel definition."""
    found = []
    for path in sorted(KERNEL_DIR.glob("*.cu*")):
        for m in KERNEL.finditer(path.read_text()):
            first, name = m.group(1), m.group(2) or m.group(1)
            found.append((path.name, first, name))
    return found


def test_kernels_are_found():
    names = {name for _, _, name in kernels()}
    assert {"lookup_kernel", "pool_kernel", "update_rows_kernel", "shift_gemm_kernel"} <= names


def test_every_kernel_declares_its_launch_bounds():
    missing = [f"{file}: {name}" for file, first, name in kernels()
               if first not in ("SC_LAUNCH_BOUNDS", "SC_LAUNCH_BOUNDS_WIDE")]
    assert not missing, f"kernels without SC_LAUNCH_BOUNDS: {missing}"


def test_device_code_is_compiled_without_contraction():
    # The update rules and pooling are shared with the CPU engine, which is built without
    # contracting a * b + c into an FMA; nvcc contracts by default, so the kernels' build must
    # say --fmad=false for the device to give the CPU's bits.
    cmake = (KERNEL_DIR / "CMakeLists.txt").read_text()
    options = re.search(r"target_compile_options\(sparsecore_cuda_kernels PRIVATE(.*?)\)\n", cmake, re.S)
    assert options and "--fmad=false" in options.group(1)
