"""Float shift-matmul kernels: bit for bit against a NumPy model of their summation orders
(csrc/sparsecore/quant/detail/shift_kernels.h), and bit for bit across the ISA paths."""

import os
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc

BLOCK = 128  # columns per block of the GEMV order; lane j takes columns 8j..8j+7 of each block
GEMM_MIN_BATCH = 4
NIBBLE_VALUES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 0, -1, -2, -4, -8, -16, -32, -64], np.float32)


def random_codes(rng, rows, cols):
    """Any bytes: zero codes, negative codes and the unused 'negative zero' nibble 8 included."""
    codes = rng.integers(0, 256, (rows, (cols + 1) // 2), dtype=np.uint8)
    if cols % 2:
        codes[:, -1] &= 0x0F  # an odd last column leaves the high nibble 0
    return codes


def code_matrix(codes, cols):
    nib = np.empty((codes.shape[0], 2 * codes.shape[1]), np.int64)
    nib[:, 0::2] = codes & 15
    nib[:, 1::2] = codes >> 4
    return NIBBLE_VALUES[nib[:, :cols]]


def reference(x, codes, alpha, cols):
    """float32 model of the kernels' summation orders: y (batch, rows)."""
    w = code_matrix(codes, cols)
    batch, rows = x.shape[0], w.shape[0]
    if batch >= GEMM_MIN_BATCH:  # one running sum over the columns in order
        s = np.zeros((batch, rows), np.float32)
        for c in range(cols):
            s += x[:, c, None] * w[None, :, c]
        return alpha * s
    blocks = cols // BLOCK
    p = np.zeros((2, batch, rows, 16), np.float32)  # [nibble parity, ..., lane]
    for b in range(blocks):
        for i in range(8):
            cs = slice(b * BLOCK + i, (b + 1) * BLOCK, 8)  # column 8j + i of each lane j
            p[i & 1] += x[:, None, cs] * w[None, :, cs]
    q = p[0] + p[1]
    q = q[..., :8] + q[..., 8:]
    q = q[..., :4] + q[..., 4:]
    tree = (q[..., 0] + q[..., 2]) + (q[..., 1] + q[..., 3])
    u = np.zeros((batch, rows), np.float32)
    for c in range(blocks * BLOCK, cols):
        u += x[:, c, None] * w[None, :, c]
    return alpha * (tree + u)


def packed(codes, alpha, cols):
    return sc.PackedWeights(codes, alpha, (codes.shape[0], cols), "channel")


SHAPES = [(1, 1, 1), (1, 7, 31), (1, 9, 128), (1, 13, 97), (3, 5, 256), (3, 11, 300), (2, 6, 1025), (64, 7, 33),
          (64, 13, 256), (257, 5, 70), (4, 17, 300), (1, 64, 1025),
          # edges of the GEMM's panels (16 rows), column groups (8) and register tile (8 rows of x)
          (8, 16, 8), (9, 17, 9), (17, 33, 15), (5, 48, 7), (16, 1, 2),
          # GEMV row steps (8, then 4, then single rows), the last step ending at the last row with
          # 1, 0 or 2 bytes after its last block (no room, or room, to read past it)
          (1, 24, 258), (1, 28, 256), (2, 20, 260), (1, 45, 1028),
          # AVX-512 batch-lane tiles (blocks of 16 rows of x, 8 outputs) and the rows of x after them
          (16, 9, 33), (32, 17, 130), (33, 24, 7), (50, 31, 129)]


@pytest.mark.parametrize("batch,rows,cols", SHAPES)
def test_float_kernel_is_bitwise_its_summation_order(rng, batch, rows, cols):
    codes = random_codes(rng, rows, cols)
    alpha = rng.uniform(0.01, 2.0, rows).astype(np.float32)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y = sc.shift_matmul(x, packed(codes, alpha, cols))
    ref = reference(x, codes, alpha, cols)
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))
    exact = x.astype(np.float64) @ (alpha[:, None] * code_matrix(codes, cols)).T.astype(np.float64)
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(code_matrix(codes, cols)).T * alpha) + 1e-30
    assert np.all(np.abs(y - exact) <= bound)


