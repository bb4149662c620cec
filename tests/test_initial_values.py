"""Initial values are a function of IEEE basic arithmetic only: NumPy recomputes them here
from the documented generator (splitmix64 counters, Box-Muller with fixed polynomials for log
and cos, each float operation rounded once) and gets the same bits as the CPU engine and the
device collection's kernel path. No libm is involved, so a GPU computes these bits too."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

M64 = (1 << 64) - 1
F = np.float32


def splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return splitmix64(a ^ (splitmix64(b) + np.uint64(0x632BE59BD9B4E019)))


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def table_seed(seed: int, name: str) -> np.uint64:
    return hash_combine(np.array([seed], np.uint64), np.array([fnv1a64(name)], np.uint64))[0]


def draw(row_seed: np.ndarray, counter: np.ndarray) -> np.ndarray:
    return splitmix64(row_seed + counter * np.uint64(0x9E3779B97F4A7C15))


def log_of_fraction24(n: np.ndarray) -> np.ndarray:
    e = np.frexp(n.astype(np.float64))[1] - 1  # highest set bit, exact for n <= 2^24
    m = n.astype(F) / (np.ones_like(n) << e.astype(np.uint64)).astype(F)
    big = m > F("1.41421356")
    m = np.where(big, m * F(0.5), m)
    e = e + big
    s = (m - F(1)) / (m + F(1))
    s2 = s * s
    p = np.full_like(s, F(1) / F(11))
    for c in (9, 7, 5, 3):
        p = F(1) / F(c) + s2 * p
    two_s = s + s
    log_m = two_s + two_s * (s2 * p)
    k = (e - 24).astype(F)
    return k * F("0.693145751953125") + (k * F("1.42860682030941723e-6") + log_m)


def cos_of_turn24(j: np.ndarray) -> np.ndarray:
    quadrant = j >> np.uint64(22)
    f = j & np.uint64(0x3FFFFF)
    use_sin = (quadrant & np.uint64(1)) == 1
    negate = (quadrant == 1) | (quadrant == 2)
    reflect = f > (1 << 21)
    f = np.where(reflect, np.uint64(1 << 22) - f, f)
    use_sin = use_sin ^ reflect
    x = f.astype(F) * F("3.74507028e-7")
    x2 = x * x
    p = np.full_like(x, F(1) / F(362880))
    for c in (5040, 120, 6):
        p = F(1) / F(c) - x2 * p
    sin = x - x * (x2 * p)
    p = np.full_like(x, F(1) / F(3628800))
    for c in (40320, 720, 24):
        p = F(1) / F(c) - x2 * p
    p = F(0.5) - x2 * p
    cos = F(1) - x2 * p
    r = np.where(use_sin, sin, cos)
    return np.where(negate, -r, r)


def standard_normal(row_seed: np.ndarray, counter: np.ndarray) -> np.ndarray:
    r = draw(row_seed, counter)
    log_u1 = log_of_fraction24((r >> np.uint64(40)) + np.uint64(1))
    return np.sqrt(F(-2) * log_u1) * cos_of_turn24(r & np.uint64(0xFFFFFF))


def initial_rows(seed: int, name: str, ids: np.ndarray, dim: int, init) -> np.ndarray:
    rs = hash_combine(np.full(ids.size, table_seed(seed, name)), ids.astype(np.uint64))[:, None]
    counters = np.arange(dim, dtype=np.uint64)[None, :]
    rs, counters = np.broadcast_arrays(rs, counters)
    if isinstance(init, sc.Uniform):
        u = (draw(rs, counters) >> np.uint64(40)).astype(F) * F(1.0 / 16777216.0)
        return F(init.low) + (F(init.high) - F(init.low)) * u
    if isinstance(init, sc.TruncatedNormal):
        z = np.zeros(rs.shape, F)
        todo = np.ones(rs.shape, bool)
        for attempt in range(64):
            cand = standard_normal(rs[todo], counters[todo] + np.uint64(attempt << 32))
            ok = np.abs(cand) <= F(2)
            idx = np.flatnonzero(todo)
            z.flat[idx[ok]] = cand[ok]
            todo.flat[idx[ok]] = False
            if not todo.any():
                break
        return F(init.mean) + F(init.std) * z
    assert isinstance(init, sc.Normal)
    return F(init.mean) + F(init.std) * standard_normal(rs, counters)


INITS = [sc.Normal(0.01), sc.Normal(2.0, mean=1.0), sc.TruncatedNormal(0.5), sc.Uniform(-0.5, 0.25)]
IDS = np.concatenate([np.arange(-3000, 3000, dtype=np.int64),
                      np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 1 << 40], np.int64)])


@pytest.mark.parametrize("init", INITS, ids=lambda i: type(i).__name__)
def test_cpu_initial_values_are_the_portable_reference_bits(init):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=7, init=init)}, seed=42)
    got = emb.lookup("t", IDS, insert=True)
    want = initial_rows(42, "t", IDS, 7, init)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("init", INITS, ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("emulate", [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
])
def test_device_initial_values_are_the_portable_reference_bits(init, emulate):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=5, init=init)}, seed=9, emulate=emulate)
    got = np.asarray(dev.lookup("t", IDS, insert=True))
    want = initial_rows(9, "t", IDS, 5, init)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
