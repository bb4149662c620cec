// The CPU inner loops of forward pooling, compiled once per ISA (SC_DISPATCH) and picked at
// load time (the fused backward's are in fused_update.h). Internal to the ops layer.
#pragma once

#include <cstdint>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::kernels {

// Pools bags [bag_begin, bag_end) of `g` into `out` (host; bag b's row at out + (b - bag_begin) *
// out_stride floats, out_stride >= g.dim; pooling "none": (max_len, dim) blocks one after
// another from bag bag_begin's, out_stride ignored),
// accumulating in fp32 whatever the table's `storage`. tmp: scratch of g.dim floats.
void pool_bags(const PreparedGroup& g, RowStorage storage, const std::byte* const* rows, int64_t bag_begin,
               int64_t bag_end, float* out, int64_t out_stride, float* tmp);

// True when pool_bags keeps a bag's sum of this width in registers and writes each bag's
// output row once (a strided output then costs no more than a contiguous one); otherwise it
// accumulates in the output row.
bool pools_in_registers(int dim, Pooling pooling);

// Evaluation pooling straight from the ids, without dedup: finds every id of bags
// [bag_begin, bag_end) of `in` in `table` (unknown ids read `default_row`, the table's
// EmbeddingTable::default_row(), or zeros when it is null; nothing is inserted),
// hashing and prefetching index slots and rows a few ids ahead of the accumulation.
// The caller holds the table's shard locks (HashTable::SharedLockAll).
//   out      host, the group's output: (batch_size, dim), or (batch_size, max_len, dim) for
//            pooling "none"
//   hashes, rows  scratch of offsets[bag_end] - offsets[bag_begin] entries each
//   tmp      scratch of dim floats
void pool_bags_from_ids(const HashTable& table, int dim, Pooling pooling, RowStorage storage, const GroupInput& in,
                        int64_t max_len, int64_t bag_begin, int64_t bag_end, float* out, uint64_t* hashes,
                        const std::byte** rows, float* tmp, const std::byte* default_row);

// The same for a table with num_embeddings: every id of `in` lies in [0, rows.num_rows())
// (checked by the caller); each row is read by index, absent rows as `default_row` (zeros when
// null). rows_scratch as `rows` above.
void pool_bags_from_dense_ids(const DenseRows& rows, int dim, Pooling pooling, RowStorage storage, const GroupInput& in,
                              int64_t max_len, int64_t bag_begin, int64_t bag_end, float* out,
                              const std::byte** rows_scratch, float* tmp, const std::byte* default_row);

// True when all n values are finite.
bool all_finite(const float* x, int64_t n);

}  // namespace sparsecore::kernels
