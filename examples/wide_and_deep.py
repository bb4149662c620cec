"""Wide & Deep on sparsecore: one set of feature groups feeds two kinds of tables.

Wide: dim-1 tables (one weight per id, FTRL-Proximal with L1, the classic sparse linear
model), summed into a logit. Deep: dim-8 tables (Adagrad) sum-pooled into an MLP. Both sides
are sparsecore tables in one collection; the dense model receives the pooled dict
(``model_input="dict"``) and adds the two logits. Trained by :class:`sparsecore.Trainer`.

    python examples/wide_and_deep.py --steps 200
"""

import argparse

import torch
from torch import nn

import sparsecore as sc
from sparsecore.data import SyntheticConfig, SyntheticData
from sparsecore.torch import mlp
from sparsecore.trainer import describe_metrics


class WideAndDeep(nn.Module):
    def __init__(self, groups: list[str], deep_dim: int):
        super().__init__()
        self.groups = groups
        self.deep = mlp(deep_dim * len(groups), [64, 32])
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, pooled: dict, dense=None) -> torch.Tensor:
        wide = torch.cat([pooled[f"wide_{g}"] for g in self.groups], dim=1).sum(1)
        deep = self.deep(torch.cat([pooled[f"deep_{g}"] for g in self.groups], dim=1)).squeeze(1)
        return wide + deep + self.bias


class TwoViews:
    """A source that exposes each group twice, as ``wide_<g>`` and ``deep_<g>`` (no copies)."""

    def __init__(self, source):
        self.source = source

    def next_batch(self):
        batch = self.source.next_batch()
        if batch is None:
            return None
        batch.sparse = {f"{side}_{g}": bags for side in ("wide", "deep") for g, bags in batch.sparse.items()}
        batch.shared = frozenset(f"{side}_{g}" for side in ("wide", "deep") for g in batch.shared)
        return batch

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def main(steps: int, batch_size: int, eval_samples: int) -> None:
    torch.manual_seed(0)
    config = SyntheticConfig.w2(num_groups=8, num_user_groups=4, vocab_size=5000, zipf_exponent=1.3,
                                weight_std=0.2, samples_per_view=4, batch_size=batch_size)
    groups = config.names()
    tables = {}
    for g in groups:
        tables[f"wide_{g}"] = sc.TableConfig(dim=1, optimizer=sc.FTRL(lr=0.05, l1=0.01), init=sc.Zeros())
        tables[f"deep_{g}"] = sc.TableConfig(dim=8, optimizer=sc.Adagrad(lr=0.05))
    model = WideAndDeep(groups, deep_dim=8)
    trainer = sc.Trainer(TwoViews(SyntheticData(config, num_samples=steps * batch_size, compressed=True)), model,
                         tables, model_input="dict", dense_optimizer=torch.optim.Adam(model.parameters(), lr=2e-3))
    trainer.fit()
    held_out = SyntheticData(config, start=1 << 40, num_samples=(1 << 40) + eval_samples, compressed=True)
    m = trainer.evaluate(TwoViews(held_out))
    print("held-out", describe_metrics(m))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=20_000)
    main(**vars(parser.parse_args()))