def test_gemm_and_gemv_of_a_row_agree_to_rounding(rng):
    codes = random_codes(rng, 19, 300)
    alpha = rng.uniform(0.5, 1.0, 19).astype(np.float32)
    x = rng.standard_normal((GEMM_MIN_BATCH, 300)).astype(np.float32)
    p = packed(codes, alpha, 300)
    whole, row = sc.shift_matmul(x, p), sc.shift_matmul(x[:1], p)
    w = code_matrix(codes, 300)
    bound = 300 * 2.0**-24 * (np.abs(x[:1]) @ np.abs(w).T) * alpha
    assert np.all(np.abs(whole[:1] - row) <= bound)


def inputs_for_every_path(rng):
    """Cases: (x, codes, alpha, cols), covering both kernels' tails and x where the CPU
    kernels hand over to the portable one (huge, Inf, NaN)."""
    cases = []
    for batch, rows, cols in SHAPES:
        codes = random_codes(rng, rows, cols)
        alpha = rng.uniform(0.01, 2.0, rows).astype(np.float32)
        x = (rng.standard_normal((batch, cols)) * rng.uniform(0.1, 1e3)).astype(np.float32)
        cases.append((x, codes, alpha, cols))
    for batch in (5, 40):  # zero, negative zero and subnormal x (exact products all the same)
        codes = random_codes(rng, 17, 45)
        x = rng.standard_normal((batch, 45)).astype(np.float32)
        kind = rng.integers(0, 4, x.shape)
        x[kind == 0], x[kind == 1] = 0.0, -0.0
        x[kind == 2] *= np.float32(2.0**-130)
        cases.append((x, codes, rng.uniform(0.01, 2.0, 17).astype(np.float32), 45))
    for batch in (1, 5):
        codes = random_codes(rng, 9, 70)
        alpha = np.ones(9, np.float32)
        huge = (rng.standard_normal((batch, 70)) * 2.0**124).astype(np.float32)  # products overflow
        cases.append((huge, codes, alpha, 70))
        special = rng.standard_normal((batch, 70)).astype(np.float32)
        special[0, 3], special[-1, 40] = np.inf, np.nan
        cases.append((special, codes, alpha, 70))
    return cases


RUN_KERNEL = """
import sys, numpy as np, sparsecore as sc
data = np.load(sys.argv[1])
out = {"kernel": np.array(sc._core.shift_matmul_kernel())}
for i in range(int(data["n"])):
    x, codes, alpha, cols = data[f"x{i}"], data[f"c{i}"], data[f"a{i}"], int(data[f"k{i}"])
    p = sc.PackedWeights(codes, alpha, (codes.shape[0], cols), "channel")
    out[f"y{i}"] = sc.shift_matmul(x, p)
np.savez(sys.argv[2], **out)
"""


def run_with_kernel(kernel, inputs, tmp_path, script=RUN_KERNEL):
    env = dict(os.environ)
    env.pop("SPARSECORE_QUANT_KERNEL", None)
    if kernel != "best":
        env["SPARSECORE_QUANT_KERNEL"] = kernel
    out = tmp_path / f"{kernel}.npz"
    subprocess.run([sys.executable, "-c", script, str(inputs), str(out)], env=env, check=True, timeout=120)
    return np.load(out)


def test_every_isa_path_gives_the_same_bits(rng, tmp_path):
    cases = inputs_for_every_path(rng)
    arrays = {"n": np.array(len(cases))}
    for i, (x, codes, alpha, cols) in enumerate(cases):
        arrays.update({f"x{i}": x, f"c{i}": codes, f"a{i}": alpha, f"k{i}": np.array(cols)})
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **arrays)
    kernels = ["portable"] + (["avx2"] if "avx2" in sc.cpu_features() and "fma" in sc.cpu_features() else [])
    results = {k: run_with_kernel(k, inputs, tmp_path) for k in kernels + ["best"]}
    for k in kernels:
        assert str(results[k]["kernel"]) == k
    for i in range(len(cases)):
        base = results["portable"][f"y{i}"]
        for k, r in results.items():
            np.testing.assert_array_equal(r[f"y{i}"].view(np.uint32), base.view(np.uint32), err_msg=f"{k}, case {i}")
    # the huge and special x still give the model's answer (products overflow to Inf, NaN spreads)
    for i, (x, codes, alpha, cols) in enumerate(cases):
        with np.errstate(over="ignore", invalid="ignore"):
            ref = reference(x, codes, alpha, cols)
        np.testing.assert_array_equal(np.isnan(results["best"][f"y{i}"]), np.isnan(ref))
        finite = ~np.isnan(ref)
        np.testing.assert_array_equal(results["best"][f"y{i}"][finite], ref[finite])


