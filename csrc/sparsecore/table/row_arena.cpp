#include "sparsecore/table/row_arena.h"

#include <new>

#include "sparsecore/core/error.h"

namespace sparsecore {

RowArena::RowArena(size_t row_bytes) : row_bytes_(row_bytes) {
  SC_CHECK_ARG(row_bytes > 0, "row size must be positive");
}

uint32_t RowArena::allocate() {
  if (!free_ids_.empty()) {
    uint32_t id = free_ids_.back();
    free_ids_.pop_back();
    return id;
  }
  if ((next_id_ & (kChunkRows - 1)) == 0) {
    SC_CHECK(next_id_ < UINT32_MAX - kChunkRows, Error, "row arena full (2^32 rows in one shard)");
    size_t bytes = (kChunkRows * row_bytes_ + 63) & ~size_t{63};
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    chunks_.emplace_back(static_cast<std::byte*>(p));
  }
  return next_id_++;
}

void RowArena::clear() {
  chunks_.clear();
  free_ids_.clear();
  free_ids_.shrink_to_fit();
  next_id_ = 0;
}

}  // namespace sparsecore
