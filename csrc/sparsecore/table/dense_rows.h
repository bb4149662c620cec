// DenseRows: the rows of a table with a known number of ids (TableConfig::num_embeddings),
// found by direct index: row i lives at base + i * row_bytes, so a lookup costs one load of
// the row and no probe.
//
// Memory. The N rows are one reservation of address space (MAP_NORESERVE, transparent huge
// pages advised); a page becomes resident when a row on it is first written, so a table
// whose ids are only partly used costs the pages its rows touch, and never more than
// N * row_bytes (what torch's nn.EmbeddingBag allocates eagerly). A presence bitmap
// (N bits, reserved the same way) records which rows were initialised: size() counts them,
// an absent row reads as zeros in evaluation and is initialised on first use in training,
// exactly as a hash table inserts it.
//
// Thread-safety. Presence bits are atomic: set (release) after a row is initialised, read
// (acquire) before it is used. Callers serialise initialisation and erase of one id (the
// owning EmbeddingTable uses the lock of the id's hash-table shard); row contents are not
// protected, as in HashTable.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sparsecore {

class DenseRows {
 public:
  // Reserves num_rows (>= 1) rows of row_bytes; throws InvalidArgument when the address
  // space cannot be reserved.
  DenseRows(size_t row_bytes, int64_t num_rows);
  ~DenseRows();
  DenseRows(const DenseRows&) = delete;
  DenseRows& operator=(const DenseRows&) = delete;

  int64_t num_rows() const { return num_rows_; }
  size_t row_bytes() const { return row_bytes_; }
  // id in [0, num_rows()) (callers check).
  std::byte* row(int64_t id) const { return base_ + static_cast<size_t>(id) * row_bytes_; }
  bool present(int64_t id) const { return (bits_[id >> 6].load(std::memory_order_acquire) >> (id & 63)) & 1u; }
  std::byte* find(int64_t id) const { return present(id) ? row(id) : nullptr; }
  // Marks an initialised row present / an erased one absent; returns whether it changed.
  bool mark(int64_t id);
  bool unmark(int64_t id);

  // Rows present.
  size_t size() const { return count_.load(std::memory_order_acquire); }
  // Bytes of the present rows and of the bitmap words in use (an estimate of resident memory:
  // pages are shared by neighbouring rows).
  size_t memory_bytes() const;
  // Marks every row absent and returns the pages to the system.
  void clear();

  // Visits present rows in ascending id order: fn(int64_t id, std::byte* row).
  template <typename Fn>
  void for_each(Fn&& fn) const {
    const int64_t words = (num_rows_ + 63) >> 6;
    for (int64_t w = 0; w < words; ++w) {
      uint64_t bits = bits_[w].load(std::memory_order_acquire);
      while (bits) {
        const int64_t id = (w << 6) + __builtin_ctzll(bits);
        bits &= bits - 1;
        fn(id, row(id));
      }
    }
  }

 private:
  size_t row_bytes_;
  int64_t num_rows_;
  size_t rows_span_ = 0;
  size_t bits_span_ = 0;
  std::byte* base_ = nullptr;
  std::atomic<uint64_t>* bits_ = nullptr;
  std::atomic<size_t> count_{0};
};

}  // namespace sparsecore
