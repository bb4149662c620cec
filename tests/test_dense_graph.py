"""The dense-network export (sparsecore.export) and its C++ runner (serving::DenseGraph).

Parity: the C++ graph's output equals the model's torch forward in evaluation mode to float32
rounding: both add the same products in different orders, so the bound is a few ulps of the
sum of |terms|, checked here as rtol 1e-5 on values of order 1 (atol 1e-6 · the output scale).
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import sparsecore as sc  # noqa: E402
from sparsecore import _core  # noqa: E402
from sparsecore.export import dense_graph, export_dense  # noqa: E402
from sparsecore.torch import Dice, DinAttention, mlp  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def assert_parity(out, ref):
    ref = np.asarray(ref, np.float32).reshape(out.shape)
    scale = float(np.abs(ref).max()) + 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * scale)


def random_inputs(rng, specs, batch, max_len=6):
    values, lengths, pooled = {}, {}, {}
    for name, kind, width in specs:
        if kind == "sequence":
            lens = rng.integers(0, max_len + 1, batch).astype(np.int64)
            seq = rng.standard_normal((batch, max_len, width)).astype(np.float32)
            seq[np.arange(max_len)[None, :] >= lens[:, None]] = 0  # padding reads as zero rows
            values[name], lengths[name] = seq, lens
            pooled[name] = (torch.from_numpy(seq), torch.from_numpy(lens))
        else:
            values[name] = rng.standard_normal((batch, width)).astype(np.float32)
            pooled[name] = torch.from_numpy(values[name])
    return values, lengths, pooled


def run_export(tmp_path, model, specs, model_input="concat"):
    export_dense(tmp_path / "m", model, specs, model_input=model_input)
    return _core.DenseGraph.load(str(tmp_path / "m"))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.PReLU])
def test_w2_mlp_equals_the_torch_forward(rng, tmp_path, activation):
    groups, dim = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    model = mlp(groups * dim, [int(rng.integers(1, 40)), int(rng.integers(1, 20))], activation=activation)
    specs = [(f"g{i}", "pooled", dim) for i in range(groups)]
    graph = run_export(tmp_path, model, specs)
    values, _, pooled = random_inputs(rng, specs, int(rng.integers(1, 70)))
    ref = model(torch.cat([pooled[n] for n, _, _ in specs], 1)).detach().numpy()
    assert_parity(graph.run(values), ref)


@pytest.mark.parametrize("width, hidden", [(1, [1]), (7, [3, 5]), (13, [9, 2]), (37, [16, 8]), (414, [200, 80])])
def test_blocked_linear_gives_each_row_what_it_gets_alone(rng, tmp_path, width, hidden):
    # Linear layers run in blocks of rows for batch > 1, summing every output in the same order
    # as a lone row does: a row's logits do not depend on its batch (bit for bit), and stay
    # within the documented tolerance of the torch forward.
    model = mlp(width, hidden)
    specs = [("a", "pooled", width)]
    graph = run_export(tmp_path, model, specs)
    batch = 11  # blocks of 4 rows and a tail
    values, _, pooled = random_inputs(rng, specs, batch)
    together = graph.run(values)
    alone = np.concatenate([graph.run({"a": values["a"][b:b + 1]}) for b in range(batch)])
    np.testing.assert_array_equal(together, alone)
    assert_parity(together, model(pooled["a"]).detach().numpy())


def test_dense_features_join_the_concat_input(rng, tmp_path):
    model = mlp(2 * 4 + 3, [5])
    specs = [("a", "pooled", 4), ("b", "pooled", 4), ("dense", "dense", 3)]
    graph = run_export(tmp_path, model, specs)
    values, _, pooled = random_inputs(rng, specs, 9)
    assert_parity(graph.run(values), model(torch.cat([pooled["a"], pooled["b"], pooled["dense"]], 1)).detach().numpy())


def test_wide_and_deep_equals_the_torch_forward(rng, tmp_path):
    from wide_and_deep import WideAndDeep

    groups = ["x", "y", "z"]
    model = WideAndDeep(groups, 6)
    with torch.no_grad():
        model.bias.fill_(float(rng.standard_normal()))
    specs = [(f"wide_{g}", "pooled", 1) for g in groups] + [(f"deep_{g}", "pooled", 6) for g in groups]
    graph = run_export(tmp_path, model, specs, "dict")
    values, _, pooled = random_inputs(rng, specs, 33)
    assert_parity(graph.run(values), model(pooled).detach().numpy())


def test_din_with_its_attention_unit_equals_the_torch_forward(rng, tmp_path):
    from din import DIN

    model = DIN(8).eval()
    specs = [("history", "sequence", 8), ("user", "pooled", 8), ("context", "pooled", 8), ("ad", "pooled", 8),
             ("ad_category", "pooled", 8)]
    graph = run_export(tmp_path, model, specs, "dict")
    values, lengths, pooled = random_inputs(rng, specs, 40, max_len=int(rng.integers(1, 9)))
    assert_parity(graph.run(values, lengths), model(pooled).detach().numpy())


class DiceTower(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attention = DinAttention(dim, (12, 5), activation=nn.PReLU)
        self.top = nn.Sequential(nn.Linear(2 * dim, 7), Dice(7), nn.Dropout(0.1), nn.Linear(7, 1))

    def forward(self, pooled, dense=None):
        seq, lengths = pooled["seq"]
        return self.top(torch.cat([self.attention(seq, lengths, pooled["q"]), pooled["q"]], dim=1)).squeeze(1)


def test_dice_prelu_and_dropout_use_their_evaluation_form(rng, tmp_path):
    model = DiceTower(4)
    specs = [("seq", "sequence", 4), ("q", "pooled", 4)]
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        _, _, pooled = random_inputs(rng, specs, 64)
        model(pooled)
    with torch.no_grad():
        model.top[1].alpha.uniform_(-1, 1)
    model.eval()
    graph = run_export(tmp_path, model, specs, "dict")
    values, lengths, pooled = random_inputs(rng, specs, 25)
    assert_parity(graph.run(values, lengths), model(pooled).detach().numpy())


def test_shift_matmul_layers_equal_the_quantized_module(rng, tmp_path):
    model = mlp(12, [16, 8])
    quantizer = sc.Quantizer("pow2-3bit", "channel").attach(model)
    quantizer.finalize()
    served = sc.quantize_module(model, quantizer.export())
    graph = run_export(tmp_path, served, [("a", "pooled", 12)])
    values, _, pooled = random_inputs(rng, [("a", "pooled", 12)], 21)
    assert_parity(graph.run(values), served(pooled["a"]).detach().numpy())
    doc, _ = dense_graph(served, [("a", "pooled", 12)])
    assert [n["op"] for n in doc["nodes"]].count("shift_linear") == 3


@pytest.mark.parametrize("module, name", [(nn.Tanh(), "Tanh"), (nn.LayerNorm(4), "LayerNorm")])
def test_unsupported_modules_are_refused_by_name(module, name):
    model = nn.Sequential(nn.Linear(4, 4), module, nn.Linear(4, 1))
    with pytest.raises(ValueError, match=f"module 1 \\({name}\\) is not supported"):
        dense_graph(model, [("a", "pooled", 4)])


def test_unsupported_functions_are_refused_by_name():
    class Tanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x).sum(1)

    with pytest.raises(ValueError, match="function tanh"):
        dense_graph(Tanh(), [("a", "pooled", 4)])


def test_spec_errors_are_value_errors():
    with pytest.raises(ValueError, match="model_input"):
        dense_graph(mlp(4, []), [("a", "pooled", 4)], model_input="stack")
    with pytest.raises(ValueError, match="kind"):
        dense_graph(mlp(4, []), [("a", "bag", 4)])
    with pytest.raises(ValueError, match="sequence inputs need"):
        dense_graph(mlp(4, []), [("a", "sequence", 4)])


def write_graph(path, doc, blob):
    path.mkdir(exist_ok=True)
    (path / "dense.json").write_text(json.dumps(doc))
    (path / "dense.bin").write_bytes(blob)
    return str(path)


@pytest.mark.parametrize("damage, match", [
    (lambda d, b: (d, b[: len(b) // 2]), "outside the tensor file"),
    (lambda d, b: ({**d, "nodes": d["nodes"] + [{"op": "gelu", "inputs": [0]}], "output": len(d["nodes"])}, b),
     "unknown op 'gelu'"),
    (lambda d, b: ({**d, "nodes": [{**d["nodes"][0]}] + [{**n, "inputs": [len(d["nodes"])]} if "inputs" in n else n
                                                         for n in d["nodes"][1:]]}, b), "not an earlier node"),
    (lambda d, b: ({**d, "version": 2}, b), "version 2"),
    (lambda d, b: ({**d, "tensors": {k: {**t, "offset": -4} for k, t in d["tensors"].items()}}, b),
     "outside the tensor file"),
    (lambda d, b: ({**d, "tensors": {k: {**t, "dtype": "u8"} for k, t in d["tensors"].items()}}, b), "dtype"),
    (lambda d, b: ({**d, "tensors": {k: {**t, "shape": [3]} for k, t in d["tensors"].items()}}, b), "values"),
    (lambda d, b: ({**d, "output": 0}, b), "last node"),
])
def test_damaged_exports_are_errors(tmp_path, damage, match):
    doc, blob = dense_graph(mlp(6, [5]), [("a", "pooled", 6)])
    doc, blob = damage(json.loads(json.dumps(doc)), blob)
    with pytest.raises(ValueError, match=match):
        _core.DenseGraph.load(write_graph(tmp_path / "bad", doc, blob))


def test_a_symlinked_tensor_file_is_refused(tmp_path):
    doc, blob = dense_graph(mlp(3, [2]), [("a", "pooled", 3)])
    d = write_graph(tmp_path / "m", doc, blob)
    (tmp_path / "elsewhere.bin").write_bytes(blob)
    os.remove(os.path.join(d, "dense.bin"))
    os.symlink(tmp_path / "elsewhere.bin", os.path.join(d, "dense.bin"))
    with pytest.raises(ValueError):
        _core.DenseGraph.load(d)


def test_bad_run_inputs_are_value_errors(rng, tmp_path):
    specs = [("seq", "sequence", 4), ("q", "pooled", 4)]
    graph = run_export(tmp_path, DiceTower(4).eval(), specs, "dict")
    values, lengths, _ = random_inputs(rng, specs, 5)
    with pytest.raises(ValueError, match="'q' is missing"):
        graph.run({"seq": values["seq"]}, lengths)
    with pytest.raises(ValueError, match="needs lengths"):
        graph.run(values)
    with pytest.raises(ValueError):
        graph.run({**values, "q": values["q"][:, :3]}, lengths)
    with pytest.raises(ValueError, match="rows"):
        graph.run({**values, "q": values["q"][:4]}, lengths)
    bad = lengths["seq"].copy()
    bad[2] = 99
    with pytest.raises(ValueError, match="length 99"):
        graph.run(values, {"seq": bad})


def test_concurrent_runs_give_the_single_thread_result(rng, tmp_path):
    from din import DIN

    specs = [("history", "sequence", 8), ("user", "pooled", 8), ("context", "pooled", 8), ("ad", "pooled", 8),
             ("ad_category", "pooled", 8)]
    graph = run_export(tmp_path, DIN(8).eval(), specs, "dict")
    batches = [random_inputs(rng, specs, int(rng.integers(1, 50)))[:2] for _ in range(8)]
    expected = [graph.run(v, lg) for v, lg in batches]
    failures = []

    def worker(k):
        for i in range(20):
            v, lg = batches[(k + i) % len(batches)]
            if not np.array_equal(graph.run(v, lg), expected[(k + i) % len(batches)]):
                failures.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