def test_fixed_point_kernels_give_the_same_sums(rng, tmp_path):
    """The VNNI dot-product kernel (where the CPU has it) and the portable shift loop give the
    exact sums, including the extremes of int8 and int16 sums as large as the range check allows."""
    cols, arrays = 201, {}
    for i, (dtype, top) in enumerate([(np.int8, 127), (np.int16, 32767)]):
        x = rng.integers(-top - 1, top + 1, (11, cols))
        if dtype == np.int16:  # sum |x| * 64 <= 2^31 - 1
            x = x * ((2**31 - 1) // 64 // cols) // (top + 1)
        arrays.update({f"x{i}": x.astype(dtype), f"c{i}": random_codes(rng, 37, cols)})
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **arrays)
    script = (
        "import sys, numpy as np, sparsecore as sc\n"
        "d = np.load(sys.argv[1])\n"
        "out = {'kernel': np.array(sc._core.shift_matmul_fixed_kernel())}\n"
        "for i in range(2):\n"
        "    p = sc.PackedWeights(d[f'c{i}'], np.ones(37, np.float32), (37, %d), 'channel')\n"
        "    out[f'y{i}'] = sc.shift_matmul(d[f'x{i}'], p)\n"
        "    out[f'v{i}'] = sc.shift_matmul(d[f'x{i}'][:3], p)  # one row of x at a time\n"
        "np.savez(sys.argv[2], **out)\n") % cols
    results = {k: run_with_kernel(k, inputs, tmp_path, script) for k in ["portable", "best"]}
    assert str(results["portable"]["kernel"]) == "portable"
    for i in range(2):
        ref = arrays[f"x{i}"].astype(np.int64) @ code_matrix(arrays[f"c{i}"], cols).astype(np.int64).T
        for kernel in results:
            np.testing.assert_array_equal(results[kernel][f"y{i}"], ref)
            np.testing.assert_array_equal(results[kernel][f"v{i}"], ref[:3])


SERVE_PANELS = """
import sys, numpy as np
from sparsecore import _core
data = np.load(sys.argv[1])
g = _core.DenseGraph.load(str(data["dir"]))
np.savez(sys.argv[2], kernel=np.array(_core.shift_matmul_kernel()),
         **{f"y{b}": g.run({"a": data[f"x{b}"]}) for b in data["batches"]})
"""


def test_served_shift_layers_are_the_panel_order_on_every_path(rng, tmp_path):
    """DenseGraph's shift_linear runs the panel kernel at every batch, batch 1 included: y = alpha ·
    (running sum over the columns in order) + bias, bit for bit, whatever ISA path is forced."""
    torch = pytest.importorskip("torch")
    from sparsecore.export import export_dense

    rows, cols = 37, 141  # past one 128-column block: the GEMV order would differ
    codes = random_codes(rng, rows, cols)
    alpha = rng.uniform(0.01, 2.0, rows).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Linear(cols, rows))
    with torch.no_grad():
        model[0].bias.copy_(torch.from_numpy(bias))
    served = sc.quantize_module(model, {"0.weight": packed(codes, alpha, cols)})
    export_dense(tmp_path / "m", served, [("a", "pooled", cols)])
    batches = [1, 2, 3, 8, 9, 20]
    xs = {f"x{b}": rng.standard_normal((b, cols)).astype(np.float32) for b in batches}
    inputs = tmp_path / "serve.npz"
    np.savez(inputs, dir=np.array(str(tmp_path / "m")), batches=np.array(batches), **xs)
    kernels = ["portable"] + (["avx2"] if "avx2" in sc.cpu_features() and "fma" in sc.cpu_features() else [])
    w = code_matrix(codes, cols)
    for kernel in kernels + ["best"]:
        got = run_with_kernel(kernel, inputs, tmp_path, SERVE_PANELS)
        for b in batches:
            x = xs[f"x{b}"]
            s = np.zeros((b, rows), np.float32)
            for c in range(cols):
                s += x[:, c, None] * w[None, :, c]
            ref = alpha * s + bias
            np.testing.assert_array_equal(got[f"y{b}"].view(np.uint32), ref.view(np.uint32),
                                          err_msg=f"{kernel}, batch {b}")
