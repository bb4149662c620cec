// RowArena: fixed-size row records in chunks that never move.
//
// Rows are addressed by a 32-bit id (chunk, offset). Growth appends a chunk; freed ids are
// reused first. Because rows never move, row pointers handed out stay valid until the row is
// released, and a hash-table resize rehashes only its index.
//
// Thread-safety: none; the owning HashTable shard serialises access.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace sparsecore {

class RowArena {
 public:
  static constexpr int kChunkShift = 8;  // 256 rows per chunk: < 1% slack at a million rows
  static constexpr uint32_t kChunkRows = 1u << kChunkShift;

  explicit RowArena(size_t row_bytes);
  RowArena(RowArena&&) noexcept = default;
  RowArena& operator=(RowArena&&) noexcept = default;

  size_t row_bytes() const { return row_bytes_; }
  std::byte* row(uint32_t id) const {
    return chunks_[id >> kChunkShift].get() + static_cast<size_t>(id & (kChunkRows - 1)) * row_bytes_;
  }
  uint32_t allocate();
  void release(uint32_t id) { free_ids_.push_back(id); }
  void clear();
  size_t live_rows() const { return next_id_ - free_ids_.size(); }
  size_t memory_bytes() const {
    return chunks_.size() * (kChunkRows * row_bytes_) + free_ids_.capacity() * sizeof(uint32_t);
  }

 private:
  struct FreeDeleter {
    void operator()(std::byte* p) const { std::free(p); }
  };
  size_t row_bytes_;
  std::vector<std::unique_ptr<std::byte[], FreeDeleter>> chunks_;
  uint32_t next_id_ = 0;
  std::vector<uint32_t> free_ids_;
};

}  // namespace sparsecore
