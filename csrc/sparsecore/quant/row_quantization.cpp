#include "sparsecore/quant/row_quantization.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore::quant {

RowFormat parse_row_format(const std::string& name) {
  if (name == "fp16") return RowFormat::kFp16;
  if (name == "int8") return RowFormat::kInt8;
  if (name == "int4") return RowFormat::kInt4;
  throw InvalidArgument("row format must be 'fp16', 'int8' or 'int4', got '" + name + "'");
}

const char* row_format_name(RowFormat format) {
  switch (format) {
    case RowFormat::kFp16:
      return "fp16";
    case RowFormat::kInt8:
      return "int8";
    default:
      return "int4";
  }
}

int64_t quantized_row_bytes(RowFormat format, int64_t dim) {
  switch (format) {
    case RowFormat::kFp16:
      return 2 * dim;
    case RowFormat::kInt8:
      return dim + 8;
    default:
      return (dim + 1) / 2 + 8;
  }
}

namespace {

template <int Bits>
void quantize_row_affine(const float* x, int64_t dim, uint8_t* out) {
  constexpr float levels = static_cast<float>((1 << Bits) - 1);
  float lo = dim ? x[0] : 0.0f, hi = lo;
  for (int64_t d = 1; d < dim; ++d) lo = std::min(lo, x[d]), hi = std::max(hi, x[d]);
  const float scale = (hi - lo) / levels;
  auto code = [&](float v) -> uint8_t {
    if (!(scale > 0.0f)) return 0;
    float q = std::nearbyint((v - lo) / scale);
    return static_cast<uint8_t>(std::clamp(q, 0.0f, levels));
  };
  int64_t data_bytes;
  if constexpr (Bits == 8) {
    for (int64_t d = 0; d < dim; ++d) out[d] = code(x[d]);
    data_bytes = dim;
  } else {
    data_bytes = (dim + 1) / 2;
    for (int64_t j = 0; j < data_bytes; ++j) {
      uint8_t low = code(x[2 * j]);
      uint8_t high = 2 * j + 1 < dim ? code(x[2 * j + 1]) : 0;
      out[j] = static_cast<uint8_t>(low | (high << 4));
    }
  }
  std::memcpy(out + data_bytes, &scale, 4);
  std::memcpy(out + data_bytes + 4, &lo, 4);
}

// One dequantized row into `out` (dim floats).
SC_DISPATCH void dequantize_row(const uint8_t* q, int64_t dim, RowFormat format, float* out) {
  if (format == RowFormat::kFp16) {
    for (int64_t d = 0; d < dim; ++d) {
      uint16_t h;
      std::memcpy(&h, q + 2 * d, 2);
      out[d] = half_to_float(h);
    }
    return;
  }
  const int64_t data_bytes = format == RowFormat::kInt8 ? dim : (dim + 1) / 2;
  float scale, bias;
  std::memcpy(&scale, q + data_bytes, 4);
  std::memcpy(&bias, q + data_bytes + 4, 4);
  if (format == RowFormat::kInt8) {
    for (int64_t d = 0; d < dim; ++d) {
      float v = static_cast<float>(q[d]) * scale;
      out[d] = v + bias;
    }
  } else {
    for (int64_t d = 0; d < dim; ++d) {
      uint8_t byte = q[d >> 1];
      float v = static_cast<float>((d & 1) ? (byte >> 4) : (byte & 15)) * scale;
      out[d] = v + bias;
    }
  }
}

SC_DISPATCH void accumulate(float* acc, const float* row, int64_t dim, float weight, bool weighted) {
  if (weighted) {
    for (int64_t d = 0; d < dim; ++d) {
      float v = weight * row[d];
      acc[d] += v;
    }
  } else {
    for (int64_t d = 0; d < dim; ++d) acc[d] += row[d];
  }
}

}  // namespace

