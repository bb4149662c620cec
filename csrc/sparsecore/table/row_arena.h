// RowArena: fixed-size row records in chunks that never move.
//
// Rows are addressed by a 32-bit id (chunk, offset). Growth appends a chunk; freed ids are
// reused first. Because rows never move, row pointers handed out stay valid until the row is
// released, and a hash-table resize rehashes only its index. Chunks come from a ChunkPool
// that the arenas of one table share (huge-page slabs; see chunk_pool.h).
//
// Thread-safety: none; the owning HashTable shard serialises access (the pool is thread-safe).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "sparsecore/table/chunk_pool.h"

namespace sparsecore {

class RowArena {
 public:
  static constexpr int kChunkShift = 8;  // 256 rows per chunk: < 1% slack at a million rows
  static constexpr uint32_t kChunkRows = 1u << kChunkShift;

  // pool: where chunks come from; its chunk size must be at least kChunkRows * row_bytes.
  RowArena(size_t row_bytes, std::shared_ptr<ChunkPool> pool);
  ~RowArena() {
    try {
      clear();
    } catch (...) {  // out of memory recording free chunks: the pool still frees its slabs
    }
  }
  RowArena(const RowArena&) = delete;
  RowArena& operator=(const RowArena&) = delete;

  size_t row_bytes() const { return row_bytes_; }
  std::byte* row(uint32_t id) const {
    return chunks_[id >> kChunkShift] + static_cast<size_t>(id & (kChunkRows - 1)) * row_bytes_;
  }
  uint32_t allocate();
  void release(uint32_t id) { free_ids_.push_back(id); }
  void clear();
  size_t memory_bytes() const {
    return chunks_.size() * pool_->chunk_bytes() + free_ids_.capacity() * sizeof(uint32_t);
  }

 private:
  size_t row_bytes_;
  std::shared_ptr<ChunkPool> pool_;
  std::vector<std::byte*> chunks_;  // owned: returned to pool_ by clear()
  uint32_t next_id_ = 0;
  std::vector<uint32_t> free_ids_;
};

}  // namespace sparsecore
