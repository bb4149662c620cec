"""sparsecore: hash-table embeddings, fused sparse optimizers and a parameter server for
deep learning on high-dimensional sparse data."""

from __future__ import annotations

from . import _core
from ._core import CorruptDataError, cpu_features, num_threads
from .threads import available_cores, configure_threads, default_split
from .config import (
    FTRL,
    SGD,
    Adagrad,
    Adam,
    Admission,
    AdamW,
    Constant,
    Expiry,
    GroupLasso,
    Momentum,
    Normal,
    RowwiseAdagrad,
    TableConfig,
    TruncatedNormal,
    Uniform,
    Zeros,
)
from .compression import BinaryCodeHash, MultiHash, QuotientRemainder, RandomCoding, parse_compression
from .embedding import EmbeddingCollection, PreparedBatch
from . import data
from ._core import (RpcAuthError, RpcConnectionError, RpcError, RpcProtocolError, RpcStepAbortedError,
                    RpcTimeoutError, RpcUnknownMethodError)
from . import rpc
from .server import Cluster, Server, connect
from . import cluster
from ._deprecated import module_getattr as _module_getattr
import typing as _typing

if _typing.TYPE_CHECKING:  # at run time, imported on first use (below): it needs torch
    from .trainer import Trainer


def set_num_threads(n: int) -> None:
    """Sets the size of sparsecore's compute pool (n <= 0: one thread per core). After this
    call the Trainer and the torch bridge no longer split the cores with torch on their own
    (see :mod:`sparsecore.threads`)."""
    from . import threads

    _core.set_num_threads(n)
    threads.mark_explicit()


# Renamed (every exception class ends in Error); the old names warn for one more release.
_RENAMED = {
    "RpcTimeout": ("sparsecore.RpcTimeoutError", lambda: RpcTimeoutError),
    "RpcUnknownMethod": ("sparsecore.RpcUnknownMethodError", lambda: RpcUnknownMethodError),
}
_renamed_getattr = _module_getattr(__name__, _RENAMED)


def __getattr__(name: str) -> object:
    # torch is optional: the Trainer and the torch bridge import it only when asked for.
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    return _renamed_getattr(name)


__version__ = "0.1.0"

# Exactly the public names of the package (tests/test_api.py checks both directions).
__all__ = [
    "FTRL", "SGD", "Adagrad", "Adam", "AdamW", "Admission", "BinaryCodeHash", "Cluster", "Expiry", "Constant", "CorruptDataError", "DevicePackedWeights",
    "EmbeddingCollection", "GroupLasso", "Momentum", "MultiHash", "Normal", "PackedWeights", "PreparedBatch",
    "QuantizedEmbeddingTable", "QuantizedRows", "Quantizer", "QuotientRemainder", "RandomCoding", "RowwiseAdagrad", "RpcAuthError",
    "RpcConnectionError", "RpcError", "RpcProtocolError", "RpcStepAbortedError", "RpcTimeoutError",
    "RpcUnknownMethodError", "PredictClient", "PredictServer", "Predictor", "Server", "Subscriber",
    "TableConfig", "Trainer", "TruncatedNormal", "Uniform", "Zeros", "available_cores", "cluster", "configure_threads",
    "connect", "cpu_features", "data", "default_split", "export_dense", "export_model", "num_threads", "pack_pow2",
    "parse_compression", "quant",
    "quantize_activations", "quantize_module", "read_export", "rpc", "set_num_threads", "shift_matmul",
]

# Power-of-two quantizer, shift matmul and quantized serving rows.
from .quant import (  # noqa: E402
    DevicePackedWeights, PackedWeights, QuantizedEmbeddingTable, QuantizedRows, Quantizer, pack_pow2,
    quantize_activations, quantize_module, shift_matmul,
)
from . import quant  # noqa: E402

# Incremental export: the serving side.
from .serving import PredictClient, Predictor, Subscriber, read_export  # noqa: E402
from .serve import PredictServer  # noqa: E402
from .export import export_dense, export_model  # noqa: E402
