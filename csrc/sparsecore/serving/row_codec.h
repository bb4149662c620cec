// RowCodec: how a served table keeps its rows in memory, and the kernels that read them.
//
// A served table keeps each row in the dtype of the export that brought it (export_format.h),
// laid out so that 8 values decode with whole vector loads:
//   fp32  float32[dim]                                          (4·dim bytes)
//   fp16  half[round8(dim)], zero padded                        (2·round8(dim) bytes)
//   int8  float32 scale, float32 bias, uint8 q[round8(dim)]      (8 + round8(dim) bytes)
//   int4  float32 scale, float32 bias, round8(dim) / 2 bytes of nibbles (element 2j in the low
//         nibble of byte j, 2j+1 in the high one)                (8 + round8(dim) / 2 bytes)
// A value decodes exactly as the export's reader dequantizes it (quant/row_quantization.h:
// q · scale, then + bias, two roundings, no fused multiply-add), so a pooled row equals
// pooling the dequantized fp32 rows.
//
// Pooling (pool_bags) is the training engine's: per bag, Σ_i s_i · row_i summed in id order
// (s_i the id's weight, 1 without weights; an absent row reads `fill` in every column), then
// for a mean the division by Σ_i s_i (an empty bag, or a zero divisor, leaves the sum, zeros
// for an empty bag). Vector clones (AVX2 + F16C) are picked at run time; the portable loop
// gives the same bits (products and sums rounded one at a time in both).
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparsecore/serving/export_format.h"

namespace sparsecore::serving {

class RowCodec {
 public:
  RowCodec(ExportDtype dtype, int dim);

  ExportDtype dtype() const { return dtype_; }
  int dim() const { return dim_; }
  size_t row_bytes() const { return row_bytes_; }

  // One row as an export stores it (export_row_bytes(dtype, dim) bytes) -> this layout.
  void store(const uint8_t* exported, std::byte* row) const;
  // One row of this layout -> dim floats.
  void decode(const std::byte* row, float* out) const;

 private:
  ExportDtype dtype_;
  int dim_;
  size_t row_bytes_;
};

// One feature of a batch read through a codec: rows (num_ids) the row of each id (null:
// absent), offsets (batch + 1) the bags, weights (num_ids) or null.
struct BagRows {
  const std::byte* const* rows = nullptr;
  const int64_t* offsets = nullptr;
  const float* weights = nullptr;
  int64_t batch = 0;
};

// Bags [b0, b1) pooled into out (b1 - b0, dim): sums, or means when `mean`.
void pool_bags(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, float fill, bool mean, float* out);
// Bags [b0, b1) as sequences into out (b1 - b0, max_len, dim): step t of bag b is s_t · row_t,
// zeros past the bag's length (every bag must be at most max_len long).
void sequence_bags(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, int64_t max_len, float fill,
                   float* out);
// rows (n) -> out (n, dim): each row decoded, `fill` for an absent one.
void decode_rows(const RowCodec& codec, const std::byte* const* rows, int64_t n, float fill, float* out);

namespace detail {
// Forces the portable loops (true) or lets the CPU pick (false): for tests that compare both.
void force_portable_rows(bool portable);
bool vector_rows_available();
}  // namespace detail

}  // namespace sparsecore::serving
