"""Export of a trained dense network as a graph that C++ runs without Python.

:func:`export_dense` traces a PyTorch model with ``torch.fx`` (the modules below are kept
whole) and writes ``dense.json`` (inputs, nodes, tensor table) and ``dense.bin`` (the tensors)
into a directory; ``sparsecore._core.DenseGraph.load(dir)`` (C++: ``serving::DenseGraph``)
runs it. Supported:

- modules: ``nn.Linear``, the shift-matmul ``QuantizedLinear`` of :func:`sparsecore.quantize_module`,
  ``nn.ReLU``, ``nn.Sigmoid``, ``nn.PReLU``, :class:`sparsecore.torch.Dice` (evaluation
  statistics), :class:`sparsecore.torch.DinAttention`, ``nn.Identity`` and ``nn.Dropout``
  (evaluation: identity), and ``nn.Sequential`` of these;
- functions: ``torch.cat`` along the feature dimension, ``+`` of equal-width values or of a
  parameter/constant, ``sum`` over the feature dimension, ``sigmoid``/``relu``, and the shape
  no-ops on one-wide values (``squeeze``, ``unsqueeze``, ``reshape(-1)``, ``flatten``).

Anything else is refused with the module or function named. The model is called as the
Trainer calls it: ``model_input="concat"`` gives one [B, sum of widths] tensor (the inputs side
by side, in order); ``"dict"`` calls ``model(pooled, dense)`` with ``pooled[name]`` a [B, width]
tensor, or a ``(values [B, L, width], lengths [B])`` pair for a ``"sequence"`` input, and
``dense`` the ``"dense"`` input or None.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["export_dense", "export_model", "dense_graph"]

_ALIGN = 64


class _Writer:
    """The node list and tensor table being built."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.tensors: dict[str, dict] = {}
        self.blob = bytearray()

    def tensor(self, name: str, array: Any, dtype: str) -> str:
        a = np.ascontiguousarray(np.asarray(array, np.float32 if dtype == "f32" else np.uint8))
        pad = (-len(self.blob)) % _ALIGN
        self.blob += b"\0" * pad
        key = f"t{len(self.tensors)}_{name}"
        self.tensors[key] = {"offset": len(self.blob), "shape": list(a.shape), "dtype": dtype}
        self.blob += a.tobytes()
        return key

    def node(self, spec: dict) -> int:
        self.nodes.append(spec)
        return len(self.nodes) - 1


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _chain_op(w: _Writer, module: Any, name: str) -> dict | None:
    """The node spec (without inputs) of a single-input module, or None if it is not one."""
    import torch.nn as nn

    from .quant import _quantized_linear_class
    from .torch import Dice

    if isinstance(module, nn.Linear):
        return {"op": "linear", "out": module.out_features, "weight": w.tensor(name + ".weight", _numpy(module.weight), "f32"),
                "bias": None if module.bias is None else w.tensor(name + ".bias", _numpy(module.bias), "f32")}
    if isinstance(module, _quantized_linear_class()):
        p = module.packed
        return {"op": "shift_linear", "out": p.rows, "codes": w.tensor(name + ".codes", p.codes, "u8"),
                "alpha": w.tensor(name + ".alpha", np.broadcast_to(p.alpha, (p.rows,)), "f32"),
                "bias": None if module.bias is None else w.tensor(name + ".bias", _numpy(module.bias), "f32")}
    if isinstance(module, nn.ReLU):
        return {"op": "relu"}
    if isinstance(module, nn.Sigmoid):
        return {"op": "sigmoid"}
    if isinstance(module, nn.PReLU):
        slopes = _numpy(module.weight).reshape(-1)
        return {"op": "prelu", "count": int(slopes.size), "weight": w.tensor(name + ".weight", slopes, "f32")}
    if isinstance(module, Dice):
        norm = module.norm
        return {"op": "dice", "alpha": w.tensor(name + ".alpha", _numpy(module.alpha), "f32"),
                "mean": w.tensor(name + ".mean", _numpy(norm.running_mean), "f32"),
                "var": w.tensor(name + ".var", _numpy(norm.running_var), "f32"), "eps": float(norm.eps)}
    return None


def _score_chain(w: _Writer, module: Any, name: str) -> list[dict]:
    """A Sequential (or single module) of chain ops as a list of node specs."""
    import torch.nn as nn

    mods = list(module) if isinstance(module, nn.Sequential) else [module]
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        spec = _chain_op(w, m, f"{name}.{i}")
        if spec is None:
            raise ValueError(f"export: module {name}.{i} ({type(m).__name__}) is not supported in an attention score")
        out.append(spec)
    return out


