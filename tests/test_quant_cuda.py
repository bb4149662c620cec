"""The CUDA shift matmul through Python: the emulated kernels run everywhere, the device ones
skip visibly ("skipped: no device") where there is no GPU. Every case compares with the
float64 NumPy product of the unpacked weights (float) or the exact integer product (fixed
point), on fresh random inputs: odd shapes, one row, one column, GEMV and tiled GEMM."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda
from test_quant import float_tolerance, random_pow2_weight

BACKENDS = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]


def random_packed(rng, rows, cols):
    w, alpha = random_pow2_weight(rng, rows, cols)
    return w, alpha, sc.pack_pow2(w, alpha)


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3, 5, 70])
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 40), (9, 1), (33, 8), (5, 31), (65, 64), (7, 257)])
def test_float_matches_reference(rng, emulate, batch, rows, cols):
    w, _, packed = random_packed(rng, rows, cols)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    y = sc.shift_matmul(x, packed.to_device(emulate=emulate))
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert y.shape == (batch, rows) and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= float_tolerance(x, w))


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("dtype", [np.int8, np.int16])
@pytest.mark.parametrize("batch,rows,cols", [(1, 1, 1), (2, 9, 33), (6, 40, 64)])
def test_fixed_point_is_exact_and_equals_cpu(rng, emulate, dtype, batch, rows, cols):
    w, alpha, packed = random_packed(rng, rows, cols)
    hi = 127 if dtype == np.int8 else 2000
    x = rng.integers(-hi, hi + 1, (batch, cols)).astype(dtype)
    dev = packed.to_device(emulate=emulate)
    acc = sc.shift_matmul(x, dev)
    ref = x.astype(np.int64) @ (w / alpha[:, None]).astype(np.int64).T
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, ref)
    np.testing.assert_array_equal(sc.shift_matmul(x, dev, x_scale=0.25), sc.shift_matmul(x, packed, x_scale=0.25))


@pytest.mark.parametrize("emulate", BACKENDS)
def test_device_keyword_and_leading_dims(rng, emulate):
    w, _, packed = random_packed(rng, 6, 20)
    x = rng.standard_normal((2, 3, 20)).astype(np.float32)
    y = sc.shift_matmul(x, packed, device="cuda", emulate=emulate)
    assert y.shape == (2, 3, 6)
    np.testing.assert_allclose(y, sc.shift_matmul(x, packed), rtol=1e-5, atol=1e-5)
    vec = sc.shift_matmul(x[0, 0], packed, device="cuda", emulate=emulate)
    assert vec.shape == (6,)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_torch_input_gives_torch_output(rng, emulate):
    torch = pytest.importorskip("torch")
    w, _, packed = random_packed(rng, 5, 24)
    x = torch.from_numpy(rng.standard_normal((3, 24)).astype(np.float32))
    y = sc.shift_matmul(x, packed.to_device(emulate=emulate))
    assert isinstance(y, torch.Tensor) and y.shape == (3, 5)
    np.testing.assert_allclose(y.numpy(), sc.shift_matmul(x.numpy(), packed), rtol=1e-5, atol=1e-5)


def test_device_pointer_call_under_the_emulator(rng):
    # Emulated "device memory" is host memory, so NumPy buffers stand in for device arrays;
    # x one float past an aligned start takes the byte loads.
    w, _, packed = random_packed(rng, 11, 16)
    storage = rng.standard_normal(17).astype(np.float32)
    x = storage[1:]
    y = np.full(11, np.nan, np.float32)
    dev = packed.to_device(emulate=True)
    dev._c.matmul_device(x.ctypes.data, 1, y.ctypes.data, 0)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.all(np.abs(y - ref) <= float_tolerance(x[None], w)[0])


@pytest.mark.parametrize("emulate", BACKENDS)
def test_bad_input_is_refused(rng, emulate):
    w, alpha, packed = random_packed(rng, 4, 10)
    dev = packed.to_device(emulate=emulate)
    with pytest.raises(ValueError, match=r"\(\.\.\., 10\)"):
        sc.shift_matmul(np.zeros((2, 9), np.float32), dev)
    with pytest.raises(TypeError, match="float32, int8 or int16"):
        sc.shift_matmul(np.zeros((2, 10), np.float64), dev)
    with pytest.raises(ValueError, match="overflow"):
        wide = random_packed(rng, 2, 2048)[2].to_device(emulate=emulate)
        sc.shift_matmul(np.full((1, 2048), 32767, np.int16), wide)
    with pytest.raises(ValueError, match="device must be"):
        sc.shift_matmul(np.zeros((1, 10), np.float32), packed, device="tpu")
    bad = sc.PackedWeights(packed.codes, np.array([1, 0, 1, 1], np.float32), packed.shape)
    with pytest.raises(ValueError, match="alpha"):
        bad.to_device(emulate=emulate)
    with pytest.raises(TypeError, match="PackedWeights"):
        sc.DevicePackedWeights(w, emulate=True)


@pytest.mark.skipif(sc_cuda.is_available(), reason="a device is present")
def test_without_a_device_the_cuda_path_says_so(rng):
    _, _, packed = random_packed(rng, 2, 3)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        sc.shift_matmul(np.zeros((1, 3), np.float32), packed, device="cuda")


def test_device_weights_report_their_bytes(rng):
    _, _, packed = random_packed(rng, 7, 9)
    dev = packed.to_device(emulate=True)
    assert dev.device_bytes == packed.codes.nbytes + 4 * 7
    assert dev.emulated and "emulated" in repr(dev)
    np.testing.assert_array_equal(sc.shift_matmul(np.ones((1, 9), np.float32), dev, device="cpu"),
                                  sc.shift_matmul(np.ones((1, 9), np.float32), packed))
