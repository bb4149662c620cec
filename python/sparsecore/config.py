"""Table, optimizer and initializer configurations.

These are plain dataclasses; the compiled core validates them (one place for every rule)
and raises ``ValueError`` naming the field that is out of range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import numpy as np

__all__ = [
    "SGD", "Momentum", "Adagrad", "RowwiseAdagrad", "Adam", "AdamW", "FTRL", "GroupLasso",
    "Zeros", "Constant", "Uniform", "Normal", "TruncatedNormal", "Admission", "Expiry", "TableConfig",
    "Optimizer", "Initializer",
]


@dataclass(frozen=True)
class SGD:
    """w <- w - lr * (g + weight_decay * w)."""
    lr: float = 0.01
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "sgd", "lr": self.lr, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class Momentum:
    """m <- momentum * m + g; w <- w - lr * m (Nesterov: w <- w - lr * (g + momentum * m))."""
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "momentum", "lr": self.lr, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class Adagrad:
    """s <- s + g^2; w <- w - lr * g / (sqrt(s) + eps), as torch.optim.Adagrad."""
    lr: float = 0.01
    eps: float = 1e-10
    initial_accumulator: float = 0.0
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "adagrad", "lr": self.lr, "eps": self.eps,
                "initial_accumulator": self.initial_accumulator, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class RowwiseAdagrad:
    """One accumulator per row: s <- s + mean(g^2); w <- w - lr * g / (sqrt(s) + eps)."""
    lr: float = 0.01
    eps: float = 1e-8
    initial_accumulator: float = 0.0
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "rowwise_adagrad", "lr": self.lr, "eps": self.eps,
                "initial_accumulator": self.initial_accumulator, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction by the row's own update count (lazy Adam).

    ``use_global_step=True`` corrects by the collection's step instead;
    ``decoupled_weight_decay=True`` is AdamW.
    """
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    use_global_step: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": "adam", "lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1],
                "eps": self.eps, "weight_decay": self.weight_decay,
                "decoupled_weight_decay": self.decoupled_weight_decay,
                "use_global_step": self.use_global_step}


def AdamW(lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, use_global_step: bool = False) -> Adam:
    """Adam with decoupled weight decay (torch.optim.AdamW defaults)."""
    return Adam(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                decoupled_weight_decay=True, use_global_step=use_global_step)


@dataclass(frozen=True)
class FTRL:
    """FTRL-Proximal (McMahan et al. 2013); ``lr`` is alpha.

    ``l1_reference_count=n0 > 0`` scales ``l1`` by the row's update count ``c`` (this update
    included): ``l1 * min(1, sqrt(n0 / c))``, so rows seen at most ``n0`` times get the full
    strength and more frequent rows (more evidence) less. ``0`` keeps ``l1`` for every row.
    """
    lr: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    lr_power: float = -0.5
    initial_accumulator: float = 0.1
    weight_decay: float = 0.0
    l1_reference_count: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {"name": "ftrl", "lr": self.lr, "beta": self.beta, "l1": self.l1, "l2": self.l2,
             "lr_power": self.lr_power, "initial_accumulator": self.initial_accumulator,
             "weight_decay": self.weight_decay}
        if self.l1_reference_count != 0:
            d["l1_reference_count"] = self.l1_reference_count
        return d


@dataclass(frozen=True)
class GroupLasso:
    """The Adagrad step, then w <- w * max(0, 1 - lr * lambda * sqrt(dim) / ||w||) with
    lambda = ``group_lambda``, or with ``l1_reference_count=n0 > 0``
    ``group_lambda * min(1, sqrt(n0 / c))`` for a row updated ``c`` times (this update
    included): rare rows are pushed to zero harder than frequent ones. Rows that reach
    exactly zero can be removed (``EmbeddingCollection.prune``, ``TableConfig(prune_every=)``).
    """
    lr: float = 0.01
    group_lambda: float = 0.0
    eps: float = 1e-10
    initial_accumulator: float = 0.0
    weight_decay: float = 0.0
    l1_reference_count: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {"name": "group_lasso", "lr": self.lr, "group_lambda": self.group_lambda,
             "eps": self.eps, "initial_accumulator": self.initial_accumulator,
             "weight_decay": self.weight_decay}
        if self.l1_reference_count != 0:
            d["l1_reference_count"] = self.l1_reference_count
        return d


