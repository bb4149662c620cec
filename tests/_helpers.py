"""Assertions shared by several test files."""

import numpy as np


def assert_same_training(model_a, coll_a, model_b, coll_b):
    """Two training runs ended with the same bits: every tensor of the dense models
    (torch modules) and, per table of the collections, the same keys with the same weights
    and optimizer state (in key order; row order is the tables' own)."""
    import torch

    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), k
    for name in coll_a.names:
        ea, eb = coll_a.export(name), coll_b.export(name)
        order_a, order_b = np.argsort(ea["keys"]), np.argsort(eb["keys"])
        np.testing.assert_array_equal(ea["keys"][order_a], eb["keys"][order_b])
        np.testing.assert_array_equal(ea["weights"][order_a], eb["weights"][order_b])
        np.testing.assert_array_equal(ea["state"][order_a], eb["state"][order_b])
