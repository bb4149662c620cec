"""PyTorch bridge: an ``nn.Module`` over an :class:`~sparsecore.EmbeddingCollection`.

Its forward returns pooled tensors that carry autograd; when ``loss.backward()`` reaches
them, their gradients go straight into the collection's fused optimizer (the sparse update
happens during backward, as in TorchRec's fused embeddings). The dense model is any
``nn.Module`` with its own torch optimizer::

    ebc = sparsecore.torch.EmbeddingBagCollection({"user": sc.TableConfig(dim=16), ...})
    pooled = ebc(batch)                              # {"user": Tensor[B, 16], ...}
    loss = loss_fn(mlp(torch.cat(list(pooled.values()), 1)), labels)
    loss.backward()                                  # also updates the embedding rows
    dense_opt.step()

Sample compression: groups listed in ``shared`` carry one bag per page view; their pooled
rows are expanded to samples by ``sample_group`` (int64[B]) with autograd, so their gradient
is summed back per page view, the same as pooling every sample's copy.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import _core
from .config import TableConfig
from .embedding import EmbeddingCollection, PreparedBatch
from .threads import ThreadsSpec, apply_default_split

__all__ = ["DinAttention", "Dice", "EmbeddingBagCollection", "ServerDenseOptimizer", "mlp", "place_by_size",
           "sync_dense"]


class _FusedSparseUpdate(torch.autograd.Function):
    """Outputs the pooled rows of a prepared batch; backward pushes their gradients into the
    collection's fused optimizer and returns nothing to autograd."""

    @staticmethod
    def forward(ctx, anchor, collection, prepared, *outputs):  # type: ignore[override]
        ctx.collection = collection
        ctx.prepared = prepared
        ctx.shapes = [o.shape for o in outputs]
        return outputs

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        arrays = {}
        for name, g, shape in zip(ctx.prepared.names, grads, ctx.shapes):
            if g is None:
                g = torch.zeros(shape, dtype=torch.float32)
            arrays[name] = np.ascontiguousarray(g.detach().to(torch.float32).numpy())
        ctx.collection.backward(ctx.prepared, arrays)
        return (None, None, None) + (None,) * len(grads)


