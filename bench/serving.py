"""Serving benchmark: XDL's W2 model (23 groups x dim 18 -> MLP 414-200-80-1), trained briefly on
synthetic data, exported with fp16 tables, served by sparsecore's Predictor (fp32 dense layers,
and pow2-3bit ones through sc.quantize_module) beside the same model in PyTorch eager,
TorchScript (tables as one EmbeddingBag) and ONNX Runtime (tables as one Gather over bags padded
to the longest one, then ReduceSum: the graph has no Loop), rows copied from the export, in one
run, all with the same thread count (workload.THREADS, 2).

Every peer starts from the same request sparsecore gets, raw ids per feature: the timed region
of a peer maps the ids to its row indexes (one vectorised hash lookup, pandas' Index.get_indexer
over (group, id) keys; np.searchsorted without pandas) and builds its inputs, as sparsecore maps
ids through its hash tables inside predict. The peers' model alone, with the row indexes
precomputed, is measured as well and reported beside it.

Measured, with every peer interleaved request by request (A, B, C, A, B, C, ...): single-request
latency (batch 1, p50/p99) and batch-256 throughput (samples/s, median of repeats) through each
peer's Python API; the dense part alone at batch 1 (fp32 vs pow2). Every peer's logits are
checked against sparsecore's, and ONNX Runtime's against PyTorch's, before anything is timed.

    python bench/serving.py [--out bench/results/serving.md]   (SPARSECORE_BENCH_SCALE=tiny: a smoke run)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402

workload.limit_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import sparsecore as sc  # noqa: E402
from sparsecore import _core  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.data.metrics import auc  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402

DIM = 18
SCALES = {  # train steps, vocab per group, latency requests, throughput repeats, eval samples
    "tiny": dict(steps=3, vocab=2_000, requests=20, repeats=3, eval=2_000, batch=1_000),
    "small": dict(steps=150, vocab=100_000, requests=400, repeats=15, eval=20_000, batch=2_000),
    "full": dict(steps=300, vocab=1_000_000, requests=1_000, repeats=30, eval=50_000, batch=5_000),
}


class W2Torch(nn.Module):
    """The W2 model for the PyTorch peers: one EmbeddingBag over every group's rows (group g's
    rows at base[g] ...), bags ordered group-major, then the MLP."""

    def __init__(self, rows: np.ndarray, num_groups: int, dense: nn.Module):
        super().__init__()
        self.bags = nn.EmbeddingBag.from_pretrained(torch.from_numpy(rows), mode="sum")
        self.num_groups = num_groups
        self.dim = rows.shape[1]
        self.dense = dense

    def forward(self, indexes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        pooled = self.bags(indexes, offsets)  # (groups * B, DIM)
        batch = pooled.shape[0] // self.num_groups
        x = pooled.view(self.num_groups, batch, self.dim).permute(1, 0, 2).reshape(batch, self.num_groups * self.dim)
        return self.dense(x)


class W2Padded(nn.Module):
    """The W2 model for ONNX Runtime: bags padded to the longest with the index of a zero row,
    (groups, B, L) -> Gather -> ReduceSum over L -> the MLP. Adding the zero rows leaves each
    sum as it is."""

    def __init__(self, rows: np.ndarray, dense: nn.Module):
        super().__init__()
        self.register_buffer("rows", torch.from_numpy(rows))
        self.dense = dense

    def forward(self, indexes: torch.Tensor) -> torch.Tensor:
        pooled = self.rows[indexes].sum(dim=2)  # (groups, B, DIM)
        x = pooled.permute(1, 0, 2).reshape(pooled.shape[1], pooled.shape[0] * pooled.shape[2])
        return self.dense(x)


class RowIndex:
    """Raw ids of (group, id) to the peers' row indexes: one hash lookup over keys
    (group << 40) | id; ids no table holds (or outside [0, 2^40)) map to the zero row."""

    SHIFT = 40

    def __init__(self, per_group_keys, missing: int):
        for keys in per_group_keys:
            if len(keys) and (keys.min() < 0 or keys.max() >= 1 << self.SHIFT):
                raise ValueError("RowIndex: the benchmark's keys must lie in [0, 2^40)")
        self.combined = np.concatenate([np.int64(g << self.SHIFT) | k for g, k in enumerate(per_group_keys)])
        self.missing = missing
        try:
            import pandas as pd

            self._index = pd.Index(self.combined)
            self.method = f"pandas {pd.__version__} Index.get_indexer"
        except ImportError:
            self._index = None
            self.method = "np.searchsorted"

    def __call__(self, ids_per_group) -> np.ndarray:
        q = np.concatenate([np.int64(g << self.SHIFT) | ids for g, ids in enumerate(ids_per_group)])
        bad = np.concatenate([(ids < 0) | (ids >= 1 << self.SHIFT) for ids in ids_per_group])
        if self._index is not None:
            pos = self._index.get_indexer(q)
            pos[bad] = -1
            return np.where(pos < 0, self.missing, pos).astype(np.int64)
        pos = np.minimum(np.searchsorted(self.combined, q), len(self.combined) - 1)
        return np.where((self.combined[pos] == q) & ~bad, pos, self.missing).astype(np.int64)


def flat_inputs(batch, names, index):
    """(indexes, offsets) for W2Torch: group-major bags, ids mapped to rows."""
    rows = index([batch[n][0] for n in names])
    offs, base = [], 0
    for name in names:
        ids, offsets = batch[name][:2]
        offs.append(offsets[:-1] + base)
        base += len(ids)
    return torch.from_numpy(rows), torch.from_numpy(np.concatenate(offs))


def padded_inputs(batch, names, index):
    """indexes (groups, B, L) for W2Padded: each bag's rows, then the zero row up to the
    longest bag L."""
    rows = index([batch[n][0] for n in names])
    lengths = np.concatenate([np.diff(batch[n][1]) for n in names])
    groups, width = len(names), max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.full((len(lengths), width), index.missing, np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(np.arange(len(lengths)), lengths), np.arange(len(rows)) - starts] = rows
    return out.reshape(groups, len(lengths) // groups, width)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.array(times)


def rows_of(stream: Path, names):
    sub = sc.Subscriber(stream)
    sub.poll()
    return [sub.rows(n) for n in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the report here (default: print only)")
    args = parser.parse_args(argv)
    scale_name = os.environ.get("SPARSECORE_BENCH_SCALE", "small")
    s = SCALES[scale_name]
    torch.set_num_threads(workload.THREADS)
    sc.set_num_threads(workload.THREADS)
    torch.manual_seed(0)

    cfg = SyntheticConfig.w2(vocab_size=s["vocab"], batch_size=s["batch"], seed=1)
    names = cfg.names()
    tables = {n: sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.05)) for n in names}
    model = mlp(len(names) * DIM, [200, 80])
    trainer = sc.Trainer(SyntheticData(cfg), model, tables, progress=False)
    trainer.fit(s["steps"])
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    sc.export_model(work / "fp32", trainer, trainer.model, dtype="fp16")
    quantizer = sc.Quantizer("pow2-3bit", "channel")
    pow2_model = __import__("copy").deepcopy(trainer.model)
    quantizer.attach(pow2_model)
    quantizer.finalize()
    served = sc.quantize_module(pow2_model, quantizer.export())
    sc.export_model(work / "pow2", trainer, served, dtype="fp16")
    fp32, pow2 = sc.Predictor(work / "fp32"), sc.Predictor(work / "pow2")

    # peers: the rows the Predictor serves (fp16 exported, read back as fp32), one zero row for
    # ids no table holds
    per_group = rows_of(work / "fp32" / "stream", names)
    all_rows = np.concatenate([w for _, w in per_group] + [np.zeros((1, DIM), np.float32)])
    index = RowIndex([k for k, _ in per_group], missing=len(all_rows) - 1)
    eager = W2Torch(all_rows, len(names), trainer.model).eval()
    scripted = torch.jit.script(eager)
    # name -> (input maker, model run on those inputs)
    peers = {
        "PyTorch eager": (lambda r: flat_inputs(r, names, index), lambda x: eager(*x)),
        "TorchScript": (lambda r: flat_inputs(r, names, index), lambda x: scripted(*x)),
    }
    notes = [f"peers map ids with {index.method}"]
    held = SyntheticData(cfg, start=1 << 40, num_samples=(1 << 40) + s["eval"]).next_batch(s["eval"])
    check = {n: held.sparse[n] for n in names}
    onnx_ops = ""
    try:
        import onnx
        import onnxruntime as ort

        path = str(work / "w2.onnx")
        padded = W2Padded(all_rows, trainer.model).eval()
        x0 = torch.from_numpy(padded_inputs({n: check[n] for n in names}, names, index))
        torch.onnx.export(padded, (x0,), path, input_names=["indexes"], output_names=["logits"],
                          dynamic_axes={"indexes": {1: "batch", 2: "longest"}}, dynamo=False, opset_version=17)
        ops = sorted({node.op_type for node in onnx.load(path).graph.node})
        if "Loop" in ops or "Gather" not in ops or "ReduceSum" not in ops:
            raise RuntimeError(f"the exported graph is not Gather + ReduceSum (ops {ops})")
        onnx_ops = ", ".join(ops)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = workload.THREADS
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        peers["ONNX Runtime"] = (lambda r: padded_inputs(r, names, index),
                                 lambda x: session.run(None, {"indexes": x})[0])
        notes.append(f"onnxruntime {ort.__version__}")
    except ImportError:
        notes.append("onnxruntime (and onnx) not installed: its rows are missing (pip install onnxruntime onnx)")

    ref = fp32.predict(check)
    checks = {}
    with torch.no_grad():
        eager_out = np.asarray(eager(*flat_inputs(check, names, index)), np.float32).reshape(-1)
        for name, (make, run) in peers.items():
            out = np.asarray(run(make(check)), np.float32).reshape(-1)
            # the same model: ONNX Runtime's logits equal PyTorch's (sums in another order only)
            if not np.allclose(out, eager_out, rtol=1e-5, atol=1e-5):
                raise RuntimeError(f"{name} differs from PyTorch eager by {np.abs(out - eager_out).max():.3g}")
            checks[name] = float(np.abs(out - ref).max())
    auc_fp32 = auc(held.labels, ref)
    auc_pow2 = auc(held.labels, pow2.predict(check))

    def sample(b):
        return {n: (held.sparse[n][0][held.sparse[n][1][b]:held.sparse[n][1][b + 1]],
                    np.array([0, held.sparse[n][1][b + 1] - held.sparse[n][1][b]], np.int64)) for n in names}

    singles = [sample(b) for b in range(s["requests"])]
    big = SyntheticData(cfg, start=1 << 41, num_samples=(1 << 41) + 256).next_batch(256).sparse
    big = {n: big[n] for n in names}
    # Every contender as a function of a request: raw ids in, logits out. "(model)" rows: the
    # peer's model alone on inputs made beforehand.
    contenders = {"sparsecore fp32": fp32.predict, "sparsecore pow2-3bit": pow2.predict}
    for name, (make, run) in peers.items():
        contenders[name] = lambda r, make=make, run=run: run(make(r))
    made = {name: {id(r): make(r) for r in singles + [big]} for name, (make, _) in peers.items()}
    for name, (_, run) in peers.items():
        contenders[f"{name} (model)"] = lambda r, name=name, run=run: run(made[name][id(r)])
    labels = list(contenders)
    lat = {k: [] for k in labels}
    thr = {k: [] for k in labels}
    loads = [os.getloadavg()[0]]
    with torch.no_grad():
        for r in singles[:5]:
            for k in labels:
                contenders[k](r)
        for i, r in enumerate(singles):  # interleaved, the order rotated each request
            for k in labels[i % len(labels):] + labels[:i % len(labels)]:
                t = time.perf_counter()
                contenders[k](r)
                lat[k].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
        for k in labels:
            contenders[k](big)
        for i in range(s["repeats"]):
            for k in labels[i % len(labels):] + labels[:i % len(labels)]:
                t = time.perf_counter()
                contenders[k](big)
                thr[k].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
    results = {k: (np.array(lat[k]), np.array(thr[k])) for k in labels}

    # the dense part alone at batch 1: fp32 vs shift-matmul layers
    dense = {}
    x1 = {n: np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32) for n in names}
    for label, d in (("fp32", work / "fp32" / "dense"), ("pow2-3bit", work / "pow2" / "dense")):
        g = _core.DenseGraph.load(str(d))
        g.run(x1)
        dense[label] = np.median(timed(lambda g=g: g.run(x1), max(50, s["requests"])))

    def p50(k):
        return float(np.percentile(results[k][0], 50))

    def tput(k):
        return 256 / float(np.median(results[k][1]))

    best_lat = min(p50(p) for p in peers)
    best_thr = max(tput(p) for p in peers)
    model_lat = min(p50(f"{p} (model)") for p in peers)
    model_thr = max(tput(f"{p} (model)") for p in peers)
    lines = [
        "# Serving: W2 predictions, sparsecore's Predictor beside PyTorch eager, TorchScript and ONNX Runtime",
        "",
        f"Scale `{scale_name}`: W2 (23 groups x dim 18, MLP 414-200-80-1), {s['steps']} training steps of "
        f"{s['batch']} synthetic samples (vocab {s['vocab']:,} per group), tables exported as fp16; "
        f"{workload.THREADS} threads for every peer (torch.set_num_threads, ORT intra-op, sc.set_num_threads); "
        f"{s['requests']} single requests and {s['repeats']} repeats of a 256-sample batch, every contender "
        "interleaved request by request, each through its Python API. " + "; ".join(notes) +
        f"; torch {torch.__version__}.",
        "",
        "Every contender gets the request as raw ids per feature. sparsecore maps them through its hash tables "
        "inside predict; a peer's timed region maps them to its row indexes and builds its inputs, then runs its "
        "model. The `(model)` rows time a peer's model alone on inputs made before the timing (row indexes "
        "precomputed): the ratios are against the best peer with raw ids, and, in the last two columns, against "
        "the best peer's model alone.",
        "",
        "| contender | batch-1 p50 (µs) | batch-1 p99 (µs) | batch-256 samples/s | p50 vs best peer | "
        "throughput vs best peer | p50 vs best model alone | throughput vs best model alone | "
        "max abs diff to sparsecore fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in labels:
        diff = checks.get(label)
        lines.append(f"| {label} | {p50(label) * 1e6:.0f} | {np.percentile(results[label][0], 99) * 1e6:.0f} | "
                     f"{tput(label):,.0f} | {p50(label) / best_lat:.2f}x | {tput(label) / best_thr:.2f}x | "
                     f"{p50(label) / model_lat:.2f}x | {tput(label) / model_thr:.2f}x | "
                     f"{'—' if diff is None else f'{diff:.2e}'} |")
    sc_lat, sc_thr = p50("sparsecore fp32"), tput("sparsecore fp32")
    verdict = [
        ("batch-1 p50 <= 0.5x the best peer", sc_lat <= 0.5 * best_lat,
         f"{sc_lat / best_lat:.2f}x ({sc_lat / model_lat:.2f}x its model alone)"),
        ("batch-256 throughput >= 1.5x the best peer", sc_thr >= 1.5 * best_thr,
         f"{sc_thr / best_thr:.2f}x ({sc_thr / model_thr:.2f}x its model alone)"),
        ("pow2 dense part >= 2x fp32 at batch 1", dense["fp32"] >= 2 * dense["pow2-3bit"],
         f"{dense['fp32'] / dense['pow2-3bit']:.2f}x"),
        ("pow2 AUC within 0.002 of fp32", abs(auc_pow2 - auc_fp32) <= 0.002, f"{auc_pow2 - auc_fp32:+.4f}"),
    ]
    lines += ["", "| target | met | this run |", "| --- | --- | ---: |"]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {value} |" for what, ok, value in verdict]
    lines += [
        "",
        f"Load average (1 min) before, between and after the timed loops: {', '.join(f'{x:.1f}' for x in loads)}.",
        "",
        (f"ONNX Runtime's graph (ops: {onnx_ops}) gathers the rows of every bag padded to the longest one and "
         "sums them with ReduceSum; its logits equal PyTorch eager's (rtol 1e-5) before anything is timed."
         if onnx_ops else "ONNX Runtime was not measured."),
        "",
        f"Dense part alone at batch 1 (DenseGraph.run, median): fp32 {dense['fp32'] * 1e6:.1f} µs, pow2-3bit "
        f"{dense['pow2-3bit'] * 1e6:.1f} µs ({dense['fp32'] / dense['pow2-3bit']:.2f}x).",
        "",
        f"AUC on {s['eval']:,} held-out samples: fp32 {auc_fp32:.4f}, pow2-3bit {auc_pow2:.4f} "
        f"(difference {auc_pow2 - auc_fp32:+.4f}; the pow2 layers are the fp32 ones snapped to the codebook by "
        "Quantizer.finalize, without ADMM fine-tuning).",
        "",
        "The machine is shared and noisy: compare ratios within one run, not absolute times across runs.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
