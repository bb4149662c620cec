"""A small training job run as a worker process of a coordinated cluster (the coordinator's
fault tests start it): a logistic model over sum-pooled rows of three tables, the rows on the
parameter servers (Adagrad there), the dense weights local to the worker. Everything it does is
deterministic, so a synchronous run is the same bit for bit however often it was rolled back.

    python tests/cluster_worker.py --coordinator HOST:PORT --rank R --steps N [--data FILE...]

With ``--data``, the worker reads its shard of those libsvm files (``shard=(rank, workers)``);
otherwise synthetic samples of its own.
"""

import argparse
import logging
import sys

import numpy as np

import sparsecore as sc
from sparsecore.cluster import Worker
from sparsecore.data import LibsvmReader, SyntheticConfig, SyntheticData

DIM = 4
CONFIG = SyntheticConfig(num_groups=3, vocab_size=400, max_bag=4, batch_size=32, seed=5)
TABLE = sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.05))


class Job:
    def __init__(self, cluster, rank, workers, data):
        self.cluster = cluster
        if data:
            self.source = LibsvmReader(data, batch_size=16, shard=(rank, workers))
            self.names = ["features"]
        else:
            self.source = SyntheticData(CONFIG, start=rank * 10**6)
            self.names = CONFIG.names()
        for name in self.names:
            cluster.create_table(name, TABLE, seed=11)
        self.w = np.zeros(DIM * len(self.names), np.float32)

    def step(self, step):
        batch = self.source.next_batch()
        if batch is None:  # a sharded file source ran dry: an empty step keeps the workers in step
            batch_size, labels, groups = 0, np.zeros(0, np.float32), {n: (np.zeros(0, np.int64), np.zeros(1, np.int64))
                                                                       for n in self.names}
        else:
            batch_size, labels, groups = batch.num_samples, batch.labels, batch.sparse
        pooled, parts = [], []
        for name in self.names:
            ids, offsets = np.asarray(groups[name][0], np.int64), np.asarray(groups[name][1], np.int64)
            unique, inverse = np.unique(ids, return_inverse=True)
            rows = self.cluster.lookup(name, unique, insert=True)
            bags = np.repeat(np.arange(batch_size), np.diff(offsets))
            p = np.zeros((batch_size, DIM), np.float32)
            np.add.at(p, bags, rows[inverse])
            pooled.append(p)
            parts.append((name, unique, inverse, bags))
        x = np.concatenate(pooled, axis=1)
        prob = 1.0 / (1.0 + np.exp(-(x @ self.w)))
        d = ((prob - labels) / max(batch_size, 1)).astype(np.float32)
        grad_x = np.outer(d, self.w).astype(np.float32)
        for i, (name, unique, inverse, bags) in enumerate(parts):
            g = np.zeros((unique.size, DIM), np.float32)
            np.add.at(g, inverse, grad_x[bags, DIM * i:DIM * (i + 1)])
            self.cluster.push(name, unique, g, step=step)
        self.w -= np.float32(0.5) * (x.T @ d).astype(np.float32)

    def state_dict(self):
        return {"w": [float(v) for v in self.w], "source": self.source.state_dict()}

    def load_state_dict(self, state):
        self.w = np.array(state["w"], np.float32)
        self.source.load_state_dict(state["source"])


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--token", default="")
    p.add_argument("--data", nargs="*", default=[])
    p.add_argument("--recovery-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {args.rank} %(levelname)s %(message)s")
    worker = Worker(args.coordinator, args.rank, token=args.token, timeout=20.0,
                    recovery_timeout=args.recovery_timeout)
    worker.run(lambda cluster: Job(cluster, args.rank, args.workers, args.data), steps=args.steps)
    print(f"finished after {worker.recoveries} recoveries", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
