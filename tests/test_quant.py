"""Power-of-two projection, 4-bit packing, shift matmul and row quantization against NumPy
references that round the same way."""

import os
import subprocess
import sys

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import _core

POW2_3BIT = np.array([-4, -2, -1, 0, 1, 2, 4], dtype=np.float32)
NIBBLE_VALUES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 0, -1, -2, -4, -8, -16, -32, -64], dtype=np.float32)


# ------------------------------------------------------------------------------ references
def ref_project_group(w, cb, max_iter=100):
    """Alternating closed forms, same float32 division and midpoint ties as the C++ code."""
    cb = np.asarray(cb, dtype=np.float32)
    mids = (cb[:-1] + cb[1:]) * np.float32(0.5)
    nonzero = np.abs(cb[cb != 0]).astype(np.float64)
    sum_abs = np.abs(w.astype(np.float64)).sum()
    alpha = np.float32(sum_abs / w.size / nonzero.mean()) if sum_abs > 0 else np.float32(1)
    index = None
    for _ in range(max_iter):
        k = np.searchsorted(mids, w / alpha, side="left")
        if index is not None and np.array_equal(k, index):
            break
        index = k
        q = cb[k].astype(np.float64)
        num, den = float(np.dot(w.astype(np.float64), q)), float(np.dot(q, q))
        nxt = np.float32(num / den) if den > 0 else np.float32(0)
        if not (nxt > 0 and np.isfinite(nxt)):
            break
        alpha = nxt
    return alpha * cb[index], alpha


def ref_project(w, cb, per_channel):
    if not per_channel:
        p, a = ref_project_group(w.reshape(-1), cb)
        return p.reshape(w.shape), np.array([a], dtype=np.float32)
    out = [ref_project_group(row, cb) for row in w]
    return np.stack([p for p, _ in out]), np.array([a for _, a in out], dtype=np.float32)


def ref_pack(w, alpha):
    r = w / alpha[:, None]
    mant, exp = np.frexp(np.abs(r))  # |r| = mant * 2^exp, mant in [0.5, 1)
    assert np.all((r == 0) | ((mant == 0.5) & (exp >= 1) & (exp <= 7)))
    nib = np.where(r == 0, 0, exp + 8 * (r < 0)).astype(np.uint8)
    if w.shape[1] % 2:
        nib = np.concatenate([nib, np.zeros((w.shape[0], 1), np.uint8)], axis=1)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


def ref_unpack(codes, alpha, cols):
    nib = np.stack([codes & 15, codes >> 4], axis=2).reshape(codes.shape[0], -1)[:, :cols]
    return alpha[:, None] * NIBBLE_VALUES[nib]


def random_pow2_weight(rng, rows, cols, alpha=None):
    alpha = rng.uniform(0.01, 2.0, rows).astype(np.float32) if alpha is None else alpha
    nib = rng.integers(0, 16, (rows, cols))
    nib[nib == 8] = 0
    return alpha[:, None] * NIBBLE_VALUES[nib], alpha


# ------------------------------------------------------------------------------ projection
@pytest.mark.parametrize("codebook", ["pow2-3bit", "pow2-2bit", "ternary", "binary", [-0.5, 0.0, 0.25, 1.0]])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 18), (16, 100)])
def test_projection_matches_reference(rng, codebook, granularity, shape):
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3)
    q = sc.Quantizer(codebook, granularity)
    projected, alpha = q.project(w)
    ref_p, ref_a = ref_project(w, q.codebook, granularity == "channel")
    np.testing.assert_allclose(alpha, ref_a, rtol=1e-6)
    np.testing.assert_allclose(projected, ref_p, rtol=1e-6, atol=0)
    # every element is alpha times a codebook value
    a = alpha if granularity == "channel" else np.full(shape[0], alpha[0])
    assert np.all(np.isin(np.round(projected / a[:, None], 5), q.codebook))