void quantize_rows(const float* x, int64_t n, int64_t dim, RowFormat format, uint8_t* out) {
  SC_CHECK_ARG(n >= 0 && dim >= 1, "rows must have shape (n, dim) with dim >= 1, got (", n, ", ", dim, ")");
  for (int64_t i = 0; i < n * dim; ++i) {
    SC_CHECK_ARG(std::isfinite(x[i]), "row ", i / dim, " has a non-finite value ", x[i], " at column ", i % dim);
    SC_CHECK_ARG(format != RowFormat::kFp16 || std::fabs(x[i]) < 65520.0f, "row ", i / dim, " value ", x[i],
                 " at column ", i % dim, " is out of the fp16 range (|x| < 65520)");
  }
  const int64_t rb = quantized_row_bytes(format, dim);
  parallel_for(n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      uint8_t* o = out + r * rb;
      switch (format) {
        case RowFormat::kFp16:
          for (int64_t d = 0; d < dim; ++d) {
            uint16_t h = float_to_half(xr[d]);
            std::memcpy(o + 2 * d, &h, 2);
          }
          break;
        case RowFormat::kInt8:
          quantize_row_affine<8>(xr, dim, o);
          break;
        default:
          quantize_row_affine<4>(xr, dim, o);
      }
    }
  });
}

void dequantize_rows(const uint8_t* q, int64_t n, int64_t dim, RowFormat format, float* out) {
  SC_CHECK_ARG(n >= 0 && dim >= 1, "rows must have shape (n, dim) with dim >= 1, got (", n, ", ", dim, ")");
  const int64_t rb = quantized_row_bytes(format, dim);
  parallel_for(n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dequantize_row(q + r * rb, dim, format, out + r * dim);
  });
}

void pooled_lookup(const uint8_t* table, int64_t num_rows, int64_t dim, RowFormat format, const int64_t* indices,
                   int64_t num, const int64_t* offsets, int64_t batch, const float* weights, bool mean, float* out) {
  SC_CHECK_ARG(dim >= 1 && num_rows >= 0 && batch >= 0 && num >= 0, "pooled_lookup: bad sizes (rows ", num_rows,
               ", dim ", dim, ", batch ", batch, ", indices ", num, ")");
  SC_CHECK_ARG(offsets[0] == 0, "offsets[0] must be 0, got ", offsets[0]);
  SC_CHECK_ARG(offsets[batch] == num, "offsets[-1] must equal the number of indices ", num, ", got ", offsets[batch]);
  for (int64_t b = 0; b < batch; ++b)
    SC_CHECK_ARG(offsets[b] <= offsets[b + 1], "offsets must be non-decreasing (offsets[", b, "] = ", offsets[b],
                 " > offsets[", b + 1, "] = ", offsets[b + 1], ")");
  for (int64_t i = 0; i < num; ++i)
    SC_CHECK_ARG(indices[i] >= -1 && indices[i] < num_rows, "indices[", i, "] = ", indices[i], " is out of range [-1, ",
                 num_rows, ")");
  if (weights) {
    for (int64_t i = 0; i < num; ++i)
      SC_CHECK_ARG(std::isfinite(weights[i]), "weights[", i, "] = ", weights[i], " is not finite");
  }
  const int64_t rb = quantized_row_bytes(format, dim);
  parallel_for(batch, 64, [&](int64_t b0, int64_t b1) {
    std::vector<float> row(static_cast<size_t>(dim));
    for (int64_t b = b0; b < b1; ++b) {
      float* acc = out + b * dim;
      std::fill(acc, acc + dim, 0.0f);
      float divisor = 0.0f;
      for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
        float w = weights ? weights[i] : 1.0f;
        divisor += w;
        if (indices[i] < 0) continue;
        dequantize_row(table + indices[i] * rb, dim, format, row.data());
        accumulate(acc, row.data(), dim, w, weights != nullptr);
      }
      if (!mean) continue;
      if (divisor == 0.0f) {
        std::fill(acc, acc + dim, 0.0f);
      } else {
        for (int64_t d = 0; d < dim; ++d) acc[d] /= divisor;
      }
    }
  });
}

}  // namespace sparsecore::quant
