"""Without a usable GPU, DeviceEmbeddingCollection says "no CUDA device" and what to use instead."""

import pytest

import sparsecore as sc
from sparsecore import cuda


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_a_gpu_says_no_cuda_device_and_the_alternatives():
    with pytest.raises(RuntimeError) as info:
        cuda.DeviceEmbeddingCollection({"a": sc.TableConfig(dim=4)})
    message = str(info.value)
    assert message.startswith("no CUDA device") or "no CUDA device" in message
    assert "sparsecore.EmbeddingCollection" in message and "emulate=True" in message
