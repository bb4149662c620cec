#include "sparsecore/table/row_arena.h"

#include <utility>

#include "sparsecore/core/error.h"

namespace sparsecore {

RowArena::RowArena(size_t row_bytes, std::shared_ptr<ChunkPool> pool) : row_bytes_(row_bytes), pool_(std::move(pool)) {
  SC_CHECK_ARG(row_bytes > 0, "row size must be positive");
  SC_CHECK_ARG(pool_ && pool_->chunk_bytes() >= kChunkRows * row_bytes, "row arena: chunk pool chunks are too small");
}

uint32_t RowArena::allocate() {
  if (!free_ids_.empty()) {
    uint32_t id = free_ids_.back();
    free_ids_.pop_back();
    return id;
  }
  if ((next_id_ & (kChunkRows - 1)) == 0) {
    SC_CHECK(next_id_ < UINT32_MAX - kChunkRows, Error, "row arena full (2^32 rows in one shard)");
    chunks_.reserve(chunks_.size() + 1);
    chunks_.push_back(pool_->allocate());
  }
  return next_id_++;
}

void RowArena::clear() {
  for (std::byte* c : chunks_) pool_->release(c);
  chunks_.clear();
  free_ids_.clear();
  free_ids_.shrink_to_fit();
  next_id_ = 0;
}

}  // namespace sparsecore
