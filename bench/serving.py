"""Serving benchmark: XDL's W2 model (23 groups x dim 18 -> MLP 414-200-80-1), trained briefly on
synthetic data, exported with fp16 tables, served by sparsecore's Predictor (fp32 dense layers,
and pow2-3bit ones through sc.quantize_module) beside the same model in PyTorch eager,
TorchScript and ONNX Runtime (tables as one EmbeddingBag, rows copied from the export), in one
run, all with the same thread count (workload.THREADS, 2).

Measured: single-request latency (batch 1, p50/p99 over many requests) and batch-256
throughput (samples/s, median of repeats) through each peer's Python API, and the dense part
alone at batch 1 (fp32 vs pow2). Every peer's logits are checked against sparsecore's on the
same batch before anything is timed. The peers get dense row indexes precomputed from the ids
(a dict lookup done outside the timing); sparsecore maps ids through its hash tables inside.

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
    """The W2 model for the peers: one EmbeddingBag over every group's rows (group g's rows at
    base[g] ...), bags ordered group-major, then the MLP."""

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


def peer_inputs(batch, names, index_of):
    """(indexes, offsets) of a sparsecore batch for W2Torch: group-major bags."""
    idx, offs, base = [], [], 0
    for g, name in enumerate(names):
        ids, offsets = batch[name][:2]
        idx.append(index_of[g](ids))
        offs.append(offsets[:-1] + base)
        base += len(ids)
    return torch.from_numpy(np.concatenate(idx)), torch.from_numpy(np.concatenate(offs))


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
    bases = np.cumsum([0] + [len(k) for k, _ in per_group])
    all_rows = np.concatenate([w for _, w in per_group] + [np.zeros((1, DIM), np.float32)])
    missing = int(bases[-1])

    def indexer(keys, base):
        def index(ids):
            pos = np.searchsorted(keys, ids)
            pos = np.minimum(pos, len(keys) - 1) if len(keys) else pos
            found = (keys[pos] == ids) if len(keys) else np.zeros(len(ids), bool)
            return np.where(found, pos + base, missing).astype(np.int64)
        return index

    index_of = [indexer(k, int(b)) for (k, _), b in zip(per_group, bases)]
    eager = W2Torch(all_rows, len(names), trainer.model).eval()
    peers = {"PyTorch eager": lambda i, o: eager(i, o)}
    scripted = torch.jit.script(eager)
    peers["TorchScript"] = lambda i, o: scripted(i, o)
    notes = []
    try:
        import onnxruntime as ort

        path = str(work / "w2.onnx")
        i0, o0 = peer_inputs(SyntheticData(cfg, start=10**9).next_batch(4).sparse, names, index_of)
        torch.onnx.export(eager, (i0, o0), path, input_names=["indexes", "offsets"], output_names=["logits"],
                          dynamic_axes={"indexes": {0: "n"}, "offsets": {0: "bags"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = workload.THREADS
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        peers["ONNX Runtime"] = lambda i, o: session.run(None, {"indexes": i.numpy(), "offsets": o.numpy()})[0]
        notes.append(f"onnxruntime {ort.__version__}")
    except ImportError:
        notes.append("onnxruntime not installed: its rows are missing (pip install onnxruntime)")
    except Exception as e:  # noqa: BLE001 - an optional peer that cannot export is reported, not fatal
        notes.append(f"ONNX Runtime left out: the export failed ({type(e).__name__}: {e})")

    held = SyntheticData(cfg, start=1 << 40, num_samples=(1 << 40) + s["eval"]).next_batch(s["eval"])
    check = {n: held.sparse[n] for n in names}
    ref = fp32.predict(check)
    with torch.no_grad():
        checks = {}
        for name, run in peers.items():
            out = np.asarray(run(*peer_inputs(check, names, index_of)), np.float32).reshape(-1)
            checks[name] = float(np.abs(out - ref).max())
    auc_fp32 = auc(held.labels, ref)
    auc_pow2 = auc(held.labels, pow2.predict(check))

    def sample(b, start):
        return {n: (held.sparse[n][0][held.sparse[n][1][b]:held.sparse[n][1][b + 1]],
                    np.array([0, held.sparse[n][1][b + 1] - held.sparse[n][1][b]], np.int64)) for n in names}

    singles = [sample(b, 0) for b in range(s["requests"])]
    big = SyntheticData(cfg, start=1 << 41, num_samples=(1 << 41) + 256).next_batch(256).sparse
    big = {n: big[n] for n in names}
    results = {}
    with torch.no_grad():
        for label, predictor in (("sparsecore fp32", fp32), ("sparsecore pow2-3bit", pow2)):
            for r in singles[:5]:
                predictor.predict(r)
            lat = np.array([timed(lambda r=r: predictor.predict(r), 1)[0] for r in singles])
            thr = timed(lambda: predictor.predict(big), s["repeats"])
            results[label] = (lat, thr)
        for label, run in peers.items():
            inputs1 = [peer_inputs(r, names, index_of) for r in singles]
            inputs256 = peer_inputs(big, names, index_of)
            for i, o in inputs1[:5]:
                run(i, o)
            lat = np.array([timed(lambda i=i, o=o: run(i, o), 1)[0] for i, o in inputs1])
            thr = timed(lambda: run(*inputs256), s["repeats"])
            results[label] = (lat, thr)

    # the dense part alone at batch 1: fp32 vs shift-matmul layers
    dense = {}
    x1 = {n: np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32) for n in names}
    for label, d in (("fp32", work / "fp32" / "dense"), ("pow2-3bit", work / "pow2" / "dense")):
        g = _core.DenseGraph.load(str(d))
        g.run(x1)
        dense[label] = np.median(timed(lambda g=g: g.run(x1), max(50, s["requests"])))

    best_lat = min(np.percentile(results[p][0], 50) for p in peers)
    best_thr = max(256 / np.median(results[p][1]) for p in peers)
    lines = [
        "# Serving: W2 predictions, sparsecore's Predictor beside PyTorch eager, TorchScript and ONNX Runtime",
        "",
        f"Scale `{scale_name}`: W2 (23 groups x dim 18, MLP 414-200-80-1), {s['steps']} training steps of "
        f"{s['batch']} synthetic samples (vocab {s['vocab']:,} per group), tables exported as fp16; "
        f"{workload.THREADS} threads for every peer (torch.set_num_threads, ORT intra-op, sc.set_num_threads); "
        f"{s['requests']} single requests, {s['repeats']} repeats of a 256-sample batch, each through the "
        "peer's Python API. " + "; ".join(notes) + f"; torch {torch.__version__}.",
        "",
        "| peer | batch-1 p50 (µs) | batch-1 p99 (µs) | batch-256 samples/s | p50 vs best peer | "
        "throughput vs best peer | max abs diff to sparsecore fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, (lat, thr) in results.items():
        p50, p99, tput = np.percentile(lat, 50) * 1e6, np.percentile(lat, 99) * 1e6, 256 / np.median(thr)
        diff = checks.get(label)
        lines.append(f"| {label} | {p50:.0f} | {p99:.0f} | {tput:,.0f} | {p50 / (best_lat * 1e6):.2f}x | "
                     f"{tput / best_thr:.2f}x | {'—' if diff is None else f'{diff:.2e}'} |")
    sc_lat = np.percentile(results["sparsecore fp32"][0], 50)
    sc_thr = 256 / np.median(results["sparsecore fp32"][1])
    verdict = [
        ("batch-1 p50 <= 0.5x the best peer", sc_lat <= 0.5 * best_lat, f"{sc_lat / best_lat:.2f}x"),
        ("batch-256 throughput >= 1.5x the best peer", sc_thr >= 1.5 * best_thr, f"{sc_thr / best_thr:.2f}x"),
        ("pow2 dense part >= 2x fp32 at batch 1", dense["fp32"] >= 2 * dense["pow2-3bit"],
         f"{dense['fp32'] / dense['pow2-3bit']:.2f}x"),
        ("pow2 AUC within 0.002 of fp32", abs(auc_pow2 - auc_fp32) <= 0.002, f"{auc_pow2 - auc_fp32:+.4f}"),
    ]
    lines += ["", "| target | met | this run |", "| --- | --- | ---: |"]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {value} |" for what, ok, value in verdict]
    lines += [
        "",
        f"Load average during the run: {os.getloadavg()[0]:.1f} (shared machine). ONNX Runtime runs the "
        "EmbeddingBag as torch's ONNX export writes it (a Loop over bags), hence its numbers.",
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
