"""Serving: the :class:`Subscriber` that follows an export directory, :func:`read_export` to
look inside one export, the :class:`Predictor` of a model directory, and the
:class:`PredictClient` of a prediction server (``sparsecore serve``).

A training process writes exports into a stream directory (``EmbeddingCollection.export_full``
and ``export_delta``, or ``Cluster.export_full`` / ``export_delta`` on parameter servers); a
serving process follows it with a :class:`Subscriber`. The format is described in the README
("Incremental export") and ``csrc/sparsecore/serving/export_format.h``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from . import _core
from ._arrays import as_int64, is_torch, to_torch

__all__ = ["PredictClient", "Predictor", "Subscriber", "read_export"]

PathLike = Union[str, os.PathLike]


def read_export(path: PathLike) -> dict[str, Any]:
    """The contents of one complete export directory (``full-<v>`` or ``delta-<s>-<v>``), all
    parts together: ``kind``, ``version``, ``since`` (None for a full export), ``dtype`` and
    ``tables``: per table ``keys`` int64[n], ``weights`` float32[n, dim] (dequantized) and
    ``deleted`` int64[m]. Every file is checked (sizes, checksums); a damaged export raises
    :class:`sparsecore.CorruptDataError`, an incomplete one :class:`KeyError`."""
    parts = _core.complete_export_parts(str(path))
    if not parts:
        raise KeyError(f"export '{path}' is not complete (or is not an export)")
    out: dict[str, Any] = {}
    tables: dict[str, dict[str, list[np.ndarray]]] = {}
    for p in parts:
        part = _core.read_export_part(p)
        for key in ("kind", "version", "since", "dtype"):
            out[key] = part[key]
        for name, t in part["tables"].items():
            acc = tables.setdefault(name, {"keys": [], "weights": [], "deleted": []})
            for field in acc:
                acc[field].append(t[field])
    out["tables"] = {name: {field: np.concatenate(v) for field, v in t.items()} for name, t in tables.items()}
    return out


class Subscriber:
    """Follows the stream directory ``path`` of a training process's exports and serves the
    rows they hold: the newest full export first, then the deltas that continue it, in version
    order. Each export is read and checked whole, then applied at once: concurrent
    :meth:`lookup` calls see the state before an export or after it, never a mix.

    ``poll()`` applies what is ready now and returns how many exports it applied;
    ``start(interval)`` polls on a background thread until ``stop()`` (or ``close()``, or the
    end of a ``with`` block). :attr:`version` is the version of the last export applied (-1
    before any). Unknown ids read the table's default row (zeros unless ``default_value``)."""

    def __init__(self, path: PathLike):
        self._c = _core.Subscriber(str(Path(path)))

    @property
    def path(self) -> str:
        return self._c.stream_dir

    @property
    def version(self) -> int:
        return self._c.version

    @property
    def tables(self) -> list[str]:
        return list(self._c.tables)

    def poll(self) -> int:
        return self._c.poll()

    def apply(self, export_path: PathLike) -> int:
        """Applies one complete export directory whatever the current version (a full export
        replaces everything; a delta applies over the current state). Returns its version."""
        return self._c.apply(str(export_path))

    def start(self, interval: float = 1.0) -> "Subscriber":
        """Polls every ``interval`` seconds on a background thread. A failed poll (a damaged
        export) is kept in :attr:`last_error` and the thread keeps polling."""
        self._c.start(float(interval))
        return self

    def stop(self) -> None:
        self._c.stop()

    close = stop

    @property
    def running(self) -> bool:
        return self._c.running

    @property
    def last_error(self) -> str:
        return self._c.last_error

    def dim(self, table: str) -> int:
        return self._c.dim(table)

    def size(self, table: str) -> int:
        return self._c.size(table)

    def lookup(self, table: str, ids: Any) -> Any:
        """The rows of ``ids`` in ``table`` as float32[n, dim]; unknown ids read as zeros.
        torch input gives torch output."""
        torch_out = is_torch(ids)
        out = self._c.lookup(table, as_int64(ids, f"ids of table '{table}'"))
        return to_torch(out) if torch_out else out

    def rows(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row of ``table``, ascending by key: (keys int64[n], weights float32[n, dim])."""
        return self._c.rows(table)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Subscriber({self.path!r}, version={self.version})"


class Predictor:
    """A model directory written by :func:`sparsecore.export.export_model`, served by C++
    (``serving::Predictor``): the rows come from a :class:`Subscriber` on the model's export
    stream (the newest exports applied when it opens; :meth:`poll` or :meth:`start` follow new
    ones while serving), pooled as in training, then the exported dense network.

    ``predict(batch, dense=None, raw=None)``: ``batch`` maps each feature to ``(ids, offsets)``
    or ``(ids, offsets, weights)`` (offsets of length B + 1), or is a
    :class:`sparsecore.data.Batch` (sample-compressed batches are expanded; its dense features
    are used when the model has a dense input). ``raw`` gives features by their raw values
    instead: it maps each raw column of :attr:`columns` to one entry per sample (a list of
    values, one value, or None; values str, bytes or int), hashed as the readers hash them
    (:func:`sparsecore.data.hash_features`), a feature's bag holding its columns' ids column
    after column; empty values are missing. Returns the logits, float32[B] (or [B, outputs]). Thread-safe: predictions
    from many threads run at once, each reading one version of the rows.
    """

    def __init__(self, path: PathLike):
        self._c = _core.ServedModel(str(Path(path)))
        # fixed by the model directory: read once, not on every predict
        self._features = [name for name, _ in self._c.features]
        self._columns = [list(c) for c in self._c.columns]
        self._has_dense = bool(self._c.dense_width)

    @property
    def features(self) -> list[str]:
        return list(self._features)

    @property
    def version(self) -> int:
        """The version (training step) of the rows served."""
        return self._c.version

    def poll(self) -> int:
        """Applies the exports that are ready now; returns how many."""
        return self._c.poll()

    def start(self, interval: float = 1.0) -> "Predictor":
        self._c.start(float(interval))
        return self

    def stop(self) -> None:
        self._c.stop()

    close = stop

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def columns(self) -> dict[str, list[str]]:
        """Per feature, the raw columns hashed into its ids (``predict(raw=...)``)."""
        return dict(zip(self.features, (list(c) for c in self._c.columns)))

    def predict(self, batch: Any = None, dense: Any = None, raw: Any = None) -> np.ndarray:
        parts, d = _predict_inputs(self._features, self._columns, self._has_dense, batch, dense, raw)
        out = self._c.predict(parts, d)
        return out[:, 0] if out.shape[1] == 1 else out


def _raw_bags(columns: dict[str, list[str]], raw: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ids, offsets) of every feature whose raw columns ``raw`` gives (column -> one entry per
    sample: a list of values, one value, or None), hashed as the readers hash them
    (:mod:`sparsecore.data.hashing`); a sample's bag holds its columns' ids column after column."""
    from .data.hashing import _as_bytes, _hash_bytes

    owner = {c: f for f, cs in columns.items() for c in cs}
    unknown = [c for c in raw if c not in owner]
    if unknown:
        raise ValueError(f"predict: the model has no raw columns {unknown} (it hashes {sorted(owner)})")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    batch: Optional[int] = None
    for feature, cs in columns.items():
        given = [c for c in cs if c in raw]
        if not given:
            continue
        if len(given) != len(cs):
            raise ValueError(f"predict: feature '{feature}' is hashed from columns {cs}; raw gives only {given}")
        per_column = []
        for c in cs:
            values: list[Any] = []
            offsets = [0]
            for entry in raw[c]:
                if isinstance(entry, (list, tuple, np.ndarray)):
                    values.extend(v for v in entry if v is not None)
                elif entry is not None:
                    values.append(entry)
                offsets.append(len(values))
            if batch is not None and len(offsets) - 1 != batch:
                raise ValueError(f"predict: raw column '{c}' has {len(offsets) - 1} samples, another {batch}")
            batch = len(offsets) - 1
            data = _as_bytes(np.array(values, dtype=object) if values else np.zeros(0, dtype="S1"),
                             f"values of raw column '{c}'")
            per_column.append(_hash_bytes(c, data, np.asarray(offsets, np.int64)))
        n = len(per_column[0][1]) - 1  # samples (every column has as many)
        lengths = sum(np.diff(o) for _, o in per_column)
        bag_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=bag_offsets[1:])
        ids = np.empty(int(bag_offsets[-1]), np.int64)
        before = np.zeros(n, np.int64)  # ids of earlier columns in each sample's bag
        for col_ids, col_offsets in per_column:
            col_lengths = np.diff(col_offsets)
            dest = np.repeat(bag_offsets[:-1] + before - col_offsets[:-1], col_lengths) + np.arange(len(col_ids))
            ids[dest] = col_ids
            before += col_lengths
        out[feature] = (ids, bag_offsets)
    return out