def test_projection_is_stable_and_optimal_for_its_codes(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    q = sc.Quantizer("pow2-3bit", "channel")
    p, alpha = q.project(w)
    codes = p / alpha[:, None]
    # stable: given alpha, every weight's nearest codebook value is its code
    mids = (q.codebook[:-1] + q.codebook[1:]) * np.float32(0.5)
    np.testing.assert_array_equal(q.codebook[np.searchsorted(mids, w / alpha[:, None])], codes)
    best = (w * codes).sum(1) / (codes * codes).sum(1)
    np.testing.assert_allclose(alpha, best, rtol=1e-5)


def test_projection_keeps_shape_and_torch_kind(rng):
    torch = pytest.importorskip("torch")
    w = torch.randn(4, 3, 2, 2)
    p, alpha = sc.Quantizer("ternary", "channel").project(w)
    assert isinstance(p, torch.Tensor) and p.shape == w.shape and alpha.shape == (4,)


def test_all_zero_weight_projects_to_zero():
    p, alpha = sc.Quantizer("pow2-3bit").project(np.zeros((3, 5), np.float32))
    assert np.all(p == 0) and alpha[0] == 1.0


# ------------------------------------------------------------------------------ packing
@pytest.mark.parametrize("cols", [1, 2, 3, 17, 64, 101])
def test_pack_and_unpack_match_reference(rng, cols):
    w, alpha = random_pow2_weight(rng, 5, cols)
    packed = sc.pack_pow2(w, alpha)
    np.testing.assert_array_equal(packed.codes, ref_pack(w, alpha))
    np.testing.assert_array_equal(packed.dequantize(), ref_unpack(packed.codes, alpha, cols))
    np.testing.assert_array_equal(packed.dequantize(), w)


def test_export_packs_projection_with_alpha_absorbing_smallest_power(rng):
    w = rng.standard_normal((6, 40)).astype(np.float32)
    q = sc.Quantizer([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], "channel")
    projected, _ = q.project(w)
    packed = q.pack(w)
    np.testing.assert_allclose(packed.dequantize(), projected, rtol=1e-6)
    assert packed.nbytes == 6 * 20 + 6 * 4


def test_packed_bytes_are_an_eighth_of_fp32(rng):
    w = rng.standard_normal((256, 512)).astype(np.float32)
    packed = sc.Quantizer("pow2-3bit", "layer").pack(w)
    assert packed.nbytes == 256 * 256 + 4
    assert w.nbytes / packed.nbytes > 7.9


# ------------------------------------------------------------------------------ shift matmul
def float_tolerance(x, w):
    return 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T) + 1e-30


@pytest.mark.parametrize("batch", [1, 2, 4, 7, 33])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 18), (5, 31), (13, 32), (9, 33), (17, 100), (6, 257)])
def test_shift_matmul_float_matches_reference(rng, batch, rows, cols):
    w, alpha = random_pow2_weight(rng, rows, cols)
    packed = sc.pack_pow2(w, alpha)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y = sc.shift_matmul(x, packed)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert y.shape == (batch, rows) and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= float_tolerance(x, w))


def test_shift_matmul_vector_and_torch_inputs(rng):
    torch = pytest.importorskip("torch")
    w, alpha = random_pow2_weight(rng, 8, 20)
    packed = sc.pack_pow2(w, alpha)
    x = rng.standard_normal(20).astype(np.float32)
    assert sc.shift_matmul(x, packed).shape == (8,)
    yt = sc.shift_matmul(torch.from_numpy(x).reshape(1, 1, 20), packed)
    assert isinstance(yt, torch.Tensor) and yt.shape == (1, 1, 8)
    np.testing.assert_allclose(yt.numpy().reshape(8), sc.shift_matmul(x, packed), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
@pytest.mark.parametrize("batch,rows,cols", [(1, 1, 1), (3, 7, 33), (5, 16, 200), (9, 33, 7), (17, 50, 129),
                                             (64, 97, 301), (2, 9, 193), (1, 40, 1024)])
def test_shift_matmul_fixed_point_is_exact(rng, dtype, batch, rows, cols):
    w, alpha = random_pow2_weight(rng, rows, cols)
    packed = sc.pack_pow2(w, alpha)
    lo, hi = (-128, 127) if dtype == np.int8 else (-2000, 2000)
    x = rng.integers(lo, hi + 1, (batch, cols)).astype(dtype)
    x[0, 0] = lo  # the extreme of the range (int8: -128, which the VNNI kernel offsets to 0)
    acc = sc.shift_matmul(x, packed)
    ref = x.astype(np.int64) @ (w / alpha[:, None]).astype(np.int64).T
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, ref)
    scale = 0.0123
    y = sc.shift_matmul(x, packed, x_scale=scale)
    np.testing.assert_array_equal(y, ref.astype(np.float32) * alpha * np.float32(scale))


def test_quantized_activations_round_half_even():
    q, scale = sc.quantize_activations(np.array([0.5, 1.5, -2.5, 127.0], np.float32), bits=8, scale=1.0)
    np.testing.assert_array_equal(q, np.array([0, 2, -2, 127], np.int8))
    q, scale = sc.quantize_activations(np.array([1.0, -4.0], np.float32))
    assert scale == pytest.approx(4.0 / 127) and q[1] == -127


