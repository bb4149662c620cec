#include "sparsecore/table/chunk_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "sparsecore/core/error.h"

namespace sparsecore {
namespace {

constexpr size_t kFirstSlabChunks = 4;

// Maps `bytes` (a multiple of the huge page size) aligned to a huge page, advised for THP.
std::byte* map_huge_aligned(size_t bytes) {
  const size_t align = ChunkPool::kHugePageBytes;
  void* raw = mmap(nullptr, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + align - 1) & ~(align - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = start + bytes + align - (aligned + bytes);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
#ifdef MADV_HUGEPAGE
  // Advice only: where THP is off the slab simply stays on small pages.
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<std::byte*>(aligned);
}

}  // namespace

ChunkPool::ChunkPool(size_t chunk_bytes) : chunk_bytes_((chunk_bytes + 63) & ~size_t{63}) {
  SC_CHECK_ARG(chunk_bytes > 0, "chunk size must be positive");
}

ChunkPool::~ChunkPool() {
  for (const Slab& s : slabs_) {
    if (s.bytes >= kHugePageBytes) munmap(s.base, s.bytes);
    else std::free(s.base);
  }
}

void ChunkPool::add_slab() {
  // Grow with the table: a new slab as large as all before it (the table doubles), so the
  // number of slabs stays logarithmic while the untouched tail stays bounded.
  size_t bytes = std::clamp(reserved_, kFirstSlabChunks * chunk_bytes_, kMaxSlabBytes);
  bytes = std::max(bytes, chunk_bytes_);
  std::byte* base;
  if (bytes >= kHugePageBytes) {
    bytes = (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
    base = map_huge_aligned(bytes);
  } else {
    bytes = (bytes + 63) & ~size_t{63};
    base = static_cast<std::byte*>(std::aligned_alloc(64, bytes));
    if (!base) throw std::bad_alloc();
  }
  try {
    slabs_.push_back(Slab{base, bytes});
  } catch (...) {
    if (bytes >= kHugePageBytes) munmap(base, bytes);
    else std::free(base);
    throw;
  }
  reserved_ += bytes;
  cursor_ = base;
  slab_end_ = base + bytes;
}

std::byte* ChunkPool::allocate() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!free_.empty()) {
    std::byte* c = free_.back();
    free_.pop_back();
    return c;
  }
  if (cursor_ == nullptr || static_cast<size_t>(slab_end_ - cursor_) < chunk_bytes_) add_slab();
  std::byte* c = cursor_;
  cursor_ += chunk_bytes_;
  return c;
}

void ChunkPool::release(std::byte* chunk) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(chunk);
}

size_t ChunkPool::reserved_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return reserved_;
}

}  // namespace sparsecore
