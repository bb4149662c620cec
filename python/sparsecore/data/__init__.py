"""sparsecore.data: readers, the synthetic generator, batching and metrics.

Every source yields :class:`Batch` objects whose ``sparse`` dict is the engine's input format
and implements ``next_batch()``, iteration, ``state_dict()`` / ``load_state_dict()``.
"""

from .batch import Batch, concat_batches, dedup_ids, rebatch
from .epochs import Epochs
from .metrics import auc, gauc, logloss
from .parquet import ParquetReader
from .readers import CriteoReader, CsvReader, LibffmReader, LibsvmReader, MalformedLine, ReaderPosition
from .schema import COLUMN_TYPES, Column, feature_id
from .synthetic import SyntheticConfig, SyntheticData

__all__ = [
    "Batch",
    "COLUMN_TYPES",
    "Column",
    "CriteoReader",
    "CsvReader",
    "Epochs",
    "LibffmReader",
    "LibsvmReader",
    "MalformedLine",
    "ParquetReader",
    "ReaderPosition",
    "SyntheticConfig",
    "SyntheticData",
    "auc",
    "concat_batches",
    "dedup_ids",
    "feature_id",
    "gauc",
    "logloss",
    "rebatch",
]
