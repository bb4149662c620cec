// Memory for the big random-access arrays of a table (row slabs, hash indexes) on
// transparent huge pages where the kernel offers them.
//
// Random reads over gigabytes on 4 KiB pages pay a TLB miss and a page walk nearly every
// time (a two-dimensional walk, much dearer, inside a virtual machine). Regions of at least
// kHugePageBytes are mapped 2 MiB-aligned and advised MADV_HUGEPAGE (advice only: where THP
// is off they stay on small pages); smaller ones come from the C heap, where a huge page
// could not apply anyway. Untouched pages of a mapping are never resident.
#pragma once

#include <cstddef>
#include <new>

namespace sparsecore {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// Returns `bytes` of 64-byte aligned memory (huge-page aligned when bytes >= kHugePageBytes);
// throws std::bad_alloc. Release with free_huge(p, the same bytes).
std::byte* allocate_huge(size_t bytes);
void free_huge(std::byte* p, size_t bytes) noexcept;

// A std allocator over allocate_huge, for vectors that may grow past a huge page.
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return reinterpret_cast<T*>(allocate_huge(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { free_huge(reinterpret_cast<std::byte*>(p), n * sizeof(T)); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace sparsecore