Optimizer = Union[SGD, Momentum, Adagrad, RowwiseAdagrad, Adam, FTRL, GroupLasso]


@dataclass(frozen=True)
class Zeros:
    def to_dict(self) -> dict[str, Any]:
        return {"name": "zeros"}


@dataclass(frozen=True)
class Constant:
    value: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "constant", "value": self.value}


@dataclass(frozen=True)
class Uniform:
    low: float = -0.01
    high: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        return {"name": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Normal:
    std: float = 0.01
    mean: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "normal", "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class TruncatedNormal:
    """Normal redrawn (deterministically) beyond 2 standard deviations."""
    std: float = 0.01
    mean: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": "truncated_normal", "mean": self.mean, "std": self.std}


Initializer = Union[Zeros, Constant, Uniform, Normal, TruncatedNormal]

_OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adagrad": Adagrad,
               "rowwise_adagrad": RowwiseAdagrad, "ftrl": FTRL, "group_lasso": GroupLasso}
_INITS = {"zeros": Zeros, "constant": Constant, "uniform": Uniform, "normal": Normal,
          "truncated_normal": TruncatedNormal}


MAX_DIM = 1 << 20  # the engine's limit on floats per row
# The engine's limit on num_embeddings: rows are reserved as address space, and 2^40 rows of
# even 64 bytes pass what x86-64 user space can map.
MAX_NUM_EMBEDDINGS = 1 << 40