_INT64 = np.dtype(np.int64)


def _plain_int64(a: Any) -> bool:
    """A C-contiguous int64 ndarray, which the C++ side reads as it is (the common request)."""
    return type(a) is np.ndarray and a.dtype is _INT64 and a.flags.c_contiguous


def _predict_inputs(features: list[str], columns: list[list[str]], has_dense: bool, batch: Any, dense: Any,
                    raw: Any = None) -> tuple[list[Any], Any]:
    """The arrays of a prediction request, one (ids, offsets, weights) per feature in the
    model's order, and the dense rows (or None); shared by Predictor and PredictClient."""
    if batch is None:
        batch = {}
    if raw:
        hashed = _raw_bags(dict(zip(features, columns)), raw)
        sparse = batch.sparse if hasattr(batch, "sparse") else batch
        both = [f for f in hashed if f in sparse]
        if both:
            raise ValueError(f"predict: features {both} are given both as ids and as raw columns")
        if hasattr(batch, "sparse"):
            raise ValueError("predict: raw values go with a dict of ids, not a Batch")
        batch = {**batch, **hashed}
    if hasattr(batch, "sparse"):
        if getattr(batch, "compressed", False):
            batch = batch.expand()
        if dense is None and has_dense:
            dense = batch.dense
        batch = batch.sparse
    missing = [f for f in features if f not in batch]
    if missing:
        raise ValueError(f"predict: features {missing} are missing (the model reads {features})")
    parts: list[tuple[Any, Any, Any]] = []
    for name in features:
        item = batch[name]
        if type(item) is tuple and len(item) == 2 and _plain_int64(item[0]) and _plain_int64(item[1]):
            parts.append((item[0], item[1], None))  # already what the C++ side reads
            continue
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(f"predict: feature '{name}' needs (ids, offsets) or (ids, offsets, weights)")
        ids = as_int64(item[0], f"ids of feature '{name}'")
        offsets = as_int64(item[1], f"offsets of feature '{name}'")
        weights = None if len(item) == 2 or item[2] is None else np.ascontiguousarray(item[2], np.float32)
        parts.append((ids, offsets, weights))
    d = None if dense is None else np.ascontiguousarray(dense, np.float32)
    return parts, d


