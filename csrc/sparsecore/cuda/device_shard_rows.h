// The device row store of a parameter server: ps::DeviceRows over a one-table
// cuda::DeviceEmbeddingCollection, so that `sparsecore server --device cuda` keeps its
// shards' rows on a GPU (or in its CPU emulation) behind the same RPC layer.
//
// Pulls are lookups (train: lookup-or-insert), pushes one training step of single-id bags
// (each id's summed gradient is its bag's gradient), so the device applies the same fused
// rule to the same gradient as a CPU shard's apply_unique: the same results bit for bit.
//
// Feature admission, a row capacity and incremental expiry take a CPU shard's decisions (a
// training pull sights ids and makes room as EmbeddingTable::pull_weights, a push updates the
// rows apply_unique would: DeviceEmbeddingCollection::shard_pull / shard_update_rows), so the
// same ids are admitted, kept and evicted. Refused at table creation (InvalidArgument naming
// the table): what the device store cannot hold (num_embeddings, sampled eviction).
#pragma once

#include "sparsecore/cuda/device_embedding_collection.h"
#include "sparsecore/ps/device_rows.h"

namespace sparsecore::cuda {

// A factory for ps::PsServerOptions::device_rows: the rows of every table on `device` of
// `backend` (-1: the current device), in the table's own storage (fp32 or fp16).
ps::DeviceRowsFactory device_rows_factory(Backend backend, int device = -1);

}  // namespace sparsecore::cuda
