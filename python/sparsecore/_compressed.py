"""The tables of compressed tables (see sparsecore.compression) and their compiled layouts.

A compressed table is held by the compiled collection as its component tables, ordinary
``num_embeddings`` tables (and, for a mixed table, a hash table of exact rows). This module
names and configures them, recovers the compressed tables from a collection's core tables,
and builds the compiled layouts that plan its batches (csrc/sparsecore/ops/compressed_batch.h):
one core group per component (and one for a mixed table's exact rows). For mul the group's ids
are deduplicated once and each distinct id's row is the product of its component rows, pooled
into the bags; its gradient is summed per distinct id and times the product of the other
components' rows. For sum and concat every position maps to its keys and each component pools
the bags itself; the pooled outputs are added or concatenated and the gradient (or its slice)
goes to each component. Each component row gets one summed gradient per step. All of it runs
in C++, one call per batch; the plan belongs to its prepared batch (no "last forward" state).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from . import _core
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


class Expansion:
    """The component groups of a batch: which core groups make each of its groups, and the
    compiled plan of its compressed groups (ops/compressed_batch.h: ids deduplicated and mapped
    to component keys, outputs composed and gradients split in C++)."""

    __slots__ = ("spans", "plans", "batch")

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []  # per group: (first core group, count)
        self.plans: list[Optional[int]] = []  # per group: its index in `batch`, None for a plain table
        self.batch: Any = None  # _core.CompressedBatch of the compressed groups

    def layout(self) -> list[tuple[int, int, int]]:
        """Per group: (first core group, count, plan index or -1), as the compiled calls take it."""
        return [(first, count, -1 if plan is None else plan) for (first, count), plan in zip(self.spans, self.plans)]


def layouts(compressed: dict[str, CompressedTable], core_names: list[str],
            core_configs: dict[str, TableConfig]) -> Any:
    """The compiled layouts of a collection's compressed tables (in the dict's order)."""
    rows = []
    for t in compressed.values():
        exact = -1 if t.exact is None else t.exact
        exact_pooling = "sum" if t.exact is None else core_configs[core_names[t.exact]].pooling
        rows.append((t.name, t.kind.to_json(), int(t.seed) & (2**64 - 1), list(t.components),
                     [core_configs[core_names[i]].pooling for i in t.components], exact, exact_pooling,
                     int(t.config.dim), int(t.component_dim), t.config.pooling))
    return _core.CompressedLayouts(rows)


def describe(table: CompressedTable) -> dict[str, Any]:
    """Facts of a compressed table (for stats and the CLI)."""
    kind = table.kind
    return {"compression": kind.spec(), "rows": kind.num_rows(), "component_rows": kind.component_rows(),
            "component_dim": table.component_dim, "exact_rows": table.exact is not None}