class PredictClient:
    """A client of ``sparsecore serve`` (or of a :class:`sparsecore.serve.PredictServer`) over
    its RPC port: ``PredictClient("127.0.0.1:7000", token=...)``. :meth:`predict` takes what
    :meth:`Predictor.predict` takes and returns the same logits, computed by the server (and
    batched there with other clients' requests). Calls from many threads share the connection.

    ``timeout``: the default deadline of a call in seconds (None: none); a call past it raises
    :class:`sparsecore.RpcTimeoutError`. A wrong token raises :class:`sparsecore.RpcAuthError`
    when connecting; a malformed request ValueError naming what is wrong."""

    def __init__(self, address: str, token: str = "", timeout: Optional[float] = None,
                 connect_timeout: float = 5.0):
        host, sep, port = str(address).rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"address must be 'host:port', got '{address}'")
        if timeout is not None and not 0 < timeout <= 86400:
            raise ValueError(f"timeout must be in (0, 86400] seconds or None, got {timeout}")
        self.address = str(address)
        self._c = _core.PredictClient(host, int(port), token, 0 if timeout is None else _ms(timeout),
                                      _ms(connect_timeout))

    @property
    def features(self) -> list[str]:
        return list(self._c.features)

    @property
    def version(self) -> int:
        """The version of the rows the server serves now (asks it)."""
        return self._c.refresh()

    @property
    def columns(self) -> dict[str, list[str]]:
        """Per feature, the raw columns hashed into its ids (``predict(raw=...)``)."""
        return dict(zip(self.features, (list(c) for c in self._c.columns)))

    def predict(self, batch: Any = None, dense: Any = None, raw: Any = None,
                timeout: Optional[float] = None) -> np.ndarray:
        """Logits float32[B] (or [B, outputs]); ``raw`` as :meth:`Predictor.predict` takes it
        (hashed here, sent as ids); ``timeout`` overrides the client's deadline."""
        parts, d = _predict_inputs(self.features, list(self._c.columns), bool(self._c.dense_width), batch, dense, raw)
        out, _ = self._c.predict(parts, d, -1 if timeout is None else _ms(timeout))
        return out[:, 0] if out.shape[1] == 1 else out

    def __repr__(self) -> str:
        return f"PredictClient({self.address!r})"


def _ms(seconds: float) -> int:
    if not 0 < seconds <= 86400:
        raise ValueError(f"a timeout must be in (0, 86400] seconds, got {seconds}")
    return max(1, int(round(seconds * 1000)))
