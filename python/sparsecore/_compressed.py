"""The composition layer of compressed tables (see sparsecore.compression).

A compressed table is held by the compiled collection as its component tables, ordinary
``num_embeddings`` tables. A batch group of a compressed table becomes one group per
component (its ids mapped to component keys), the components' pooled rows are composed back
into the table's output, and the composed gradient is mapped onto each component's gradient:

- sum / concat (linear): each component group pools with the table's weights (times the
  signs of random coding; mean pooling becomes sum pooling with the weights divided by the
  bag's weight sum, the same quotient the engine's mean takes), and the composed output is the
  sum or the concatenation of the components' pooled outputs; its gradient is the same
  gradient (sum) or the matching slice (concat) for each component;
- mul: the product is not linear, so it is formed once per distinct id: each component group
  reads one row per distinct id of the group (bags of one, pooling "none"), their element-wise
  product is the id's row, and the bags are pooled here (weights, mean) from it. The gradient
  of an id's row is the sum over its positions of the bag's gradient times the position's
  factor, and component c's gradient is that times the product of the other components'
  rows, which the forward keeps in its plan (no "last forward" state: a plan belongs to its
  prepared batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from .compression import _KINDS, Compression, base_seed, parse_compression
from .config import Constant, TableConfig, Zeros

_POOLINGS = ("sum", "mean", "none")


EXACT = -1  # the component number of a mixed table's exact rows (named "#exact")


def component_name(table: str, kind: Compression, pooling: str, part: int) -> str:
    return f"{table}@{kind.spec()},pooling={pooling}#{'exact' if part == EXACT else part}"


def parse_component_name(name: str) -> Optional[tuple[str, Compression, str, int]]:
    """(table, compression, pooling, component) of a component table's name, or None."""
    head, sep, part = name.rpartition("#")
    if not sep or not (part.isdigit() or part == "exact"):
        return None
    table, sep, spec = head.rpartition("@")
    spec, sep2, pooling = spec.rpartition(",pooling=")
    if not sep or not sep2 or pooling not in _POOLINGS or spec.partition(":")[0] not in _KINDS:
        return None
    try:
        return table, parse_compression(spec), pooling, EXACT if part == "exact" else int(part)
    except (ValueError, TypeError):
        return None


def component_configs(name: str, cfg: TableConfig, dense: bool = True) -> dict[str, TableConfig]:
    """The component tables of compressed table ``name`` (validated; ValueError naming what
    is wrong): ``num_embeddings`` tables, or with ``dense=False`` (a store that keeps hash
    tables only) hash tables, which the keys in [0, rows) bound to the same rows."""
    kind: Any = cfg.compression
    if not hasattr(kind, "component_keys"):
        raise TypeError(f"table '{name}': compression must be MultiHash, QuotientRemainder, BinaryCodeHash or "
                        f"RandomCoding, got {type(kind).__name__}")
    kind.validate()
    if cfg.pooling not in _POOLINGS:
        raise ValueError(f"table '{name}': pooling must be 'sum', 'mean' or 'none', got {cfg.pooling!r}")
    for field, default in (("num_embeddings", None), ("out_of_range", "error"), ("prune_every", 0),
                           ("default_value", 0.0)):
        if getattr(cfg, field) != default:
            raise ValueError(f"table '{name}': {field} does not apply to a compressed table "
                             f"(its component tables have a fixed number of rows)")
    if "@" in name or "#" in name:
        raise ValueError(f"table '{name}': the name of a compressed table must not contain '@' or '#'")
    if isinstance(cfg.dim, bool) or not isinstance(cfg.dim, int):
        raise TypeError(f"table '{name}': dim must be an int, got {type(cfg.dim).__name__}")
    if cfg.dim < 1:
        raise ValueError(f"table '{name}': dim must be >= 1, got {cfg.dim}")
    dim = kind.component_dim(cfg.dim, name)
    mul = kind.combine_mode == "mul"
    pooling: Any = "none" if mul or cfg.pooling == "none" else "sum"
    out = {}
    for part, rows in enumerate(kind.component_rows()):
        init = cfg.init if not mul or part == 0 else Constant(1.0)
        out[component_name(name, kind, cfg.pooling, part)] = dataclasses.replace(
            cfg, dim=dim, init=init, pooling=pooling, num_embeddings=rows if dense else None, compression=None,
            admission=None, expiry=None)
    if cfg.admission is not None or cfg.expiry is not None:
        # A mixed table: the ids that admission lets in (or the most frequent, kept by an LFU
        # capacity) also own an exact row, added to their compressed row; it starts at zero.
        out[component_name(name, kind, cfg.pooling, EXACT)] = dataclasses.replace(
            cfg, init=Zeros(), compression=None)
    return out


