"""Train an MLP on scikit-learn's digits, quantize its weights to {0, ±1, ±2, ±4}·alpha by ADMM,
and serve it with the shift matmul. Needs torch and scikit-learn.

    python examples/quantize_mlp.py
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import sparsecore as sc

data = load_digits()
x_tr, x_te, y_tr, y_te = train_test_split(data.data.astype(np.float32), data.target, test_size=0.3, random_state=0)
mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
x_tr, x_te = (torch.from_numpy((a - mu) / sd) for a in (x_tr, x_te))
y_tr, y_te = torch.from_numpy(y_tr), torch.from_numpy(y_te)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
loss_fn = torch.nn.functional.cross_entropy


def accuracy(m):
    with torch.no_grad():
        return 100.0 * (m(x_te).argmax(1) == y_te).float().mean().item()


opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(200):  # fp32 training
    opt.zero_grad()
    loss_fn(model(x_tr), y_tr).backward()
    opt.step()
print(f"fp32 accuracy        {accuracy(model):.2f}%")

# ADMM: the penalty pulls W toward its projection G; G and U are refreshed every 5 steps.
quantizer = sc.Quantizer("pow2-3bit", "channel", rho=1e-3, rho_growth=1.04, rho_max=1.0, update_every=5)
quantizer.attach(model)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(150):
    quantizer.train_step(lambda: loss_fn(model(x_tr), y_tr), opt)
quantizer.finalize()
print(f"3-bit ADMM accuracy  {accuracy(model):.2f}%")

packed = quantizer.export()  # {"0.weight": PackedWeights, "2.weight": PackedWeights}
served = sc.quantize_module(model, packed)  # nn.Linear -> QuantizedLinear (shift matmul)
print(f"served by shifts     {accuracy(served):.2f}%")
fp32 = sum(p.rows * p.cols * 4 for p in packed.values())
print(f"weight bytes         {fp32} fp32 -> {sum(p.nbytes for p in packed.values())} packed")
