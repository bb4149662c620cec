#include "sparsecore/table/dense_rows.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/table/huge_pages.h"

namespace sparsecore {
namespace {

constexpr size_t kPageBytes = 4096;

size_t page_round(size_t bytes) { return (bytes + kPageBytes - 1) & ~(kPageBytes - 1); }

// Address space only: pages are zero and not resident until written.
void* reserve(size_t bytes, bool huge) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  if (huge && bytes >= kHugePageBytes) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
}

}  // namespace

DenseRows::DenseRows(size_t row_bytes, int64_t num_rows) : row_bytes_(row_bytes), num_rows_(num_rows) {
  SC_CHECK_ARG(num_rows >= 1, "a dense table needs at least one row, got ", num_rows);
  SC_CHECK_ARG(static_cast<uint64_t>(num_rows) <= (uint64_t{1} << 47) / row_bytes, "num_embeddings ", num_rows,
               " rows of ", row_bytes, " bytes exceed the address space");
  rows_span_ = page_round(static_cast<size_t>(num_rows) * row_bytes);
  bits_span_ = page_round(static_cast<size_t>((num_rows + 63) >> 6) * sizeof(uint64_t));
  base_ = static_cast<std::byte*>(reserve(rows_span_, true));
  SC_CHECK_ARG(base_ != nullptr, "cannot reserve ", rows_span_, " bytes of address space for ", num_rows,
               " rows (num_embeddings): ", std::strerror(errno));
  void* bits = reserve(bits_span_, false);
  if (!bits) {
    const int err = errno;
    munmap(base_, rows_span_);
    throw InvalidArgument("cannot reserve the presence bitmap of " + std::to_string(num_rows) +
                          " rows (num_embeddings): " + std::strerror(err));
  }
  bits_ = static_cast<std::atomic<uint64_t>*>(bits);  // zero pages: every row absent
  static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t));
}

DenseRows::~DenseRows() {
  munmap(base_, rows_span_);
  munmap(bits_, bits_span_);
}

bool DenseRows::mark(int64_t id) {
  const uint64_t bit = uint64_t{1} << (id & 63);
  if (bits_[id >> 6].fetch_or(bit, std::memory_order_acq_rel) & bit) return false;
  count_.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

bool DenseRows::unmark(int64_t id) {
  const uint64_t bit = uint64_t{1} << (id & 63);
  if (!(bits_[id >> 6].fetch_and(~bit, std::memory_order_acq_rel) & bit)) return false;
  count_.fetch_sub(1, std::memory_order_acq_rel);
  return true;
}

size_t DenseRows::memory_bytes() const { return size() * row_bytes_ + ((size() + 63) >> 6) * sizeof(uint64_t); }

void DenseRows::clear() {
  // MADV_DONTNEED on a private anonymous mapping: the next touch reads a zero page.
  madvise(bits_, bits_span_, MADV_DONTNEED);
  madvise(base_, rows_span_, MADV_DONTNEED);
  count_.store(0, std::memory_order_release);
}

}  // namespace sparsecore