def expand_tables(tables: dict[str, TableConfig], dense: bool = True) -> dict[str, TableConfig]:
    """``tables`` with every compressed table replaced by its component tables."""
    out: dict[str, TableConfig] = {}
    for name, cfg in tables.items():
        if isinstance(cfg, TableConfig) and cfg.compression is not None:
            out.update(component_configs(name, cfg, dense))
        else:
            if isinstance(name, str) and parse_component_name(name) is not None:
                raise ValueError(f"table '{name}': this name is reserved for the component tables of compressed "
                                 f"tables")
            out[name] = cfg
    return out


@dataclasses.dataclass
class CompressedTable:
    """A compressed table of a collection: its user-facing config and component tables."""
    name: str
    config: TableConfig  # dim = composed dim, pooling = the table's, compression set
    components: list[int]  # core table indices, in component order
    component_dim: int
    seed: int  # base seed of the mapping
    exact: Optional[int] = None  # core index of a mixed table's exact rows

    @property
    def kind(self) -> Compression:
        return self.config.compression  # type: ignore[return-value]


def compressed_tables(core_names: list[str], core_configs: dict[str, TableConfig],
                      collection_seed: int) -> tuple[list[str], dict[str, TableConfig], dict[str, CompressedTable]]:
    """The user-facing view of a compiled collection's tables: (names, configs, compressed
    tables by name), components grouped under their table's name."""
    names: list[str] = []
    configs: dict[str, TableConfig] = {}
    compressed: dict[str, CompressedTable] = {}
    for index, core_name in enumerate(core_names):
        parsed = parse_component_name(core_name)
        cfg = core_configs[core_name]
        if parsed is None:
            names.append(core_name)
            configs[core_name] = cfg
            continue
        table, kind, pooling_name, part = parsed
        pooling: Any = pooling_name
        if part == EXACT:
            if table not in compressed or compressed[table].exact is not None:
                raise ValueError(f"table '{core_name}': exact rows without their compressed table")
            compressed[table].exact = index
            user = compressed[table].config
            configs[table] = compressed[table].config = dataclasses.replace(user, admission=cfg.admission,
                                                                            expiry=cfg.expiry)
            continue
        if table not in compressed:
            dim = cfg.dim * len(kind.component_rows()) if kind.combine_mode == "concat" else cfg.dim
            user = dataclasses.replace(cfg, dim=dim, pooling=pooling, num_embeddings=None, compression=kind)
            compressed[table] = CompressedTable(table, user, [], cfg.dim, base_seed(collection_seed, table, kind))
            names.append(table)
            configs[table] = user
        if part != len(compressed[table].components):
            raise ValueError(f"component table '{core_name}' is out of order or missing a sibling")
        compressed[table].components.append(index)
    for t in compressed.values():
        if len(t.components) != len(t.kind.component_rows()):
            raise ValueError(f"compressed table '{t.name}' has {len(t.components)} of its "
                             f"{len(t.kind.component_rows())} component tables")
    return names, configs, compressed


class GroupPlan:
    """How one compressed group of a batch maps onto its component groups."""

    __slots__ = ("table", "first", "batch_size", "max_len", "keys_per_id", "rows", "positions")

    def __init__(self, table: CompressedTable, first: int, batch_size: int, max_len: int, keys_per_id: int):
        self.table = table
        self.first = first  # index of its first component group in the core batch
        self.batch_size = batch_size
        self.max_len = max_len
        self.keys_per_id = keys_per_id
        self.rows: Optional[list[np.ndarray]] = None  # mul: the components' rows of the last forward
        self.positions: Optional[_Positions] = None  # mul: where each distinct id is used


