#include "sparsecore/table/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

namespace sparsecore {

std::byte* allocate_huge(size_t bytes) {
  if (bytes < kHugePageBytes) {
    void* p = std::aligned_alloc(64, (bytes + 63) & ~size_t{63});
    if (!p) throw std::bad_alloc();
    return static_cast<std::byte*>(p);
  }
  // Map one huge page more than asked, then trim the unaligned head and tail.
  const size_t span = (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  void* raw = mmap(nullptr, span + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = start + span + kHugePageBytes - (aligned + span);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + span), tail);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), span, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<std::byte*>(aligned);
}

void free_huge(std::byte* p, size_t bytes) noexcept {
  if (!p) return;
  if (bytes < kHugePageBytes) {
    std::free(p);
  } else {
    munmap(p, (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1));
  }
}

}  // namespace sparsecore
