"""torch tensors are accepted wherever numpy arrays are; torch in gives torch out."""

import numpy as np
import pytest

import sparsecore as sc

torch = pytest.importorskip("torch")


def test_torch_in_torch_out():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=1.0), init=sc.Zeros())})
    ids = torch.tensor([1, 2, 2], dtype=torch.int64)
    offsets = torch.tensor([0, 1, 3], dtype=torch.int64)
    out = emb.forward({"t": (ids, offsets)})["t"]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    emb.backward({"t": (ids, offsets)}, {"t": torch.ones(2, 4)})
    rows = emb.lookup("t", torch.tensor([1, 2]))
    assert isinstance(rows, torch.Tensor)
    np.testing.assert_array_equal(rows.numpy(), [[-1.0] * 4, [-2.0] * 4])


def test_float_tensor_ids_are_rejected():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4)})
    with pytest.raises(TypeError, match="integer"):
        emb.forward({"t": (torch.tensor([1.0]), torch.tensor([0, 1]))})
