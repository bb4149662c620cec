"""Compressed embedding tables: a fixed, known number of rows shared by every id.

``TableConfig(dim, compression=...)`` keeps no row per id. Each id is mapped, by a stateless
hash seeded from the collection seed, the table name and the compression's ``seed``, to rows
of a few *component tables* of fixed size (``num_embeddings`` tables, so their memory is at
most ``rows x bytes_per_row`` and known up front), and its embedding is composed from them:

- ``MultiHash(k, rows, combine)``: ``k`` component tables of ``rows`` rows, one hash each;
- ``QuotientRemainder(rows, quotient_rows, combine)``: ``id mod rows`` and ``id div rows``
  (ids outside ``[0, rows * quotient_rows)`` are hashed into it first), so ids in that range
  get distinct component pairs (Shi et al., 2020);
- ``BinaryCodeHash(bits, block, combine)``: the ``bits``-bit binary code of the id (hashed
  when it does not fit) cut into ``bits / block`` blocks of ``block`` bits, block ``j``
  indexing component table ``j`` of ``2**block`` rows (Yan et al., 2021);
- ``RandomCoding(buckets, k, signed)``: one table of ``buckets`` rows; an id is the sum of
  ``k`` hashed rows, each with a random sign when ``signed`` (a signed random projection of
  the one-hot input, as feature hashing).

``combine`` composes the components' rows: ``"sum"`` adds them, ``"concat"`` puts them side
by side (each component then has ``dim / count`` columns) and ``"mul"`` multiplies them
element-wise (the quotient-remainder default; components after the first start at 1, so the
initial product is a row of the first). Pooling (``sum``, ``mean``, ``none``) applies to the
composed rows, exactly as for a table of full rows, and gradients reach each component row
through the composition; every optimizer rule updates each component row once per step.

Mixed tables: with ``TableConfig(admission=...)`` or ``expiry=...`` a compressed table also
keeps exact rows (a hash table, starting at zero) for the ids admission lets in, or for the
most frequent ids with ``Expiry(capacity=k, policy="lfu")``; such an id's embedding is its
exact row plus its compressed row.

The component tables are ordinary tables of the collection (named
``<table>@<spec>#<component>``), so checkpoints, parameter servers, the CUDA backend and
exports hold and shard them like any table, and :meth:`EmbeddingCollection.load` recovers the
compression from their names. The mapping is the same in every process and for every thread
count. :func:`parse_compression` reads the spec strings of the CLI's ``--compression``, e.g.
``"multihash:k=2,rows=65536,combine=sum"``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

import numpy as np

from . import _core

__all__ = ["MultiHash", "QuotientRemainder", "BinaryCodeHash", "RandomCoding", "Compression",
           "parse_compression"]

_COMBINES = ("sum", "concat", "mul")
_MAX_ROWS = 2**40


def _check_int(kind: str, field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{kind}: {field} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{kind}: {field} must be in [{low}, {high}], got {value}")


def _check_combine(kind: str, combine: Any) -> None:
    if combine not in _COMBINES:
        raise ValueError(f"{kind}: combine must be one of {', '.join(_COMBINES)}, got {combine!r}")


def _fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & (2**64 - 1)
    return h


def _hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """The core's seeded id hash (uint64[n])."""
    return _core.seeded_hash(ids, int(seed) & (2**64 - 1))


class _Kind:
    """What every compression kind provides (the dataclasses below)."""

    seed: int
    name: str = ""

    def validate(self) -> None:
        raise NotImplementedError

    @property
    def combine_mode(self) -> str:
        return getattr(self, "combine", "sum")

    def component_rows(self) -> list[int]:
        """Rows of each component table."""
        raise NotImplementedError

    def keys_per_id(self) -> int:
        """Rows of one component table an id reads (RandomCoding: k; the others: 1)."""
        return 1

    def component_keys(self, ids: np.ndarray, base_seed: int) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
        """Per component: keys int64[n, keys_per_id] in [0, rows) and signs float32[n, keys_per_id]
        or None (all +1), by the core's mapping (table/compressed_ids.h)."""
        return [tuple(part) for part in _core.compressed_component_keys(self._json, ids, int(base_seed) & (2**64 - 1))]

    @functools.cached_property
    def _json(self) -> str:
        return self.to_json()

    def to_json(self) -> str:
        """The spec as the core reads it (model.json and the mapping binding)."""
        doc = {"kind": self.name, **{f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                                     if f.name != "seed" and getattr(self, f.name) is not None}}
        return json.dumps(doc)

    def component_dim(self, dim: int, table: str) -> int:
        count = len(self.component_rows())
        if self.combine_mode != "concat":
            return dim
        if dim % count:
            raise ValueError(f"table '{table}': dim {dim} must be a multiple of the {count} components of "
                             f"{self.name} with combine='concat'")
        return dim // count

    def num_rows(self) -> int:
        """Rows of all component tables together: the table's fixed size."""
        return sum(self.component_rows())

    def spec(self) -> str:
        """The spec string of this compression (parse_compression reads it back)."""
        parts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)  # type: ignore[arg-type]
                         if getattr(self, f.name) is not None)
        return f"{self.name}:{parts}"


@dataclass(frozen=True)
class MultiHash(_Kind):
    """``k`` hash functions, each into its own component table of ``rows`` rows."""
    k: int = 2
    rows: int = 2**20
    combine: str = "sum"
    seed: int = 0
    name = "multihash"

    def validate(self) -> None:
        _check_int("MultiHash", "k", self.k, 1, 64)
        _check_int("MultiHash", "rows", self.rows, 1, _MAX_ROWS)
        _check_combine("MultiHash", self.combine)
        _check_int("MultiHash", "seed", self.seed, 0, 2**64 - 1)

    def component_rows(self) -> list[int]:
        return [self.rows] * self.k