@pytest.mark.parametrize("kernel", ["portable", "avx2"])
def test_every_float_kernel_matches_reference(kernel):
    if kernel == "avx2" and "avx2" not in sc.cpu_features():
        pytest.skip("skipped: CPU has no AVX2")
    script = (
        "import numpy as np, sparsecore as sc, sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_quant import random_pow2_weight, float_tolerance\n"
        "assert sc._core.shift_matmul_kernel() == %r, sc._core.shift_matmul_kernel()\n"
        "rng = np.random.default_rng()\n"
        "for b, r, c in [(1, 9, 47), (1, 13, 96), (6, 7, 300), (40, 11, 70)]:\n"
        "    w, a = random_pow2_weight(rng, r, c)\n"
        "    x = rng.standard_normal((b, c)).astype(np.float32)\n"
        "    y = sc.shift_matmul(x, sc.pack_pow2(w, a))\n"
        "    assert np.all(np.abs(y - x.astype(np.float64) @ w.T) <= float_tolerance(x, w))\n"
    ) % (os.path.dirname(__file__), kernel)
    env = dict(os.environ, SPARSECORE_QUANT_KERNEL=kernel)
    subprocess.run([sys.executable, "-c", script], env=env, check=True)


def test_results_do_not_depend_on_threads(rng):
    w, alpha = random_pow2_weight(rng, 301, 129)
    packed = sc.pack_pow2(w, alpha)
    x = rng.standard_normal((9, 129)).astype(np.float32)
    before = sc.num_threads()
    try:
        sc.set_num_threads(1)
        one = [sc.shift_matmul(x, packed), sc.shift_matmul(x[:1], packed)]
        sc.set_num_threads(3)
        three = [sc.shift_matmul(x, packed), sc.shift_matmul(x[:1], packed)]
    finally:
        sc.set_num_threads(before)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ bad input
def test_wrong_code_width_is_refused(rng):
    w, alpha = random_pow2_weight(rng, 4, 10)
    packed = sc.pack_pow2(w, alpha)
    with pytest.raises(ValueError, match="code width"):
        _core.shift_matmul_float(np.zeros((1, 12), np.float32), packed.codes, alpha, 12)
    with pytest.raises(ValueError, match="code width"):
        _core.unpack_pow2(packed.codes, alpha, 30)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_non_positive_alpha_is_refused(rng, bad):
    w, alpha = random_pow2_weight(rng, 3, 8)
    packed = sc.pack_pow2(w, alpha)
    packed.alpha[1] = bad
    with pytest.raises(ValueError, match="alpha"):
        sc.shift_matmul(np.ones(8, np.float32), packed)
    with pytest.raises(ValueError, match="alpha"):
        sc.pack_pow2(w, np.array([1.0, bad, 1.0], np.float32))


def test_shape_mismatch_is_refused(rng):
    w, alpha = random_pow2_weight(rng, 3, 8)
    packed = sc.pack_pow2(w, alpha)
    with pytest.raises(ValueError, match="shape"):
        sc.shift_matmul(np.ones((2, 9), np.float32), packed)
    with pytest.raises(TypeError, match="dtype"):
        sc.shift_matmul(np.ones((2, 8), np.float64), packed)


def test_nan_weights_are_refused(rng):
    w = rng.standard_normal((3, 8)).astype(np.float32)
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"weight \[1, 2\]"):
        sc.Quantizer().project(w)
    with pytest.raises(ValueError, match="not finite"):
        sc.pack_pow2(w, np.ones(3, np.float32))


def test_weight_off_the_codebook_is_refused_by_pack(rng):
    w, alpha = random_pow2_weight(rng, 2, 4)
    w[0, 1] = alpha[0] * 3
    with pytest.raises(ValueError, match=r"weight \[0, 1\]"):
        sc.pack_pow2(w, alpha)
    with pytest.raises(ValueError, match="7 octaves"):
        sc.Quantizer([-1.0, 0.0, 0.3, 1.0]).pack(w)


def test_fixed_point_overflow_is_refused():
    w = np.full((1, 2000), 64.0, np.float32)
    packed = sc.pack_pow2(w, np.ones(1, np.float32))
    with pytest.raises(ValueError, match="overflow"):
        sc.shift_matmul(np.full((1, 2000), 30000, np.int16), packed)


def test_bad_quantizer_arguments():
    with pytest.raises(ValueError, match="codebook"):
        sc.Quantizer("pow2-9bit")
    with pytest.raises(ValueError, match="granularity"):
        sc.Quantizer(granularity="row")
    with pytest.raises(ValueError, match="non-zero"):
        sc.Quantizer([0.0])