def dense_graph(model: Any, inputs: Sequence[tuple[str, str, int]], *, model_input: str = "concat"
                ) -> tuple[dict, bytes]:
    """The graph JSON object and tensor bytes of ``model`` (see the module docstring).

    ``inputs``: (name, kind, width) in the order the model sees them, kind "pooled",
    "sequence" or "dense" (the dense features, at most one, last).
    """
    import torch.fx as fx
    import torch.nn as nn

    from .quant import _quantized_linear_class
    from .torch import Dice, DinAttention

    if model_input not in ("concat", "dict"):
        raise ValueError(f"model_input must be 'concat' or 'dict', got {model_input!r}")
    specs = [(str(n), str(k), int(d)) for n, k, d in inputs]
    if not specs:
        raise ValueError("export: the model needs at least one input")
    for n, k, d in specs:
        if k not in ("pooled", "sequence", "dense") or d < 1:
            raise ValueError(f"export: input {n!r} needs kind pooled/sequence/dense and width >= 1, got {k!r}, {d}")
    if model_input == "concat" and any(k == "sequence" for _, k, _ in specs):
        raise ValueError("export: sequence inputs need model_input='dict'")
    leaves = (nn.Linear, _quantized_linear_class(), nn.ReLU, nn.Sigmoid, nn.PReLU, Dice, DinAttention, nn.Identity,
              nn.Dropout)

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    w = _Writer()
    input_nodes = {n: w.node({"op": "input", "input": i}) for i, (n, _, _) in enumerate(specs)}
    widths = {n: d for n, _, d in specs}
    # fx value -> (graph node, width); sequences -> ("seq", name); lengths -> ("len", name)
    values: dict[Any, Any] = {}
    pooled = {n: (fx.PH, fx.PH) if k == "sequence" else fx.PH for n, k, _ in specs if k != "dense"}
    has_dense = any(k == "dense" for _, k, _ in specs)
    model = model.eval()
    if model_input == "dict":
        concrete = {"pooled": pooled, "dense": fx.PH if has_dense else None}
        graph = _Tracer().trace(model, concrete_args=concrete)
        leaf_names = []
        for n, k, _ in specs:
            if k == "sequence":
                leaf_names += [("seq", n), ("len", n)]
            elif k == "pooled":
                leaf_names.append(("val", n))
        if has_dense:
            leaf_names.append(("val", next(n for n, k, _ in specs if k == "dense")))
        placeholders = [node for node in graph.nodes if node.op == "placeholder"]
        if not has_dense:  # dense specialised to None: its placeholder and fx's check of it remain
            placeholders = [p for p in placeholders if p.target != "dense_1" and p.name != "dense_1"]
            for node in graph.nodes:
                if node.op == "placeholder" and node not in placeholders:
                    values[node] = ("none", None)
        if len(placeholders) != len(leaf_names):
            raise ValueError(f"export: the model takes {len(placeholders)} inputs, the spec gives {len(leaf_names)}")
        for node, (kind, name) in zip(placeholders, leaf_names):
            values[node] = (input_nodes[name], widths[name]) if kind == "val" else (kind, name)
    else:
        graph = _Tracer().trace(model)
        placeholders = [node for node in graph.nodes if node.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError("export: with model_input='concat' the model takes one tensor")
        ids = [input_nodes[n] for n, _, _ in specs]
        total = sum(d for _, _, d in specs)
        values[placeholders[0]] = (w.node({"op": "concat", "inputs": ids}) if len(ids) > 1 else ids[0], total)

    modules = dict(model.named_modules())
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            continue

        def arg(a: Any) -> Any:
            if isinstance(a, (list, tuple)) and not isinstance(a, fx.Node):
                return [arg(x) for x in a]
            if isinstance(a, fx.Node):
                if a not in values:
                    raise ValueError(f"export: value {a.name} is not supported")
                return values[a]
            return a

        def tensor_value(v: Any) -> tuple[int, int]:
            if not (isinstance(v, tuple) and isinstance(v[0], int)):
                raise ValueError(f"export: {node.format_node()} reads a sequence outside DinAttention")
            return v

        if node.op == "get_attr":
            obj: Any = model
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            values[node] = ("const", _numpy(obj).reshape(-1))
        elif node.op == "call_module":
            mod = modules[str(node.target)]
            if isinstance(mod, DinAttention):
                seq, lengths, query = (arg(a) for a in node.args)
                if not (isinstance(seq, tuple) and seq[0] == "seq" and lengths == ("len", seq[1])):
                    raise ValueError(f"export: {node.target} must read a sequence input and its own lengths")
                q = tensor_value(query)
                attention: dict[str, Any] = {"op": "din_attention", "inputs": [input_nodes[seq[1]], q[0]],
                                             "score": _score_chain(w, mod.score, f"{node.target}.score")}
                values[node] = (w.node(attention), widths[seq[1]])
            elif isinstance(mod, (nn.Identity, nn.Dropout)):
                values[node] = arg(node.args[0])
            else:
                x = tensor_value(arg(node.args[0]))
                spec = _chain_op(w, mod, str(node.target))
                if spec is None:
                    raise ValueError(f"export: module {node.target} ({type(mod).__name__}) is not supported")
                spec["inputs"] = [x[0]]
                out = spec.get("out", x[1])
                values[node] = (w.node(spec), out)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none":
            values[node] = ("none", None)
        elif node.op in ("call_function", "call_method"):
            values[node] = _function(w, node, arg, tensor_value)
        elif node.op == "output":
            out = arg(node.args[0])
            if isinstance(out, list):  # a pytree of one value
                if len(out) != 1:
                    raise ValueError(f"export: the model returns {len(out)} values, not one")
                out = out[0]
            output = tensor_value(out)
    if output is None:
        raise ValueError("export: the model returns nothing")
    if output[0] != len(w.nodes) - 1:  # the output must be the last node: copy it there
        output = (w.node({"op": "add", "inputs": [output[0]]}), output[1])
    doc = {"format": "sparsecore-dense", "version": 1,
           "inputs": [{"name": n, "kind": k, "width": d} for n, k, d in specs],
           "tensors": w.tensors, "nodes": w.nodes, "output": output[0]}
    return doc, bytes(w.blob)


def _function(w: _Writer, node: Any, arg: Any, tensor_value: Any) -> tuple[int, int]:
    import torch

    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    args = [arg(a) for a in node.args]
    kwargs = {k: arg(v) for k, v in node.kwargs.items()}
    one_wide = {"squeeze", "unsqueeze", "reshape", "view", "flatten"}
    if target in (torch.cat, torch.concat, torch.concatenate):
        parts = args[0] if args else kwargs["tensors"]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if dim not in (1, -1):
            raise ValueError(f"export: torch.cat along dim {dim} is not supported (only the feature dim)")
        vals = [tensor_value(p) for p in parts]
        return w.node({"op": "concat", "inputs": [v[0] for v in vals]}), sum(v[1] for v in vals)
    if target in (operator.add, torch.add) or name == "add":
        a, b = args[0], args[1]
        if isinstance(a, tuple) and a[0] == "const":
            a, b = b, a
        x = tensor_value(a)
        if isinstance(b, tuple) and b[0] == "const" or isinstance(b, (int, float)):
            c = np.asarray(b[1] if isinstance(b, tuple) else [b], np.float32).reshape(-1)
            if c.size not in (1, x[1]):
                raise ValueError(f"export: {node.format_node()} adds {c.size} values to width {x[1]}")
            return w.node({"op": "add", "inputs": [x[0]], "count": int(c.size),
                           "constant": w.tensor("add", c, "f32")}), x[1]
        y = tensor_value(b)
        if x[1] != y[1]:
            raise ValueError(f"export: {node.format_node()} adds widths {x[1]} and {y[1]}")
        return w.node({"op": "add", "inputs": [x[0], y[0]]}), x[1]
    if target in (torch.sigmoid,) or name == "sigmoid":
        x = tensor_value(args[0])
        return w.node({"op": "sigmoid", "inputs": [x[0]]}), x[1]
    if target in (torch.relu,) or name == "relu" or getattr(target, "__name__", "") == "relu":
        x = tensor_value(args[0])
        return w.node({"op": "relu", "inputs": [x[0]]}), x[1]
    if target in (torch.sum,) or name == "sum":
        x = tensor_value(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dim, list):
            dim = dim[0] if len(dim) == 1 else None
        if dim not in (1, -1) or kwargs.get("keepdim"):
            raise ValueError(f"export: {node.format_node()}: only a sum over the feature dim is supported")
        return w.node({"op": "sum", "inputs": [x[0]]}), 1
    if name in one_wide:
        x = tensor_value(args[0])
        if name == "flatten" or x[1] == 1:
            return x
        raise ValueError(f"export: {node.format_node()} on a value of width {x[1]} is not supported")
    raise ValueError(f"export: function {name} ({node.format_node()}) is not supported")


def export_dense(path: str | os.PathLike, model: Any, inputs: Sequence[tuple[str, str, int]], *,
                 model_input: str = "concat") -> str:
    """Writes ``model``'s graph as ``path/dense.json`` and ``path/dense.bin`` (``path`` is
    created; existing files are replaced atomically, the tensors first). Returns ``path``."""
    doc, blob = dense_graph(model, inputs, model_input=model_input)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    for name, data in (("dense.bin", blob), ("dense.json", json.dumps(doc).encode())):
        tmp = os.path.join(path, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, name))
    return path