def _segment_sum(rows: np.ndarray, group: np.ndarray, num_groups: int) -> np.ndarray:
    """Sum of ``rows`` [B, d] per ``group`` id (int64[B] in [0, num_groups)) -> [num_groups, d]."""
    counts = np.bincount(group, minlength=num_groups)
    if num_groups and counts.all() and np.all(group[1:] >= group[:-1]):
        # Samples of a page view are contiguous (every source writes them so): one pass.
        starts = np.zeros(num_groups, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        return np.add.reduceat(rows, starts, axis=0)
    out = np.zeros((num_groups, rows.shape[1]), dtype=rows.dtype)
    np.add.at(out, group, rows)
    return out


class _ConcatLayout:
    """Where each group of a prepared batch goes in the dense model's input [B, width]: group g
    in columns [starts[g], starts[g] + dims[g]), dense features (if any) after the last group.
    A shared group (sample compression: one bag per page view) is pooled per view and
    expanded to samples by ``index`` (int64[B], the view of each sample)."""

    def __init__(self, collection: Any, prepared: PreparedBatch, index: np.ndarray, shared: tuple[bool, ...],
                 num_samples: int, dense_width: int):
        self.collection, self.prepared, self.index, self.shared = collection, prepared, index, shared
        configs = collection.tables
        self.dims = [configs[n].dim for n in prepared.names]
        self.starts = np.concatenate([[0], np.cumsum(self.dims)]).astype(np.int64).tolist()
        self.views = [len(o) - 1 for o in prepared.offsets]  # bags per group
        self.num_samples = num_samples
        self.width = self.starts[-1] + dense_width

    def fill(self, x: np.ndarray, pulled: Optional[list[np.ndarray]], dense: Optional[np.ndarray]) -> None:
        """Writes the pooled rows (read now, or ``pulled`` ahead) and ``dense`` into ``x``."""
        blocks = [x[:, c:c + d] for c, d in zip(self.starts, self.dims)]
        targets = [np.empty((v, d), np.float32) if s else b
                   for b, v, d, s in zip(blocks, self.views, self.dims, self.shared)]
        if pulled is not None:
            for t, rows in zip(targets, pulled):
                t[...] = rows
        else:
            self.collection.pool_into(self.prepared, targets)
        for b, t, s in zip(blocks, targets, self.shared):
            if s:
                np.take(t, self.index, axis=0, out=b)
        if dense is not None:
            x[:, self.starts[-1]:] = dense

    def backward(self, grad: np.ndarray) -> None:
        """Pushes each group's columns of ``grad`` [B, width] into the fused optimizer, read in
        place (shared groups summed back per page view first)."""
        grads = [_segment_sum(grad[:, c:c + d], self.index, v) if s else grad[:, c:c + d]
                 for c, d, v, s in zip(self.starts, self.dims, self.views, self.shared)]
        self.collection.backward_rows(self.prepared, grads)


class _InputBuffer:
    """The memory of forward_concat's [B, width] tensor, reused from call to call while nothing
    can see the previous call's tensor any more: no other Python reference to it, no other
    holder of its TensorImpl (autograd's saved inputs, released by backward) and no other
    tensor or array on its storage (views, ``.numpy()``, ``.detach()``). Otherwise, or when
    the shape changes, the next call gets new memory. A fresh 8 MB tensor per training step
    costs a page fault per 4 KB page the pooling then writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._array: Optional[np.ndarray] = None
        self._last: Optional[torch.Tensor] = None

    def __reduce__(self) -> tuple:  # copies and pickles of the module start with a buffer of their own
        return (_InputBuffer, ())

    def tensor(self, rows: int, cols: int) -> torch.Tensor:
        with self._lock:
            last, self._last = self._last, None
            reuse = False
            if last is not None and self._array is not None and self._array.shape == (rows, cols):
                try:
                    # References: `last` and getrefcount's argument; TensorImpl holders: last;
                    # storage users: last and the temporary untyped_storage() object.
                    reuse = (sys.getrefcount(last) == 2 and last._use_count() == 1  # type: ignore[attr-defined]
                             and torch._C._storage_Use_Count(last.untyped_storage()._cdata) == 2)
                except (AttributeError, RuntimeError):  # a torch without these counters: never reuse
                    reuse = False
            del last
            if not reuse:
                self._array = np.empty((rows, cols), np.float32)
            x = torch.from_numpy(self._array)
            self._last = x
            return x


class _ConcatFusedSparseUpdate(torch.autograd.Function):
    """The dense model's input [B, width]: every group's pooled rows written straight into its
    column block of one new tensor (no per-group array, no concatenation), dense features after
    them. Backward hands each group's column block of the input gradient to the collection's
    fused optimizer in place (shared groups summed back per page view)."""

    @staticmethod
    def forward(ctx, anchor, layout, pulled, dense, buffer):  # type: ignore[override]
        ctx.layout = layout
        x = buffer.tensor(layout.num_samples, layout.width)
        layout.fill(x.numpy(), pulled, dense)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        g = grad.detach().to(torch.float32)
        ctx.layout.backward(g.contiguous().numpy())
        return None, None, None, None, None


class EmbeddingBagCollection(nn.Module):
    """Pooled embedding lookups for a dict of feature groups, trained by fused sparse optimizers.

    ``tables``: name -> :class:`~sparsecore.TableConfig` (or pass an existing ``collection``).
    In ``train()`` mode unknown ids are inserted and gradients update the rows during
    ``loss.backward()``; in ``eval()`` mode lookups never insert and carry no autograd.

    ``threads``: how torch's intra-op pool and sparsecore's pool share the cores: ``"auto"``
    (default: half each, once per process, unless a count was already chosen; see
    :mod:`sparsecore.threads`), ``(torch_threads, sparse_threads)``, or None to leave both.
    """

    def __init__(self, tables: Optional[Mapping[str, TableConfig]] = None, seed: int = 0, *,
                 collection: Optional[EmbeddingCollection] = None, threads: ThreadsSpec = "auto"):
        super().__init__()
        apply_default_split(threads)
        if collection is None:
            if tables is None:
                raise ValueError("pass tables (name -> TableConfig) or an existing collection")
            collection = EmbeddingCollection(tables, seed)
        self.collection = collection
        self._input_buffer = _InputBuffer()

    @property
    def output_dims(self) -> dict[str, int]:
        return {name: cfg.dim for name, cfg in self.collection.tables.items()}

    def prepare(self, batch: Any) -> PreparedBatch:
        """Validates, dedups and pulls a batch ahead of :meth:`forward` (for pipelines)."""
        return self.collection.prepare(_sparse_of(batch), train=self.training)

    def forward(self, batch: Any, *, sample_group: Any = None, shared: Iterable[str] = (),
                prepared: Optional[PreparedBatch] = None,
                pulled: Optional[list[np.ndarray]] = None) -> dict[str, Any]:
        """Pooled tensors per group ([B, dim]; pooling "none": (Tensor[B, L, dim], lengths)).

        ``batch`` is a mapping name -> (ids, offsets[, weights]) or a ``sparsecore.data.Batch``
        (whose ``sample_group`` and ``shared`` are then used). ``prepared`` reuses a batch
        from :meth:`prepare`; ``pulled`` its already pulled rows (one step stale pipelines).
        """
        if hasattr(batch, "sparse") and hasattr(batch, "sample_group"):
            sample_group = batch.sample_group if sample_group is None else sample_group
            shared = batch.shared if not shared else shared
        if prepared is None:
            prepared = self.prepare(batch)
        outs = pulled if pulled is not None else self.collection.pooled_rows(prepared)
        pooled = [torch.from_numpy(o) for o in outs]
        if self.training and torch.is_grad_enabled():
            anchor = torch.empty(0, requires_grad=True)
            pooled = list(_FusedSparseUpdate.apply(anchor, self.collection, prepared, *pooled))
        result: dict[str, Any] = {}
        shared = set(shared)
        index = None
        if sample_group is not None and shared:
            index = torch.as_tensor(np.asarray(sample_group, dtype=np.int64))
        for name, out, offsets in zip(prepared.names, pooled, prepared.offsets):
            if self.collection.tables[name].pooling == "none":
                lengths = torch.from_numpy(np.diff(offsets))
                if index is not None and name in shared:
                    out, lengths = out.index_select(0, index), lengths.index_select(0, index)
                result[name] = (out, lengths)
            elif index is not None and name in shared:
                result[name] = out.index_select(0, index)
            else:
                result[name] = out
        return result

    def forward_concat(self, batch: Any, *, prepared: Optional[PreparedBatch] = None,
                       pulled: Optional[list[np.ndarray]] = None, dense: Any = None) -> torch.Tensor:
        """The pooled rows of every group side by side in the batch's group order:
        Tensor[B, sum of dims] (then ``dense`` [B, k] float32 features, if given), the input of
        an MLP. Same semantics as :meth:`forward` (sample compression included), but the
        collection pools each group straight into its column block of the one returned tensor:
        no per-group tensor, no ``torch.cat``. In training, backward reads each group's
        gradient in place from the columns of the input gradient. Sequence groups are not
        allowed. The returned tensor's memory is reused by a later call only once nothing
        refers to the tensor any more (no reference, view, array or autograd node)."""
        sample_group = getattr(batch, "sample_group", None)
        shared_names = set(getattr(batch, "shared", ()))
        if prepared is None:
            prepared = self.prepare(batch)
        configs = self.collection.tables
        sequence = [n for n in prepared.names if configs[n].pooling == "none"]
        if sequence:
            raise ValueError(f"forward_concat: groups {sequence} use pooling 'none' (sequences); use forward()")
        if sample_group is not None and shared_names:
            index = np.ascontiguousarray(sample_group, dtype=np.int64)
        else:
            index, shared_names = np.zeros(0, np.int64), set()
        shared = tuple(n in shared_names for n in prepared.names)
        num_samples = len(index) if shared_names else (len(prepared.offsets[0]) - 1 if prepared.offsets else 0)
        dense_np = None
        if dense is not None:
            dense_np = dense.detach().numpy() if isinstance(dense, torch.Tensor) else np.asarray(dense)
            if dense_np.ndim != 2 or dense_np.shape[0] != num_samples:
                raise ValueError(f"forward_concat: dense features must have shape ({num_samples}, k), "
                                 f"got {tuple(dense_np.shape)}")
        layout = _ConcatLayout(self.collection, prepared, index, shared, num_samples,
                               0 if dense_np is None else dense_np.shape[1])
        if self.training and torch.is_grad_enabled():
            anchor = torch.empty(0, requires_grad=True)
            return _ConcatFusedSparseUpdate.apply(anchor, layout, pulled, dense_np, self._input_buffer)
        x = self._input_buffer.tensor(num_samples, layout.width)
        layout.fill(x.numpy(), pulled, dense_np)
        return x

    def extra_repr(self) -> str:
        return repr(self.collection)


def _sparse_of(batch: Any) -> Mapping[str, Any]:
    return batch.sparse if hasattr(batch, "sparse") else batch


def mlp(input_width: int, hidden: Iterable[int], output_width: int = 1, *,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The dense tower of XDL's models: Linear + activation per ``hidden`` width, then a
    Linear to ``output_width`` logits (e.g. ``mlp(414, [200, 80])`` is W2's 414-200-80-1)."""
    widths = [int(input_width), *(int(h) for h in hidden)]
    if any(w < 1 for w in widths) or output_width < 1:
        raise ValueError(f"mlp widths must be >= 1, got {widths} -> {output_width}")
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(widths[-1], output_width))
    return nn.Sequential(*layers)


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``y = p * x + (1 - p) * alpha * x`` with
    ``p = sigmoid((x - mean) / sqrt(var + eps))``, mean and var of the batch in training and the
    running estimates in evaluation (a BatchNorm1d without affine parameters), ``alpha`` learned
    per channel. Input [B, width]."""

    def __init__(self, width: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x))
        return p * x + (1 - p) * self.alpha * x


class DinAttention(nn.Module):
    """DIN's attention unit over a behaviour sequence (a ``pooling="none"`` group).

    ``forward(history [B, L, dim], lengths [B], query [B, dim]) -> [B, dim]``: each valid step t
    gets the score of ``score`` (an MLP, 4 dim -> 1) over ``[h_t, a, h_t - a, h_t * a]``, and the
    result is the sum of the steps weighted by ``sigmoid(score)`` (unnormalised, as DIN keeps
    it; padding steps weigh 0). The serving export runs it as one unit.
    """

    def __init__(self, dim: int, hidden: Iterable[int] = (36,), *, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.dim = int(dim)
        self.score = mlp(4 * self.dim, hidden, activation=activation)

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        a = query.unsqueeze(1).expand_as(history)
        scores = self.score(torch.cat([history, a, history - a, history * a], dim=2)).squeeze(2)
        mask = torch.arange(history.shape[1], device=history.device).unsqueeze(0) < lengths.unsqueeze(1)
        weights = scores.sigmoid() * mask
        return (weights.unsqueeze(2) * history).sum(1)


def sync_dense(model: Any, group: Any = None) -> list:
    """Synchronous data parallelism of the dense model over a ``torch.distributed`` process
    group (gloo on CPU), for workers that train the sparse side against a cluster in
    synchronous mode: rank 0's parameters and buffers are broadcast now, and from then on every
    parameter's gradient is averaged over the workers (all-reduce) as soon as ``backward`` has
    accumulated it, before the dense optimizer steps. Returns the hook handles
    (``handle.remove()`` undoes it). Call ``torch.distributed.init_process_group("gloo")``
    first (torchrun provides RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sync_dense needs torch.distributed initialised: "
                           "torch.distributed.init_process_group('gloo') (e.g. under torchrun)")
    world = dist.get_world_size(group)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)

    def average(p: Any) -> None:
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
        p.grad.div_(world)
    return [p.register_post_accumulate_grad_hook(average) for p in model.parameters() if p.requires_grad]


