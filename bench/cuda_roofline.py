"""Roofline benchmark of the CUDA backend on a real GPU (run by bench/gpu_check.sh).

Reports, per dim d in {8, 32, 64, 128} and load factor in {0.5, 0.9}: find/lookup G keys/s
and achieved bandwidth (row bytes read + key bytes) against a measured device-to-device copy,
then a W1-shaped training step (forward sum + backward + Adagrad) beside torch
nn.EmbeddingBag + SparseAdam on the same GPU. Inputs rotate over several batches so L2 does
not serve repeats. Results as one JSON object on stdout (and a table on stderr).

Note: DeviceEmbeddingCollection takes host arrays in this version, so its times include the
host<->device copies of ids and outputs; the copy roofline is the device's own.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def timed(fn, repeats: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    import torch

    import sparsecore as sc
    from sparsecore import cuda as sc_cuda

    if not sc_cuda.is_available() or not torch.cuda.is_available():
        print(json.dumps({"skipped": f"no device: {sc_cuda.unavailable_reason()}"}))
        return 0
    results: dict = {"device": torch.cuda.get_device_name(0)}
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() / copy_s  # read + write
    results["copy_GBps"] = copy_bw / 1e9
    rng = np.random.default_rng(1)
    n_keys = 1 << 20
    for dim in (8, 32, 64, 128):
        for load in (0.5, 0.9):
            emb = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=dim)}, 1)
            emb.set_max_load_factor(0.95)
            rows = int(load * (1 << 22))
            keys = rng.integers(-(1 << 62), 1 << 62, size=rows)
            for chunk in np.array_split(keys, 16):
                emb.lookup("t", chunk, insert=True)
            batches = [keys[rng.integers(0, rows, size=n_keys)] for _ in range(4)]
            state = {"i": 0}

            def find():
                emb.lookup("t", batches[state["i"] % 4])
                state["i"] += 1

            s = timed(find, repeats=10)
            bytes_moved = n_keys * (dim * 4 + 8)
            results[f"find_d{dim}_load{load}"] = {
                "Gkeys_per_s": n_keys / s / 1e9, "GBps": bytes_moved / s / 1e9,
                "fraction_of_copy": bytes_moved / s / copy_bw,
                "capacity": emb.table_capacity("t"), "rows": emb.table_size("t")}
    # W1-shaped training step at batch 4096, 26 tables, dim 16, beside torch.
    tables = 26
    emb = sc_cuda.DeviceEmbeddingCollection(
        {f"t{t}": sc.TableConfig(dim=16, optimizer=sc.Adagrad(lr=0.05, eps=1e-8)) for t in range(tables)}, 7)
    batches = []
    for _ in range(4):
        b = {}
        for t in range(tables):
            lengths = rng.integers(1, 21, size=4096)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            b[f"t{t}"] = (np.minimum(rng.zipf(1.1, size=int(offsets[-1])) - 1, 999_999).astype(np.int64), offsets)
        batches.append(b)
    grads = {f"t{t}": np.full((4096, 16), 0.01, np.float32) for t in range(tables)}
    state = {"i": 0}

    def step():
        b = batches[state["i"] % 4]
        state["i"] += 1
        p = emb.prepare(b)
        emb.forward(p)
        emb.backward(p, grads)

    results["w1_step_s"] = timed(step, repeats=10)
    bags = [torch.nn.EmbeddingBag(1_000_000, 16, mode="sum", sparse=True).cuda() for _ in range(tables)]
    opt = torch.optim.SparseAdam([p for bag in bags for p in bag.parameters()])
    tb = [{n: (torch.from_numpy(i).cuda(), torch.from_numpy(o[:-1]).cuda()) for n, (i, o) in b.items()} for b in batches]

    def torch_step():
        b = tb[state["i"] % 4]
        state["i"] += 1
        opt.zero_grad()
        sum(bag(*b[f"t{t}"]).sum() for t, bag in enumerate(bags)).backward()
        opt.step()

    results["torch_w1_step_s"] = timed(torch_step, repeats=10)
    results["step_speedup_vs_torch"] = results["torch_w1_step_s"] / results["w1_step_s"]
    print(json.dumps(results, indent=1))
    for k, v in results.items():
        print(f"{k:28s} {v}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
