import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def rng(request):
    """Fresh random inputs each run; the seed is printed on failure to reproduce it
    (SPARSECORE_TEST_SEED=<seed> pins it)."""
    seed = int(os.environ.get("SPARSECORE_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)
