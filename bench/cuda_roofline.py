"""Roofline benchmark of the CUDA backend on a real GPU (run by bench/gpu_check.sh).

Reports, per dim d in {8, 32, 64, 128} and load factor in {0.5, 0.9}: find/lookup G keys/s
and achieved bandwidth against a measured device-to-device copy, both counted as the bytes
that must move: a find reads a key and its row and writes the row out (2 x row + key per
key), a copy reads and writes each byte. The table is filled to the load factor it is
labelled with (rows / slots, printed as measured),
a pooled forward (sum, 8 ids per bag) and a backward + Adagrad update in G ids/s; then a
W1-shaped training step (forward sum + backward + Adagrad) beside torch nn.EmbeddingBag +
SparseAdam on the same GPU. Every input is a torch CUDA tensor (zero-copy: ids, offsets,
outputs and gradients stay on the device). Inputs rotate over several batches so L2 does
not serve repeats. Results as one JSON object on stdout (and a table on stderr).
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
    bags, per_bag = 16384, 8
    for dim in (8, 32, 64, 128):
        for load in (0.5, 0.9):
            emb = sc_cuda.DeviceEmbeddingCollection(
                {"t": sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.05, eps=1e-8))}, 1)
            emb.set_max_load_factor(0.95)
            # Growth halves the load, so fill in small chunks until rows / slots reaches the
            # target (0.95 is the growth limit: the last chunks land between the two).
            keys = rng.integers(-(1 << 62), 1 << 62, size=1 << 23)
            rows, chunk = 0, 1 << 17
            while rows < keys.size and (rows < (1 << 21) or rows / emb.table_capacity("t") < load):
                want = chunk if rows < (1 << 21) else int(load * emb.table_capacity("t")) - rows
                take = max(1, min(chunk, want, keys.size - rows))
                emb.lookup("t", torch.from_numpy(keys[rows:rows + take]).cuda(), insert=True)
                rows += take
            keys = keys[:rows]
            finds = [torch.from_numpy(keys[rng.integers(0, rows, size=n_keys)]).cuda() for _ in range(4)]
            offsets = torch.arange(0, bags * per_bag + 1, per_bag, dtype=torch.int64, device="cuda")
            pooled = [{"t": (torch.from_numpy(keys[rng.integers(0, rows, size=bags * per_bag)]).cuda(), offsets)}
                      for _ in range(4)]
            grad = {"t": torch.full((bags, dim), 0.01, dtype=torch.float32, device="cuda")}
            state = {"i": 0}

            def find():
                emb.lookup("t", finds[state["i"] % 4])
                state["i"] += 1

            def forward():
                emb.forward(pooled[state["i"] % 4])
                state["i"] += 1

            prepared = [emb.prepare(b) for b in pooled]

            def backward():
                emb.backward(prepared[state["i"] % 4], grad)  # noqa: F821 (deleted after its last use)
                state["i"] += 1

            s = timed(find, repeats=10)
            bytes_moved = n_keys * (2 * dim * 4 + 8)  # key read, row read, row written
            entry = {"find_Gkeys_per_s": n_keys / s / 1e9, "find_GBps": bytes_moved / s / 1e9,
                     "find_fraction_of_copy": bytes_moved / s / copy_bw,
                     "capacity": emb.table_capacity("t"), "rows": emb.table_size("t"),
                     "load_factor": emb.table_size("t") / emb.table_capacity("t")}
            s = timed(forward, repeats=10)
            entry["pooled_forward_Gids_per_s"] = bags * per_bag / s / 1e9
            # per id: its key and its row read; per bag: the pooled row written
            entry["pooled_forward_GBps"] = (bags * per_bag * (dim * 4 + 8) + bags * dim * 4) / s / 1e9
            s = timed(backward, repeats=10)
            entry["backward_update_Gids_per_s"] = bags * per_bag / s / 1e9
            results[f"d{dim}_load{load}"] = entry
            del emb, prepared
            torch.cuda.empty_cache()
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
    on_gpu = [{n: tuple(torch.from_numpy(a).cuda() for a in g) for n, g in b.items()} for b in batches]
    grads = {f"t{t}": torch.full((4096, 16), 0.01, dtype=torch.float32, device="cuda") for t in range(tables)}
    for b in on_gpu:  # first pass inserts; the steady state is measured
        emb.backward(b, grads)
    state = {"i": 0}

    def step():
        b = on_gpu[state["i"] % 4]
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
    results["targets"] = {
        "find_d64_fp32_fraction_of_copy>=0.6": min(results[f"d64_load{x}"]["find_fraction_of_copy"] for x in (0.5, 0.9)),
        "step_speedup_vs_torch>=2": results["step_speedup_vs_torch"]}
    print(json.dumps(results, indent=1))
    for k, v in results.items():
        print(f"{k:28s} {v}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