@dataclass(frozen=True)
class QuotientRemainder(_Kind):
    """``id mod rows`` into a table of ``rows`` rows and ``id div rows`` into one of
    ``quotient_rows`` (default: ``rows``); ids outside ``[0, rows * quotient_rows)`` are
    hashed into that range first."""
    rows: int = 2**16
    quotient_rows: Optional[int] = None
    combine: str = "mul"
    seed: int = 0
    name = "qr"

    def validate(self) -> None:
        _check_int("QuotientRemainder", "rows", self.rows, 1, _MAX_ROWS)
        if self.quotient_rows is not None:
            _check_int("QuotientRemainder", "quotient_rows", self.quotient_rows, 1, _MAX_ROWS)
        if self.rows * self._quotient_rows() > 2**62:
            raise ValueError(f"QuotientRemainder: rows * quotient_rows must be at most 2^62, got "
                             f"{self.rows} * {self._quotient_rows()}")
        _check_combine("QuotientRemainder", self.combine)
        _check_int("QuotientRemainder", "seed", self.seed, 0, 2**64 - 1)

    def _quotient_rows(self) -> int:
        return self.rows if self.quotient_rows is None else self.quotient_rows

    def component_rows(self) -> list[int]:
        return [self.rows, self._quotient_rows()]



@dataclass(frozen=True)
class BinaryCodeHash(_Kind):
    """The id's ``bits``-bit binary code (ids outside ``[0, 2**bits)`` hashed into it) cut into
    ``bits / block`` blocks; block ``j`` is a row of component table ``j`` (``2**block`` rows)."""
    bits: int = 32
    block: int = 8
    combine: str = "sum"
    seed: int = 0
    name = "binary"

    def validate(self) -> None:
        _check_int("BinaryCodeHash", "bits", self.bits, 1, 64)
        _check_int("BinaryCodeHash", "block", self.block, 1, 30)
        if self.bits % self.block:
            raise ValueError(f"BinaryCodeHash: bits ({self.bits}) must be a multiple of block ({self.block})")
        _check_combine("BinaryCodeHash", self.combine)
        _check_int("BinaryCodeHash", "seed", self.seed, 0, 2**64 - 1)

    def component_rows(self) -> list[int]:
        return [2**self.block] * (self.bits // self.block)



@dataclass(frozen=True)
class RandomCoding(_Kind):
    """One table of ``buckets`` rows; an id reads ``k`` hashed rows, summed, each times a
    random sign (+1 or -1) when ``signed``."""
    buckets: int = 2**16
    k: int = 2
    signed: bool = True
    seed: int = 0
    name = "random"

    def validate(self) -> None:
        _check_int("RandomCoding", "buckets", self.buckets, 1, _MAX_ROWS)
        _check_int("RandomCoding", "k", self.k, 1, 64)
        if not isinstance(self.signed, bool):
            raise TypeError(f"RandomCoding: signed must be a bool, got {type(self.signed).__name__}")
        _check_int("RandomCoding", "seed", self.seed, 0, 2**64 - 1)

    def component_rows(self) -> list[int]:
        return [self.buckets]

    def keys_per_id(self) -> int:
        return self.k



Compression = Union[MultiHash, QuotientRemainder, BinaryCodeHash, RandomCoding]
_KINDS: dict[str, type] = {"multihash": MultiHash, "qr": QuotientRemainder, "binary": BinaryCodeHash,
                           "random": RandomCoding}
_ALIASES = {"quotient_remainder": "qr", "quotientremainder": "qr", "binarycodehash": "binary",
            "binary_code": "binary", "randomcoding": "random", "random_coding": "random", "multi_hash": "multihash"}


def _parse_value(kind: str, key: str, text: str) -> Any:
    if key in ("combine",):
        return text
    if key == "signed":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"compression '{kind}': signed must be true or false, got {text!r}")
    if key == "quotient_rows" and text == "None":
        return None
    try:
        return int(text.replace("_", ""), 0) if not text.startswith("2**") else 2 ** int(text[3:])
    except ValueError:
        raise ValueError(f"compression '{kind}': {key} must be an int, got {text!r}") from None


def parse_compression(spec: str) -> Compression:
    """``"kind:key=value,..."`` -> a compression, e.g. ``"multihash:k=2,rows=65536"``,
    ``"qr:rows=4096,combine=mul"``, ``"binary:bits=32,block=8"``, ``"random:buckets=65536,k=2"``.
    Kinds: multihash, qr, binary, random; keys are the fields of the matching class. Raises
    ValueError naming what is wrong."""
    if not isinstance(spec, str):
        raise TypeError(f"compression spec must be a str, got {type(spec).__name__}")
    kind, _, rest = spec.strip().partition(":")
    kind = _ALIASES.get(kind.lower(), kind.lower())
    if kind not in _KINDS:
        raise ValueError(f"unknown compression {kind!r} (known: {', '.join(_KINDS)})")
    cls = _KINDS[kind]
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in known:
            raise ValueError(f"compression '{kind}': bad setting {item!r} (known: {', '.join(sorted(known))})")
        kwargs[key] = _parse_value(kind, key, value.strip())
    out = cls(**kwargs)
    out.validate()
    return out


def base_seed(collection_seed: int, table: str, compression: Compression) -> int:
    """The seed of a table's mapping: (collection seed, table name, compression seed)."""
    mixed = np.array([(_fnv1a64(table) ^ int(compression.seed)) & (2**63 - 1)], dtype=np.int64)
    return int(_hash(mixed, int(collection_seed) & (2**64 - 1))[0])