class _Positions:
    """A mul group's positions: the distinct id (inverse), bag and place in the bag of each,
    and its pooling factor (weight, times 1 / the bag's weight sum for mean; None: all 1)."""

    __slots__ = ("unique", "inverse", "order", "starts", "bag", "place", "scale", "offsets", "lengths")

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, scale: Optional[np.ndarray],
                 sequence: bool):
        # One stable sort gives the distinct ids, each position's, and the positions grouped
        # by id in position order (the backward's segment sum).
        self.order = np.argsort(ids, kind="stable")
        ordered = ids[self.order]
        first = np.ones(len(ids), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self.starts = np.flatnonzero(first)
        self.unique = len(self.starts)
        self.inverse = np.empty(len(ids), dtype=np.int64)
        self.inverse[self.order] = np.cumsum(first) - 1
        self.offsets, self.lengths, self.scale = offsets, lengths, scale
        self.bag = np.repeat(np.arange(len(lengths)), lengths)
        self.place = np.arange(len(ids)) - offsets[self.bag] if sequence else None

    def distinct_ids(self, ids: np.ndarray) -> np.ndarray:
        return ids[self.order[self.starts]]


class Expansion:
    """The component groups of a batch: which core groups make each of its groups."""

    __slots__ = ("spans", "plans")

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []  # per group: (first core group, count)
        self.plans: list[Optional[GroupPlan]] = []


def _check_offsets(name: str, offsets: np.ndarray, n: int) -> None:
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"group '{name}': offsets must be a 1-D array of B + 1 entries")
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
        raise ValueError(f"group '{name}': offsets must start at 0, be non-decreasing and end at the number of "
                         f"ids ({n})")


def expand_group(table: CompressedTable, ids: np.ndarray, offsets: np.ndarray, weights: Optional[np.ndarray],
                 first: int) -> tuple[list[tuple], GroupPlan]:
    """The core groups (table index, ids, offsets, weights) of one compressed group."""
    n = len(ids)
    _check_offsets(table.name, offsets, n)
    if weights is not None and (weights.ndim != 1 or len(weights) != n):
        raise ValueError(f"group '{table.name}': weights must be float32[{n}] like its ids")
    if weights is not None and not np.all(np.isfinite(weights)):
        raise ValueError(f"group '{table.name}': weights contain NaN or Inf")
    batch_size = len(offsets) - 1
    lengths = np.diff(offsets)
    max_len = int(lengths.max()) if batch_size else 0
    pooling = table.config.pooling
    scale = weights
    if pooling == "mean":
        base = np.ones(n, dtype=np.float32) if weights is None else weights
        prefix = np.concatenate([[0.0], np.cumsum(base, dtype=np.float64)])
        denom = (prefix[offsets[1:]] - prefix[offsets[:-1]]).astype(np.float32)
        inv = np.divide(np.float32(1), denom, out=np.zeros_like(denom), where=denom != 0)
        scale = (base * np.repeat(inv, lengths)).astype(np.float32)
    mul = table.kind.combine_mode == "mul"
    positions = None
    if mul:
        positions = _Positions(ids, offsets, lengths, scale, pooling == "none")
        unique = positions.distinct_ids(ids)
        ones = np.arange(len(unique) + 1, dtype=np.int64)
        groups: list[tuple[int, np.ndarray, np.ndarray, Optional[np.ndarray]]] = [
            (table.components[part], np.ascontiguousarray(keys.ravel()), ones, None)
                  for part, (keys, _) in enumerate(table.kind.component_keys(unique, table.seed))]
        if table.exact is not None:
            groups.append((table.exact, ids, offsets, weights))
        plan = GroupPlan(table, first, batch_size, max_len, 1)
        plan.positions = positions
        return groups, plan
    components = table.kind.component_keys(ids, table.seed)
    groups = []
    m = table.kind.keys_per_id()
    for part, (keys, signs) in enumerate(components):
        w = scale
        if m > 1 or signs is not None:
            w = np.repeat(np.ones(n, np.float32) if scale is None else scale, m)
            if signs is not None:
                w = (w * signs.ravel()).astype(np.float32)
        core_offsets = offsets * m if m > 1 else offsets
        groups.append((table.components[part], np.ascontiguousarray(keys.ravel()), core_offsets,
                       None if w is None else np.ascontiguousarray(w, dtype=np.float32)))
    if table.exact is not None:
        groups.append((table.exact, ids, offsets, weights))
    return groups, GroupPlan(table, first, batch_size, max_len, m)


