"""sparsecore.data: readers, the synthetic generator, batching and metrics.

In-memory data (NumPy arrays, a pandas DataFrame, a list of batches) becomes a source with
:func:`as_source` (the Trainer does this itself). Every source yields :class:`Batch` objects whose ``sparse`` dict is the engine's input format
and implements ``next_batch()``, iteration, ``state_dict()`` / ``load_state_dict()``.
"""

from .batch import Batch, concat_batches, dedup_ids, rebatch
from .epochs import Epochs
from .follow import FollowDirectory
from .hashing import hash_feature_bags, hash_features
from .memory import ArrayData, BatchList, as_source
from .metrics import auc, gauc, logloss
from .parquet import ParquetReader
from .readers import CriteoReader, CsvReader, LibffmReader, LibsvmReader, MalformedLine, ReaderPosition
from .schema import COLUMN_TYPES, Column, feature_id
from .synthetic import SyntheticConfig, SyntheticData

__all__ = [
    "ArrayData",
    "Batch",
    "BatchList",
    "COLUMN_TYPES",
    "Column",
    "CriteoReader",
    "CsvReader",
    "Epochs",
    "FollowDirectory",
    "LibffmReader",
    "LibsvmReader",
    "MalformedLine",
    "ParquetReader",
    "ReaderPosition",
    "SyntheticConfig",
    "SyntheticData",
    "as_source",
    "auc",
    "concat_batches",
    "dedup_ids",
    "feature_id",
    "gauc",
    "hash_feature_bags",
    "hash_features",
    "logloss",
    "rebatch",
]
