// ChunkPool: equal-size memory chunks for the row arenas of one table, carved from large
// slabs that the kernel may back with transparent huge pages.
//
// Why. Lookups touch rows at random over gigabytes; with 4 KiB pages nearly every row access
// is a TLB miss and a page walk (two-dimensional, so much dearer, in a virtual machine). Row
// chunks are small (256 rows), so an arena that allocated each one on its own would never get
// huge pages. The pool hands out chunks from slabs that grow with the table (each new slab as
// large as everything allocated so far, up to kMaxSlabBytes); slabs of 2 MiB and more are
// 2 MiB-aligned and advised MADV_HUGEPAGE (huge_pages.h). Untouched slab pages are never
// resident, so the slack is at most one partly used huge page per table.
//
// Chunks are returned with release() (reused first) and all memory goes back to the OS when
// the pool is destroyed. Thread-safety: allocate/release may be called from many threads.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace sparsecore {

class ChunkPool {
 public:
  static constexpr size_t kMaxSlabBytes = size_t{64} << 20;

  // chunk_bytes > 0; chunks are 64-byte aligned (chunk_bytes is rounded up to 64).
  explicit ChunkPool(size_t chunk_bytes);
  ~ChunkPool();
  ChunkPool(const ChunkPool&) = delete;
  ChunkPool& operator=(const ChunkPool&) = delete;

  size_t chunk_bytes() const { return chunk_bytes_; }
  std::byte* allocate();  // throws std::bad_alloc
  void release(std::byte* chunk);
  // Bytes of slabs mapped (resident or not).
  size_t reserved_bytes() const;

 private:
  struct Slab {
    std::byte* base;
    size_t bytes;
  };
  void add_slab();

  size_t chunk_bytes_;
  mutable std::mutex mutex_;
  std::vector<Slab> slabs_;
  std::byte* cursor_ = nullptr;  // next unused chunk of the last slab
  std::byte* slab_end_ = nullptr;
  size_t reserved_ = 0;
  std::vector<std::byte*> free_;
};

}  // namespace sparsecore