def compose(plan: GroupPlan, outs: list[np.ndarray]) -> np.ndarray:
    """The table's output from its component groups' outputs (in component order)."""
    if plan.table.exact is not None:
        composed = _compose_components(plan, outs[:-1])  # a fresh array (never a kept mul row)
        composed += outs[-1]
        return composed
    return _compose_components(plan, outs)


def _compose_components(plan: GroupPlan, outs: list[np.ndarray]) -> np.ndarray:
    table = plan.table
    combine = table.kind.combine_mode
    pooled = table.config.pooling != "none"
    if combine == "mul":
        pos = plan.positions
        assert pos is not None
        rows = [o.reshape(pos.unique, o.shape[-1]) for o in outs]
        plan.rows = rows
        product = rows[0] * rows[1] if len(rows) > 1 else rows[0].copy()
        for o in rows[2:]:
            product *= o
        at = product[pos.inverse]  # (n, dim): the row of every position
        if pos.scale is not None:
            at *= pos.scale[:, None]
        dim = product.shape[1]
        if not pooled:
            out = np.zeros((plan.batch_size, plan.max_len, dim), np.float32)
            out[pos.bag, pos.place] = at
            return out
        out = np.zeros((plan.batch_size, dim), np.float32)
        full = pos.lengths > 0
        if at.shape[0]:
            out[full] = np.add.reduceat(at, pos.offsets[:-1][full], axis=0)
        return out
    m = plan.keys_per_id
    if not pooled and m > 1:
        outs = [o.reshape(plan.batch_size, plan.max_len, m, o.shape[-1]).sum(axis=2) for o in outs]
    if combine == "concat":
        return np.ascontiguousarray(np.concatenate(outs, axis=-1), dtype=np.float32)
    total = outs[0]  # a fresh array of the engine's forward, added to in place
    for o in outs[1:]:
        total += o
    return total


def component_grads(plan: GroupPlan, grad: np.ndarray) -> list[np.ndarray]:
    """Each component group's gradient given the gradient of the table's output."""
    parts = _component_grads(plan, grad)
    return parts + [grad] if plan.table.exact is not None else parts


def _component_grads(plan: GroupPlan, grad: np.ndarray) -> list[np.ndarray]:
    table = plan.table
    combine = table.kind.combine_mode
    count = len(table.components)
    pooled = table.config.pooling != "none"
    if combine == "mul":
        rows, pos = plan.rows, plan.positions
        assert rows is not None and pos is not None
        at = grad[pos.bag] if pooled else grad[pos.bag, pos.place]  # (n, dim) per position
        if pos.scale is not None:
            at = at * pos.scale[:, None]
        dim = grad.shape[-1]
        if pos.unique:  # summed per distinct id, in position order
            d_row = np.add.reduceat(at[pos.order], pos.starts, axis=0)
        else:
            d_row = np.zeros((0, dim), np.float32)
        out = []
        for c in range(count):
            gc = d_row.astype(np.float32, copy=True)
            for o in range(count):
                if o != c:
                    gc *= rows[o]
            out.append(gc.reshape(pos.unique, 1 if pos.unique else 0, dim) if pos.unique else
                       np.zeros((0, 0, dim), np.float32))
        return out
    dc = table.component_dim
    parts = [np.ascontiguousarray(grad[..., c * dc:(c + 1) * dc]) for c in range(count)] if combine == "concat" \
        else [grad] * count
    m = plan.keys_per_id
    if not pooled and m > 1:
        parts = [np.ascontiguousarray(np.repeat(p, m, axis=1)) for p in parts]
    return parts


def expected_shape(plan: GroupPlan) -> tuple[int, ...]:
    dim = plan.table.config.dim
    if plan.table.config.pooling == "none":
        return (plan.batch_size, plan.max_len, dim)
    return (plan.batch_size, dim)


def describe(table: CompressedTable) -> dict[str, Any]:
    """Facts of a compressed table (for stats and the CLI)."""
    kind = table.kind
    return {"compression": kind.spec(), "rows": kind.num_rows(), "component_rows": kind.component_rows(),
            "component_dim": table.component_dim, "exact_rows": table.exact is not None}