def place_by_size(sizes: Iterable[int], num_shards: int) -> list[int]:
    """The shard of each of ``sizes`` (numbers of values): largest first, each to the shard
    holding the fewest values so far (the lowest index on a tie), so every worker that
    places the same sizes gets the same answer. A snapshot restored onto another number of
    shards places the variables of a :class:`ServerDenseOptimizer` by the same rule."""
    return list(_core.place_by_size([int(n) for n in sizes], int(num_shards)))


class ServerDenseOptimizer:
    """Dense parameters kept and updated by the parameter servers, an alternative to the gloo
    all-reduce of :func:`sync_dense`: each parameter is a dense variable on one server shard
    (spread by size, :func:`place_by_size`) with a server-side ``optimizer`` - sc.SGD,
    sc.Momentum, sc.Adagrad, sc.Adam (the update rules of the tables). :meth:`step` pushes
    every parameter's gradient and copies back the values the server returns.

    ``cluster``: from :func:`sparsecore.connect`. With synchronous workers
    (``num_workers``), worker 0's initial values are the ones every worker starts from, and a
    step applies the sum of the workers' gradients (in worker order) once, divided by the
    number of workers when ``average`` (the mean, as :func:`sync_dense` takes); asynchronous
    and bounded-staleness workers apply their own gradients at once. ``name`` prefixes the
    variables' names (one optimizer per model). Gradients that are None count as zeros.
    Snapshots (``Cluster.save``) keep each variable's values with its optimizer state and
    update count, so a restored run goes on as the uninterrupted one."""

    def __init__(self, params: Iterable[Any], cluster: Any, optimizer: Any, *, name: str = "dense",
                 average: bool = True):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("ServerDenseOptimizer got no parameters that require grad")
        self.cluster = cluster
        args = getattr(cluster, "_connect_args", {})
        sync = args.get("mode") == "sync"
        self.num_workers = int(args.get("num_workers", 0)) if sync else 0
        rank = int(args.get("worker", 0))
        self.scale = 1.0 / self.num_workers if average and self.num_workers > 1 else 1.0
        self.names = [f"{name}/{i}" for i in range(len(self.params))]
        self.shards = place_by_size([p.numel() for p in self.params], cluster.total_shards)
        self.step_count = 0
        if rank == 0 or self.num_workers == 0:
            for p, var, shard in zip(self.params, self.names, self.shards):
                cluster.dense_create(var, p.detach().cpu().numpy().astype(np.float32), optimizer, shard=shard)
        if self.num_workers > 1:
            cluster.barrier(f"{name}/created", self.num_workers)
        with torch.no_grad():
            for p, var, shard in zip(self.params, self.names, self.shards):
                p.copy_(torch.from_numpy(cluster.dense_pull(var, 0, 0.0, shard=shard)).view_as(p))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        with torch.no_grad():
            for p, var, shard in zip(self.params, self.names, self.shards):
                if p.grad is None:
                    grad = np.zeros(p.numel(), np.float32)
                else:
                    grad = p.grad.detach().cpu().reshape(-1).numpy().astype(np.float32, copy=True)
                    if self.scale != 1.0:
                        grad *= np.float32(self.scale)
                values = self.cluster.dense_step(var, grad, step=self.step_count, shard=shard)
                p.copy_(torch.from_numpy(values).view_as(p))
        self.step_count += 1
