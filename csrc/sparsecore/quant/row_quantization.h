// Row quantization of embedding tables for serving: each row is stored in one of
//   fp16  dim half floats (round to nearest even; |x| >= 65520 is refused);
//   int8  dim bytes q, then float32 scale and float32 bias: x ≈ q · scale + bias;
//   int4  ceil(dim/2) bytes (element 2j in the low nibble of byte j, 2j+1 in the high
//         nibble), then float32 scale and bias, as int8 with q in 0..15.
// Rowwise min/max: bias = min(row), scale = (max − min) / (2^bits − 1) (0 for a constant row,
// whose q are all 0), q = clamp(round_half_even((x − bias) / scale), 0, 2^bits − 1), each
// operation in float32. Dequantization is q · scale + bias, a product then a sum (no FMA).
//
// A quantized table is a (rows, row_bytes) uint8 matrix, host memory; a pooled lookup
// dequantizes the rows of each bag on the fly and sums them (optionally weighted, or mean).
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/core/half.h"

namespace sparsecore::quant {

enum class RowFormat { kFp16, kInt8, kInt4 };

// "fp16" | "int8" | "int4"; anything else throws InvalidArgument.
RowFormat parse_row_format(const std::string& name);
const char* row_format_name(RowFormat format);

// Bytes of one quantized row of `dim` values.
int64_t quantized_row_bytes(RowFormat format, int64_t dim);

// x (n, dim) float32 -> out (n, quantized_row_bytes) uint8. Non-finite values throw
// InvalidArgument naming the row, before anything is written.
void quantize_rows(const float* x, int64_t n, int64_t dim, RowFormat format, uint8_t* out);

// q (n, quantized_row_bytes) -> out (n, dim) float32.
void dequantize_rows(const uint8_t* q, int64_t n, int64_t dim, RowFormat format, float* out);

// out (batch, dim) float32: for bag b, the sum over i in [offsets[b], offsets[b+1]) of
// weights[i] · row(indices[i]) (weights may be null: 1), summed in bag order in float32; with
// `mean`, divided by the bag length (by the sum of its weights when given); an empty bag (or
// a zero divisor) gives zeros. indices[i] = -1 marks an absent id, which reads as a row of
// zeros (and still counts in the mean's length).
//   table    (num_rows, quantized_row_bytes) uint8
//   indices  (num) int64 in [-1, num_rows); offsets (batch + 1) int64, offsets[0] = 0,
//            non-decreasing, offsets[batch] = num; weights (num) float32 or null
// Everything is validated before anything is written (InvalidArgument).
void pooled_lookup(const uint8_t* table, int64_t num_rows, int64_t dim, RowFormat format, const int64_t* indices,
                   int64_t num, const int64_t* offsets, int64_t batch, const float* weights, bool mean, float* out);

// IEEE binary16 conversions, round to nearest even (sparsecore/core/half.h).
using sparsecore::float_to_half;
using sparsecore::half_to_float;

}  // namespace sparsecore::quant
