"""An independent check of the pure-PyTorch W2 peer of test_w2.py.

The peer loop in test_w2.py (``PyTorchPeer``) is compared with a minimal loop written here
from scratch: one ``nn.EmbeddingBag(mode="sum", sparse=True)`` per group with ``SparseAdam``
(or sparse ``Adagrad``), the 414-200-80-1 MLP (``nn.Linear`` + ``ReLU``) with ``Adam``, logloss,
on the same W2 batches (synthetic W2, vocabulary 100k, Zipf 1.5, batch 5,000) and the same
torch thread count. Rounds of the two alternate (A, B, A, B, ...) so that load on a shared
machine falls on both alike; the medians and their ratio are printed.

    PYTHONPATH=python python3 bench/w2_torch_check.py --optimizer adam --threads 2 --rounds 5

When the peer is within noise of the minimal loop, the peer is measured honestly; a large
gap means the peer does extra work that a user of PyTorch would not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/conftest.py sets for every case

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402

VOCAB, BATCH, DIM, GROUPS = 100_000, 5_000, 18, 23
LR = {"adam": 0.01, "adagrad": 0.05}
EPS = {"adam": 1e-8, "adagrad": 1e-10}


class MinimalLoop:
    """The W2 model as a PyTorch user writes it; inputs converted to tensors up front."""

    def __init__(self, optimizer: str, dim: int):
        self.bags = torch.nn.ModuleList(torch.nn.EmbeddingBag(VOCAB, dim, mode="sum", sparse=True)
                                        for _ in range(GROUPS))
        with torch.no_grad():
            for bag in self.bags:
                bag.weight.normal_(0.0, 0.01)
        torch.manual_seed(0)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(GROUPS * dim, 200), torch.nn.ReLU(), torch.nn.Linear(200, 80),
                                       torch.nn.ReLU(), torch.nn.Linear(80, 1))
        params = list(self.bags.parameters())
        self.sparse_opt = (torch.optim.SparseAdam(params, lr=LR["adam"], eps=EPS["adam"]) if optimizer == "adam"
                           else torch.optim.Adagrad(params, lr=LR["adagrad"], eps=EPS["adagrad"]))
        self.dense_opt = torch.optim.Adam(self.mlp.parameters(), lr=1e-3)

    @staticmethod
    def tensors(batch) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        groups = [(torch.from_numpy(ids), torch.from_numpy(offsets[:-1])) for ids, offsets, *_ in batch.sparse.values()]
        return groups, torch.from_numpy(np.asarray(batch.labels, dtype=np.float32))

    def train(self, batches: list) -> None:
        for groups, labels in batches:
            pooled = torch.cat([bag(ids, offsets) for bag, (ids, offsets) in zip(self.bags, groups)], dim=1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.mlp(pooled).squeeze(1), labels)
            self.sparse_opt.zero_grad()
            self.dense_opt.zero_grad()
            loss.backward()
            self.sparse_opt.step()
            self.dense_opt.step()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of each loop (after one warm-up round)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SyntheticConfig.w2(vocab_size=VOCAB, zipf_exponent=1.5, batch_size=BATCH)
    rounds = args.rounds + 1
    batches = list(SyntheticData(cfg, num_samples=rounds * args.steps * BATCH))
    names = cfg.names()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_w2  # the peer under test; its batches are these (same config)

    minimal = MinimalLoop(args.optimizer, args.dim)
    peer = test_w2.PyTorchPeer(names, args.dim, args.optimizer)
    times: dict[str, list[float]] = {"minimal": [], "peer": []}
    chunks = [batches[i:i + args.steps] for i in range(0, len(batches), args.steps)]
    for r in range(rounds):
        for name, run, chunk in (("minimal", minimal.train, [MinimalLoop.tensors(b) for b in chunks[r]]),
                                 ("peer", peer.train, chunks[r])):
            start = time.perf_counter()
            run(chunk)
            if r > 0:  # round 0 warms both up
                times[name].append(time.perf_counter() - start)
    samples = args.steps * BATCH
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    print(f"W2 pure PyTorch, {args.optimizer}, dim {args.dim}, batch {BATCH}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.2f}")
    print("| loop | samples/s (median) | rounds |")
    print("| --- | ---: | ---: |")
    for k in ("minimal", "peer"):
        print(f"| {k} | {rate[k]:,.0f} | {len(times[k])} |")
    print(f"peer / minimal: {rate['peer'] / rate['minimal']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
