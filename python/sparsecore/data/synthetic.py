"""Synthetic CTR data with a planted ground truth (workloads W1 and W2 of bench/README.md).

Sample s has, per feature group, a bag of ``min_bag..max_bag`` ids (uniform), each id a
Zipf(``zipf_exponent``) rank over ``vocab_size`` ids scattered by a fixed permutation
(``permutation_seed``). Its label is Bernoulli(p), p = sigmoid(bias + sum of hidden per-id
weights over all its ids): the best achievable AUC on a sample set is the AUC of p itself,
:meth:`SyntheticData.planted_auc`. Sample s is a pure function of (config, s): batches of any
size cut the same stream, and resuming at a position continues it exactly.

Sample compression (XDL): with ``samples_per_view = r``, samples [v r, (v + 1) r) are the ads
of page view v and the first ``num_user_groups`` groups (its user) are shared by them. A
``compressed`` source yields batches that carry those groups once per page view plus
``sample_group``; ``Batch.expand()`` gives the uncompressed equivalent.

Drift (``drift_period = D > 0``) models an online log: each popularity rank is a slot that a
sequence of ids holds in turn for D samples each (the changes staggered over ranks), so new ids
keep appearing at every popularity and the ids they replace never come back. The number of
distinct ids grows by about ``vocab_size`` per group every D samples, while the ids in use at
any moment stay ``vocab_size`` per group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .._core import io as _io
from .batch import Batch, concat_batches
from .metrics import auc

__all__ = ["SyntheticConfig", "SyntheticData"]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_groups: int = 23
    vocab_size: int = 1_000_000
    min_bag: int = 1
    max_bag: int = 10
    zipf_exponent: float = 1.1
    permutation_seed: int = 1234
    seed: int = 0
    weight_std: float = 0.1
    bias: float = -1.0
    num_user_groups: int = 0
    samples_per_view: int = 1
    drift_period: int = 0  # samples per popularity shift (0: a stationary stream)
    batch_size: int = 5000
    group_names: tuple[str, ...] | None = None  # default "f0", "f1", ...

    def names(self) -> list[str]:
        if self.group_names is not None:
            if len(self.group_names) != self.num_groups:
                raise ValueError(f"group_names has {len(self.group_names)} names for num_groups={self.num_groups}")
            return list(self.group_names)
        return [f"f{i}" for i in range(self.num_groups)]

    @classmethod
    def w1(cls, **overrides: Any) -> SyntheticConfig:
        """W1, Criteo-like: 26 groups, ids 0..1M-1, 1-20 ids per bag, Zipf(1.1), batch 4096."""
        base = dict(num_groups=26, vocab_size=1_000_000, min_bag=1, max_bag=20, zipf_exponent=1.1,
                    permutation_seed=1234, weight_std=0.07, batch_size=4096)
        return cls(**{**base, **overrides})

    @classmethod
    def w2(cls, **overrides: Any) -> SyntheticConfig:
        """W2, XDL paper: 23 groups (the first 12 describe the user), 1-10 ids per bag,
        batch 5000. ``samples_per_view`` > 1 sets the sample-compression ratio."""
        base = dict(num_groups=23, vocab_size=1_000_000, min_bag=1, max_bag=10, zipf_exponent=1.1,
                    permutation_seed=1234, weight_std=0.1, num_user_groups=12, batch_size=5000)
        return cls(**{**base, **overrides})


class SyntheticData:
    """A data source over a :class:`SyntheticConfig` stream.

    ``num_samples`` bounds the stream (None: endless); ``compressed`` yields sample-compressed
    batches. Batches carry ``probabilities`` (the planted p) and ``users`` (page view ids).
    """

    kind = "synthetic"

    def __init__(self, config: SyntheticConfig | None = None, *, num_samples: int | None = None,
                 compressed: bool = False, start: int = 0) -> None:
        self.config = config or SyntheticConfig.w2()
        c = self.config
        if c.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {c.batch_size}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self._gen = _io.SyntheticGenerator(
            group_names=c.names(), vocab_size=c.vocab_size, min_bag=c.min_bag, max_bag=c.max_bag,
            zipf_exponent=c.zipf_exponent, permutation_seed=c.permutation_seed, seed=c.seed,
            weight_std=c.weight_std, bias=c.bias, num_user_groups=c.num_user_groups,
            samples_per_view=c.samples_per_view, drift_period=c.drift_period)
        self.num_samples = num_samples
        self.compressed = compressed
        self.position = start
        self.batch_size = c.batch_size

    @property
    def group_names(self) -> list[str]:
        return self.config.names()

    def generate(self, first: int, count: int, compressed: bool | None = None) -> Batch:
        """Samples [first, first + count) regardless of the stream position."""
        flag = self.compressed if compressed is None else compressed
        return Batch._from_core(self._gen.generate(first, count, flag))

    def next_batch(self, batch_size: int | None = None) -> Batch | None:
        n = batch_size or self.batch_size
        if n < 1:
            raise ValueError(f"batch_size must be >= 1, got {n}")
        if self.num_samples is not None:
            n = min(n, self.num_samples - self.position)
            if n <= 0:
                return None
        b = self.generate(self.position, n)
        self.position += n
        return b

    def __iter__(self) -> Iterator[Batch]:
        while (b := self.next_batch()) is not None:
            yield b

    def true_probabilities(self, batch: Batch) -> np.ndarray:
        """The planted click probability of every sample of ``batch`` (any batch over this
        config's groups, compressed or not, e.g. read back from a file)."""
        names = self.group_names
        if list(batch.sparse) != names:
            raise ValueError(f"batch groups {list(batch.sparse)} are not the generator's {names}")
        groups = [(np.asarray(batch.sparse[n][0], np.int64), np.asarray(batch.sparse[n][1], np.int64),
                   n in batch.shared) for n in names]
        return self._gen.true_probabilities(batch.num_samples, groups, batch.sample_group)

    def planted_weight(self, group: int, id: int) -> float:
        return self._gen.planted_weight(group, id)

    def planted_auc(self, batches: Batch | Iterable[Batch]) -> float:
        """The planted optimum: AUC of the true probabilities on these samples' labels."""
        b = batches if isinstance(batches, Batch) else concat_batches(batches)
        probabilities = b.probabilities if b.probabilities is not None else self.true_probabilities(b)
        return auc(b.labels, probabilities)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "position": self.position, "config": dataclasses.asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} source, this is {self.kind!r}")
        saved = dict(state["config"])
        if saved.get("group_names") is not None:
            saved["group_names"] = tuple(saved["group_names"])
        if SyntheticConfig(**saved) != self.config:
            raise ValueError("state was saved by a generator with another config")
        position = int(state["position"])
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.position = position
