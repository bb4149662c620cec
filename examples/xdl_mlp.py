"""XDL's MLP model (workload W2) in a hand-written PyTorch loop.

23 feature groups of hashed ids -> sum-pooled embeddings of dim 18 (sparsecore tables with a
fused Adagrad update) -> concatenated (414 wide) -> MLP 200-80-1 (PyTorch, Adam). The sparse
update happens inside ``loss.backward()``; the loop is plain PyTorch. Samples come from the
built-in generator (12 user groups shared by 4 ads per page view, sent compressed), so the
printed AUC can be set against the planted optimum. ``sparsecore train`` runs the same job.

    python examples/xdl_mlp.py --steps 300
"""

import argparse

import numpy as np
import torch

import sparsecore as sc
from sparsecore.data import SyntheticConfig, SyntheticData, auc
from sparsecore.torch import EmbeddingBagCollection, mlp


def main(steps: int, batch_size: int, eval_samples: int) -> None:
    torch.manual_seed(0)
    config = SyntheticConfig.w2(vocab_size=20_000, zipf_exponent=1.5, samples_per_view=4, batch_size=batch_size)
    train = SyntheticData(config, num_samples=steps * batch_size, compressed=True)
    names = config.names()
    embeddings = EmbeddingBagCollection({n: sc.TableConfig(dim=18, optimizer=sc.Adagrad(lr=0.05)) for n in names})
    model = mlp(18 * len(names), [200, 80])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    for step, batch in enumerate(train, 1):
        pooled = embeddings(batch)  # user groups pooled once per page view, expanded to its ads
        logits = model(torch.cat([pooled[n] for n in names], dim=1)).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(batch.labels))
        optimizer.zero_grad()
        loss.backward()  # dense gradients, and the fused sparse update of the touched rows
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f}")

    embeddings.eval()  # evaluation lookups never insert: unseen ids read as zeros
    held_out = SyntheticData(config, start=1 << 40, num_samples=(1 << 40) + eval_samples, compressed=True)
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    planted: list[np.ndarray] = []
    with torch.no_grad():
        for batch in held_out:
            assert batch.labels is not None and batch.probabilities is not None  # synthetic data has both
            pooled = embeddings(batch)
            scores.append(model(torch.cat([pooled[n] for n in names], dim=1)).squeeze(1).numpy())
            labels.append(batch.labels)
            planted.append(batch.probabilities)
    y = np.concatenate(labels)
    print(f"held-out AUC {auc(y, np.concatenate(scores)):.4f} (planted optimum {auc(y, np.concatenate(planted)):.4f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=50_000)
    main(**vars(parser.parse_args()))
