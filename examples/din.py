"""DIN (Deep Interest Network): attention over a user's behaviour sequence.

The behaviour group uses ``pooling="none"``: the engine returns the padded sequence of its
rows, [B, L_max, dim], plus the lengths, instead of a pooled sum. An attention unit scores
every behaviour against the candidate ad (MLP over [h, a, h - a, h * a]); the weighted sum of
the behaviours (padding masked out) joins the other features in the MLP. Gradients flow back
through the attention into the sequence rows, which the fused optimizer updates.

    python examples/din.py --steps 200
"""

import argparse

import torch
from torch import nn

import sparsecore as sc
from sparsecore.data import SyntheticConfig, SyntheticData
from sparsecore.torch import DinAttention, mlp
from sparsecore.trainer import describe_metrics

GROUPS = ("history", "user", "context", "ad", "ad_category")  # history and user describe the user


class DIN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attention = DinAttention(dim)
        self.top = mlp(5 * dim, [80, 40])

    def forward(self, pooled: dict, dense=None) -> torch.Tensor:
        history, lengths = pooled["history"]
        interest = self.attention(history, lengths, pooled["ad"])
        parts = [interest, pooled["user"], pooled["context"], pooled["ad"], pooled["ad_category"]]
        return self.top(torch.cat(parts, dim=1)).squeeze(1)


def main(steps: int, batch_size: int, eval_samples: int) -> None:
    torch.manual_seed(0)
    dim = 8
    config = SyntheticConfig.w2(num_groups=len(GROUPS), group_names=GROUPS, num_user_groups=2, vocab_size=5000,
                                zipf_exponent=1.3, min_bag=1, max_bag=10, weight_std=0.2, samples_per_view=4,
                                batch_size=batch_size)
    tables = {g: sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.05), pooling="none" if g == "history" else "sum")
              for g in GROUPS}
    model = DIN(dim)
    trainer = sc.Trainer(SyntheticData(config, num_samples=steps * batch_size, compressed=True), model, tables,
                         model_input="dict", dense_optimizer=torch.optim.Adam(model.parameters(), lr=2e-3))
    trainer.fit()
    held_out = SyntheticData(config, start=1 << 40, num_samples=(1 << 40) + eval_samples, compressed=True)
    m = trainer.evaluate(held_out)
    print("held-out", describe_metrics(m))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=20_000)
    main(**vars(parser.parse_args()))
