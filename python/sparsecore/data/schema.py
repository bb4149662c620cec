"""Declared schemas of columnar sources (CSV, Parquet)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Union

from .._core import io as _io

__all__ = ["Column", "COLUMN_TYPES", "normalize_columns", "feature_id"]

COLUMN_TYPES = ("label", "dense", "categorical", "multi_categorical", "ignore")


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: ``type`` is one of COLUMN_TYPES. Categorical columns feed the feature group
    ``group`` (default: the column's own name); several columns may feed one group."""

    name: str
    type: str
    group: str | None = None


ColumnsLike = Union[Mapping[str, str], Iterable[Union[Column, tuple]]]


def normalize_columns(columns: ColumnsLike) -> list[Column]:
    """Columns from a ``{name: type}`` mapping or a list of Column / (name, type[, group])."""
    if isinstance(columns, Mapping):
        items = [Column(str(n), str(t)) for n, t in columns.items()]
    else:
        items = []
        for c in columns:
            if isinstance(c, Column):
                items.append(c)
            elif isinstance(c, (tuple, list)) and len(c) in (2, 3):
                items.append(Column(*c))
            else:
                raise ValueError(f"schema: cannot read column {c!r} (want Column or (name, type[, group]))")
    for c in items:
        if not isinstance(c.name, str) or not isinstance(c.type, str):
            raise ValueError(f"schema: column {c!r} needs a string name and type")
    # The compiled format validates the rest (types, duplicates, labels) with one set of rules.
    _io.CsvFormat([(c.name, c.type, c.group or "") for c in items])
    return items


def feature_id(feature: str, value: str | bytes) -> int:
    """The int64 id of a categorical value: the stable hash of (feature name, value text)
    documented in csrc/sparsecore/io/feature_hash.h."""
    if isinstance(value, str):
        value = value.encode()
    return _io.feature_value_id(feature, value)