def _id_list(ids: Any, which: str) -> Optional[np.ndarray]:
    """An allow or deny list as a sorted, distinct, read-only int64 array (None when empty)."""
    if ids is None:
        return None
    arr = np.asarray(ids)
    if arr.dtype == object or arr.dtype == np.bool_ or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"admission {which} must be an array of int64 ids, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"admission {which} must be one-dimensional, got shape {arr.shape}")
    if arr.size and np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) >= 2**63:
        raise ValueError(f"admission {which} holds an id outside int64")
    out = np.unique(arr.astype(np.int64))
    if out.size == 0:
        return None
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Admission:
    """Which ids a training lookup may turn into rows of a table. Filters are checked at each
    *sighting* (a training lookup that finds no row for the id; each distinct id counts once
    per lookup), and an id is admitted when

        not denied and (allowed or (count and probability and frequency))

    - ``deny=ids``: never admitted (each sighting is rejected, nothing is counted);
    - ``allow=ids``: admitted at the first sighting, whatever the other filters say (the two
      lists may not share an id). Lists are int64 arrays (kept sorted, distinct; millions
      of ids are fine) and are saved with the table's config;
    - ``count_threshold=n``: the id has been sighted at least ``n`` times;
    - ``probability=p`` in ``(0, 1]``: a hash of (table seed, id, sighting count) falls below
      ``p``, so the decision is the same in every process, thread count and run;
    - ``frequency_horizon=H > 0``, the streaming frequency filter: an id's arrivals are taken
      as a Poisson process. Its first sighting (clock tick ``t0``) starts the observation; its
      ``c - 1`` later sightings up to now (tick ``t``) estimate the rate
      ``lambda = (c - 1) / max(t - t0, 1)``, and the probability that it appears again within
      ``H`` ticks is ``P = 1 - exp(-lambda * H)`` (0 at the first sighting). The id passes
      when ``P >= frequency_threshold`` or, with ``frequency_sample=True``, when a hash of
      (table seed, id, c) read as a uniform number in ``[0, 1)`` falls below ``P``. The clock
      ticks once per training lookup call that sights ids of the table (each training
      ``forward`` or ``prepare``; on a parameter server, each training pull a shard answers),
      so ticks count batches. Needs exact counts (no Bloom filter);
    - ``bloom_capacity=C > 0`` keeps the counts in a counting Bloom filter of fixed memory
      instead of one exact entry per pending id: ``m = ceil(-C ln f / ln(2)^2)`` counters of
      ``bloom_counter_bits`` (4 or 8) bits and ``k = round(m / C ln 2)`` hashes (1 to 16) for
      the false-positive rate ``f = bloom_fp_rate``. The estimate never under-counts; an id
      never sighted reads as sighted with probability about ``f`` once ``C`` distinct ids were
      sighted; counters saturate at ``2^bits - 1`` (``n`` may not exceed it). Each parameter
      server shard keeps its own filter of this size, so a cluster sees fewer false positives
      than one embedded table (exact counts and the probability give the same bits both ways).

    Until admitted, an id's training lookups read the table's default row (zeros unless
    ``TableConfig(default_value=...)``) and its gradients are dropped and counted; evaluation
    is unchanged. ``EmbeddingCollection.admission_stats()`` reports admitted, pending,
    rejected and dropped-gradient counts; the state (counts, first sightings, the clock) is
    saved in checkpoints and server snapshots.
    """
    count_threshold: int = 1
    probability: float = 1.0
    bloom_capacity: int = 0
    bloom_fp_rate: float = 0.01
    bloom_counter_bits: int = 8
    allow: Any = None
    deny: Any = None
    frequency_horizon: float = 0.0
    frequency_threshold: float = 0.5
    frequency_sample: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", _id_list(self.allow, "allow"))
        object.__setattr__(self, "deny", _id_list(self.deny, "deny"))

    def _key(self) -> tuple:
        return (self.count_threshold, self.probability, self.bloom_capacity, self.bloom_fp_rate,
                self.bloom_counter_bits, self.frequency_horizon, self.frequency_threshold, self.frequency_sample)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Admission):
            return NotImplemented
        same = lambda a, b: (a is None and b is None) or (a is not None and b is not None  # noqa: E731
                                                         and np.array_equal(a, b))
        return self._key() == other._key() and same(self.allow, other.allow) and same(self.deny, other.deny)

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self, name: str) -> dict[str, Any]:
        for key in ("count_threshold", "bloom_capacity", "bloom_counter_bits"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"table '{name}': admission {key} must be an int, got {type(v).__name__}")
        for key in ("probability", "bloom_fp_rate", "frequency_horizon", "frequency_threshold"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"table '{name}': admission {key} must be a float, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"table '{name}': admission {key} must be finite, got {v}")
        if not isinstance(self.frequency_sample, bool):
            raise TypeError(f"table '{name}': admission frequency_sample must be a bool, "
                            f"got {type(self.frequency_sample).__name__}")
        # The ranges are checked once, by the core (TableConfig validation names the field).
        out: dict[str, Any] = {
            "count_threshold": self.count_threshold, "probability": float(self.probability),
            "bloom_capacity": self.bloom_capacity, "bloom_fp_rate": float(self.bloom_fp_rate),
            "bloom_counter_bits": self.bloom_counter_bits}
        if self.frequency_horizon != 0:
            out.update(frequency_horizon=float(self.frequency_horizon),
                       frequency_threshold=float(self.frequency_threshold), frequency_sample=self.frequency_sample)
        if self.allow is not None:
            out["allow"] = self.allow.tolist()
        if self.deny is not None:
            out["deny"] = self.deny.tolist()
        return out


@dataclass(frozen=True)
class Expiry:
    """Which rows leave a table, and its hard row capacity. A row is *expired* when any rule
    enabled here names it (0 turns a rule off):

    - ``ttl_steps=N``: not updated in the last N steps (``last_step < step - N``);
    - ``ttl_seconds=S``: not updated in the last S seconds of wall time. Rows carry no time:
      the table keeps a small monotone map of step -> wall time and expires the rows whose
      last step is at or before the newest step seen at least S seconds ago (a rule that
      never expires a row updated within S seconds);
    - ``min_l2_norm=x``: the L2 norm of the row's weights is below ``x``;
    - ``predicate=f``: ``f(id, update_count, last_step) -> bool`` (True: expired), a Python
      callable of an embedded table, called with the GIL from the thread of the training or
      ``expire`` call, under a lock of the table (it must not call into the collection); an
      exception it raises surfaces as ``ValueError``. The callable is not saved: the config
      only records that the table has one, so set it again after ``EmbeddingCollection.load``
      (``set_expiry_predicate``). Parameter servers refuse it.

    A new row's ``last_step`` starts at the step it was created, so it is not expired (or
    evicted) before it was trained. Expiry runs on demand (``EmbeddingCollection.expire()``)
    and incrementally: each training step examines the next ``scan_per_step`` slots of the
    table's hash index (a cursor over shards and slots; 0: on demand only).

    ``capacity=C > 0`` bounds the rows of the table, hard, also under concurrent training:
    it is split over the table's ``2**shard_bits`` hash shards (and over the shards of a
    parameter-server cluster). When a training lookup finds its shard full, ``on_full``
    decides: ``"evict"`` removes the lowest-scored rows of the shard in one pass (``policy``
    ``"lru"`` scores by last step, then update count; ``"lfu"`` by update count, then last
    step; ties by id), room for the lookup plus ``eviction_headroom`` x the shard's capacity
    so the pass is amortised (rows of the lookup itself are never evicted); ``"refuse"``
    leaves the id without a row. ``eviction="exact"`` ranks every row of the shard;
    ``"sampled"`` (approximate LRU/LFU, as Redis does it) ranks a seeded sample of at least
    8 rows per row evicted (a window of the shard's hash index, whose keys sit there by hash,
    not by score) and evicts the lowest-scored of the sample: each evicted row is among the
    lowest eighth of its sample, not necessarily of the shard. Both keep the capacity exact
    and evict the same ids for any thread count. A refused id (or one that does not fit even after eviction)
    reads zeros and its gradient is dropped, both counted, as for an id feature admission has
    not admitted. ``EmbeddingCollection.expiry_stats()`` reports expired, evicted and refused
    rows and dropped gradients; they are saved in checkpoints and snapshots.
    """
    ttl_steps: int = 0
    ttl_seconds: float = 0.0
    min_l2_norm: float = 0.0
    predicate: Optional[Callable[[int, int, int], bool]] = field(default=None, compare=False)
    capacity: int = 0
    policy: Literal["lru", "lfu"] = "lru"
    on_full: Literal["evict", "refuse"] = "evict"
    eviction_headroom: float = 1.0 / 16
    scan_per_step: int = 0
    eviction: Literal["exact", "sampled"] = "exact"

    def to_dict(self, name: str) -> dict[str, Any]:
        for key in ("ttl_steps", "capacity", "scan_per_step"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"table '{name}': expiry {key} must be an int, got {type(v).__name__}")
        for key in ("ttl_seconds", "min_l2_norm", "eviction_headroom"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"table '{name}': expiry {key} must be a float, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"table '{name}': expiry {key} must be finite, got {v}")
        for key in ("policy", "on_full", "eviction"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(f"table '{name}': expiry {key} must be a str, got {type(getattr(self, key)).__name__}")
        if self.predicate is not None and not callable(self.predicate):
            raise TypeError(f"table '{name}': expiry predicate must be callable or None, "
                            f"got {type(self.predicate).__name__}")
        # The ranges are checked once, by the core (TableConfig validation names the field).
        return {"ttl_steps": self.ttl_steps, "ttl_seconds": float(self.ttl_seconds),
                "min_l2_norm": float(self.min_l2_norm), "predicate": self.predicate is not None,
                "capacity": self.capacity, "policy": self.policy, "on_full": self.on_full,
                "eviction_headroom": float(self.eviction_headroom), "scan_per_step": self.scan_per_step,
                "eviction": self.eviction}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Expiry":
        # A saved config records that a predicate was set, not the callable.
        return Expiry(**{k: v for k, v in d.items() if k != "predicate"})


@dataclass(frozen=True)
class TableConfig:
    """One embedding table: ``dim`` floats per row, its optimizer and initializer, and how a
    bag of its ids pools: ``"sum"``, ``"mean"`` or ``"none"`` (padded sequences).

    ``storage="fp16"`` keeps the row's weights as IEEE half floats (half the bytes); the
    optimizer state stays float32, pooling accumulates in float32, and each update computes
    in float32 and rounds the new weights once (to nearest even), as are initial values.
    Lookups, exports and checkpoints give the weights as float32 (exactly the stored values).

    ``num_embeddings=N`` makes a table for ids that are already dense, as torch's
    ``nn.EmbeddingBag(N, dim)``: ids lie in ``[0, N)`` and a row is found by direct index
    (no hash probe). Rows keep the layout, initial values, optimizers, checkpoints and server
    support of hash tables (switching a table to a known size changes nothing but speed):
    the N rows are reserved as address space and a row is initialised on first use in
    training, so ``sizes()`` counts the ids seen and memory grows with the pages touched (at
    most N x row bytes); in evaluation an id never trained reads as zeros. An id outside
    ``[0, N)`` raises ``ValueError`` naming the table and the id (``out_of_range="error"``)
    or is mapped into the range by a hash seeded with the table seed (``"hash"``).
    ``N`` must lie in ``[1, 2^40]``; ``None`` (the default) is a hash table for any int64 id.

    ``admission=Admission(...)`` lets an id become a row only after it passes feature
    admission (allow and deny lists, a count threshold, a probability, a streaming frequency
    filter, counts in a counting Bloom filter; see ``Admission``); until then its training
    lookups read the default row and its gradients are dropped and counted. ``None`` (the
    default) admits every id at its first training lookup.

    ``default_value`` is every weight of the *default row*: what an id without a row reads,
    in training (not yet admitted) and in evaluation (unknown or pruned), in ``sum``,
    ``mean`` and ``none`` pooling and in ``lookup``, embedded and on parameter servers alike
    (fp16 tables read it rounded to half precision; the device backend supports only 0).

    ``prune_every=N`` (Group Lasso tables only) removes the rows whose weights reached exactly
    zero every ``N`` steps (see ``EmbeddingCollection.prune``); ``0`` prunes on demand only.

    ``expiry=Expiry(...)`` removes rows by age (steps or seconds), weight norm or a predicate,
    and bounds the table's rows with a hard capacity (evicting LRU or LFU rows, or refusing
    new ids); see ``Expiry``. ``None`` (the default) keeps every row. Hash tables only.

    ``compression=MultiHash(...)`` (or ``QuotientRemainder``, ``BinaryCodeHash``,
    ``RandomCoding``; see :mod:`sparsecore.compression`) keeps no row per id: ids share the
    rows of a few fixed-size component tables, so the table's memory is fixed and known up
    front. ``None`` (the default) gives every id its own row.
    """
    dim: int
    optimizer: Optimizer = field(default_factory=Adagrad)
    init: Initializer = field(default_factory=Normal)
    pooling: Literal["sum", "mean", "none"] = "sum"
    shard_bits: int = 6
    storage: Literal["fp32", "fp16"] = "fp32"
    num_embeddings: Optional[int] = None
    out_of_range: Literal["error", "hash"] = "error"
    admission: Optional[Admission] = None
    default_value: float = 0.0
    prune_every: int = 0
    expiry: Optional[Expiry] = None
    compression: Optional[Any] = None

    def to_dict(self, name: str) -> dict[str, Any]:
        if self.compression is not None:
            raise ValueError(f"table '{name}': a compressed table is held as its component tables; "
                             f"pass it to an EmbeddingCollection (or expand it with component_configs)")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"table '{name}': dim must be an int, got {type(self.dim).__name__}")
        if self.dim < 1:
            raise ValueError(f"table '{name}': dim must be >= 1, got {self.dim}")
        if self.dim > MAX_DIM:
            raise ValueError(f"table '{name}': dim must be <= 2^20, got {self.dim}")
        parts = {"optimizer": self.optimizer.to_dict(), "init": self.init.to_dict()}
        for part, fields in parts.items():
            for key, value in fields.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"table '{name}': {part} field '{key}' must be finite, got {value}")
        out = {"name": name, "dim": self.dim, **parts, "pooling": self.pooling, "shard_bits": self.shard_bits,
               "storage": self.storage}
        if self.out_of_range not in ("error", "hash"):
            raise ValueError(f"table '{name}': out_of_range must be 'error' or 'hash', got {self.out_of_range!r}")
        if self.num_embeddings is not None:
            n = self.num_embeddings
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"table '{name}': num_embeddings must be an int or None, got {type(n).__name__}")
            if n < 1 or n > MAX_NUM_EMBEDDINGS:
                raise ValueError(f"table '{name}': num_embeddings must be in [1, 2^40], got {n}")
            out["num_embeddings"] = n
            out["out_of_range"] = self.out_of_range
        elif self.out_of_range != "error":
            raise ValueError(f"table '{name}': out_of_range applies only to a table with num_embeddings")
        if self.admission is not None:
            if not isinstance(self.admission, Admission):
                raise TypeError(f"table '{name}': admission must be an Admission or None, "
                                f"got {type(self.admission).__name__}")
            out["admission"] = self.admission.to_dict(name)
        dv = self.default_value
        if isinstance(dv, bool) or not isinstance(dv, (int, float)):
            raise TypeError(f"table '{name}': default_value must be a float, got {type(dv).__name__}")
        if not math.isfinite(dv):
            raise ValueError(f"table '{name}': default_value must be finite, got {dv}")
        if dv != 0:
            out["default_value"] = float(dv)
        pe = self.prune_every
        if isinstance(pe, bool) or not isinstance(pe, int):
            raise TypeError(f"table '{name}': prune_every must be an int, got {type(pe).__name__}")
        if pe != 0:
            out["prune_every"] = pe
        if self.expiry is not None:
            if not isinstance(self.expiry, Expiry):
                raise TypeError(f"table '{name}': expiry must be an Expiry or None, got {type(self.expiry).__name__}")
            out["expiry"] = self.expiry.to_dict(name)
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TableConfig":
        opt = dict(d["optimizer"])
        name = opt.pop("name")
        if name == "adam":
            optimizer: Optimizer = Adam(lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                                        weight_decay=opt["weight_decay"],
                                        decoupled_weight_decay=opt["decoupled_weight_decay"],
                                        use_global_step=opt["use_global_step"])
        else:
            optimizer = _OPTIMIZERS[name](**opt)
        init = dict(d["init"])
        init_cls = _INITS[init.pop("name")]
        return TableConfig(dim=d["dim"], optimizer=optimizer, init=init_cls(**init),
                           pooling=d["pooling"], shard_bits=d.get("shard_bits", 6),
                           storage=d.get("storage", "fp32"), num_embeddings=d.get("num_embeddings"),
                           out_of_range=d.get("out_of_range", "error"),
                           admission=Admission(**d["admission"]) if "admission" in d else None,
                           default_value=d.get("default_value", 0.0), prune_every=d.get("prune_every", 0),
                           expiry=Expiry.from_dict(d["expiry"]) if "expiry" in d else None)


def tables_to_json(tables: dict[str, TableConfig]) -> str:
    if not isinstance(tables, dict) or not tables:
        raise ValueError("tables must be a non-empty dict of name -> TableConfig")
    out = []
    for name, cfg in tables.items():
        if not isinstance(name, str):
            raise TypeError(f"table names must be strings, got {type(name).__name__}")
        if not isinstance(cfg, TableConfig):
            raise TypeError(f"table '{name}': expected a TableConfig, got {type(cfg).__name__}")
        out.append(cfg.to_dict(name))
    return json.dumps(out)