def _compressed_table_doc(collection: Any, table: Any) -> dict[str, Any]:
    seed = table.seed - 2**64 if table.seed >= 2**63 else table.seed  # JSON ints are int64 in the core
    doc = {"spec": json.loads(table.kind.to_json()), "seed": seed, "dim": table.config.dim,
           "components": [collection._names[i] for i in table.components]}
    if table.exact is not None:
        doc["exact"] = collection._names[table.exact]
    return doc


def export_model(path: str | os.PathLike, collection: Any, model: Any, *, model_input: str = "concat",
                 dense_width: int = 0, dtype: str = "fp32",
                 features: Optional[Mapping[str, Sequence[str]]] = None) -> int:
    """Writes a model directory that :class:`sparsecore.Predictor` (C++: ``serving::load_model``)
    serves: ``dense/`` (:func:`export_dense` of ``model``), ``stream/`` (a full export of the
    collection's rows, ``collection.export_full``, rows as ``dtype``) and ``model.json`` (the
    features: one per table, named as the table, with its pooling; for compressed tables the
    mapping that composes their rows from the component tables the stream holds). The model sees the tables
    in the collection's order as the Trainer feeds them (``model_input``), plus ``dense_width``
    dense features last. Later ``collection.export_delta(path / "stream", since=version)``
    calls update the rows a running Predictor serves. Returns the export's version.

    ``features`` is the feature spec, how raw values become each feature's ids: per feature
    (table) the raw columns hashed into it, as the readers hash a categorical column of that
    name (:mod:`sparsecore.data.hashing`), e.g. ``{"ad": ["ad_id", "ad_category"]}``. A
    feature left out is hashed from one column named as the feature (the readers' default,
    where a column feeds the group of its own name).

    A collection (or a :class:`sparsecore.Trainer`, whose collection and model input are
    used) with embedded tables; rows on parameter servers export through the servers
    (``Cluster.export_full``) into the stream directory of the model."""
    if hasattr(collection, "embedding") and hasattr(collection, "model_input"):
        model_input = collection.model_input
        collection = collection.embedding.collection
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    inputs = []
    spec = {} if features is None else dict(features)
    unknown = sorted(set(spec) - set(collection.names))
    if unknown:
        raise ValueError(f"export_model: features names {unknown}, which are not tables ({list(collection.names)})")
    entries = []
    seen: set[str] = set()
    for name in collection.names:
        cfg = collection.tables[name]
        kind = "sequence" if cfg.pooling == "none" else "pooled"
        inputs.append((name, kind, cfg.dim))
        columns = spec.get(name, [name])
        if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns) or not columns:
            raise ValueError(f"export_model: the columns of feature '{name}' must be a list of non-empty names, "
                             f"got {columns!r}")
        twice = [c for c in columns if c in seen]
        if twice:
            raise ValueError(f"export_model: columns {twice} feed two features")
        seen.update(columns)
        entries.append({"input": name, "table": name, "pooling": cfg.pooling, "columns": list(columns)})
    if dense_width:
        inputs.append(("dense", "dense", int(dense_width)))
    export_dense(os.path.join(path, "dense"), model, inputs, model_input=model_input)
    version = collection.export_full(os.path.join(path, "stream"), dtype=dtype)
    doc = {"format": "sparsecore-model", "version": 1, "features": entries, "stream": "stream"}
    compressed = getattr(collection, "_compressed", {})
    if compressed:
        # The stream holds the component tables only; the Predictor composes the rows of
        # these tables from them with the same mapping.
        doc["compressed_tables"] = {name: _compressed_table_doc(collection, t) for name, t in compressed.items()}
    tmp = os.path.join(path, "model.json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, "model.json"))
    return int(version)
