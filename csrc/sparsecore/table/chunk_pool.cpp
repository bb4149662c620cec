#include "sparsecore/table/chunk_pool.h"

#include <algorithm>

#include "sparsecore/core/error.h"
#include "sparsecore/table/huge_pages.h"

namespace sparsecore {
namespace {

constexpr size_t kFirstSlabChunks = 4;

}  // namespace

ChunkPool::ChunkPool(size_t chunk_bytes) : chunk_bytes_((chunk_bytes + 63) & ~size_t{63}) {
  SC_CHECK_ARG(chunk_bytes > 0, "chunk size must be positive");
}

ChunkPool::~ChunkPool() {
  for (const Slab& s : slabs_) free_huge(s.base, s.bytes);
}

void ChunkPool::add_slab() {
  // Grow with the table: a new slab as large as all before it (the table doubles), so the
  // number of slabs stays logarithmic while the untouched tail stays bounded.
  size_t bytes = std::min(std::max(reserved_, kFirstSlabChunks * chunk_bytes_), kMaxSlabBytes);
  bytes = std::max(bytes, chunk_bytes_);
  if (bytes >= kHugePageBytes) bytes = (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  slabs_.reserve(slabs_.size() + 1);
  std::byte* base = allocate_huge(bytes);
  slabs_.push_back(Slab{base, bytes});
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