# ------------------------------------------------------------------------------ rows
def ref_quantize_rows(x, fmt):
    if fmt == "fp16":
        return x.astype(np.float16).astype(np.float32)
    levels = np.float32(255 if fmt == "int8" else 15)
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    scale = (hi - lo) / levels
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.clip(np.rint((x - lo) / scale), 0, levels), 0).astype(np.float32)
    return q * scale + lo


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("dim", [1, 3, 18, 64])
def test_row_quantization_matches_reference(rng, fmt, dim):
    x = (rng.standard_normal((50, dim)) * rng.uniform(0.001, 100)).astype(np.float32)
    x[0] = 1.25  # constant row
    rows = sc.QuantizedRows(x, fmt)
    assert rows.data.shape == (50, _core.quantized_row_bytes(fmt, dim))
    np.testing.assert_array_equal(rows.dequantize(), ref_quantize_rows(x, fmt))


def test_fp16_rounding_of_edge_values():
    x = np.array([[65504.0, 65519.0, 6e-8, 2.98e-8, -1e-10, 1.0009766]], np.float32)
    np.testing.assert_array_equal(sc.QuantizedRows(x, "fp16").dequantize(), x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="fp16 range"):
        sc.QuantizedRows(np.array([[70000.0]], np.float32), "fp16")


def ref_pooled(deq, indices, offsets, weights, mean):
    out = np.zeros((len(offsets) - 1, deq.shape[1]), np.float32)
    for b in range(len(offsets) - 1):
        acc = np.zeros(deq.shape[1], np.float32)
        div = np.float32(0)
        for i in range(offsets[b], offsets[b + 1]):
            w = np.float32(1) if weights is None else weights[i]
            div += w
            if indices[i] >= 0:
                acc = acc + (w * deq[indices[i]] if weights is not None else deq[indices[i]])
        if mean:
            acc = acc / div if div != 0 else np.zeros_like(acc)
        out[b] = acc
    return out


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_pooled_lookup_matches_reference(rng, fmt, pooling, weighted):
    dim, n, batch = 18, 40, 12
    rows = sc.QuantizedRows(rng.standard_normal((n, dim)).astype(np.float32), fmt)
    lengths = rng.integers(0, 6, batch)
    lengths[0] = 0  # an empty bag
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(-1, n, offsets[-1]).astype(np.int64)  # with duplicates and absent ids
    weights = rng.uniform(0.1, 2, offsets[-1]).astype(np.float32) if weighted else None
    out = rows.pooled_lookup(indices, offsets, weights, pooling)
    np.testing.assert_array_equal(out, ref_pooled(rows.dequantize(), indices, offsets, weights, pooling == "mean"))


def test_quantized_embedding_table_reads_unknown_ids_as_zeros(rng):
    keys = np.array([-(2**63), 5, 2**62, -7], np.int64)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    table = sc.QuantizedEmbeddingTable(keys, w, "int8")
    out = table.lookup(np.array([5, 99, -7, -(2**63)], np.int64), np.array([0, 1, 2, 4]))
    deq = ref_quantize_rows(w, "int8")
    np.testing.assert_array_equal(out[0], deq[1])
    np.testing.assert_array_equal(out[1], np.zeros(3, np.float32))
    np.testing.assert_array_equal(out[2], deq[3] + deq[0])


def test_quantized_table_from_collection(rng):
    coll = sc.EmbeddingCollection({"t": sc.TableConfig(dim=8)}, seed=3)
    ids = rng.integers(-1000, 1000, 50)
    exact = coll.lookup("t", ids, insert=True)
    table = sc.QuantizedEmbeddingTable.from_collection(coll, "t", "fp16")
    out = table.lookup(ids, np.arange(len(ids) + 1))
    np.testing.assert_array_equal(out, exact.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_bad_rows_and_bags_are_refused(rng, fmt):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    bad = x.copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 2"):
        sc.QuantizedRows(bad, fmt)
    with pytest.raises(ValueError, match="format"):
        sc.QuantizedRows(x, "int3")
    rows = sc.QuantizedRows(x, fmt)
    with pytest.raises(ValueError, match="out of range"):
        rows.pooled_lookup(np.array([0, 4]), np.array([0, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        rows.pooled_lookup(np.array([0, 1]), np.array([0, 2, 1, 2]))
    with pytest.raises(ValueError, match="offsets"):
        rows.pooled_lookup(np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="weights"):
        rows.pooled_lookup(np.array([0, 1]), np.array([0, 2]), np.array([1.0, np.nan], np.float32))
