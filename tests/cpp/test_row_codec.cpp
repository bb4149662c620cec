#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/serving/row_codec.h"

namespace sparsecore::serving {
namespace {

struct Stored {
  std::vector<float> dequantized;  // (rows, dim): what the export's reader gives
  std::vector<std::byte> rows;     // (rows, codec.row_bytes())
};

Stored make_rows(ExportDtype dtype, int dim, int n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (auto& v : x) v = normal(rng);
  const uint64_t eb = export_row_bytes(dtype, dim);
  std::vector<uint8_t> coded(n * eb);
  Stored s;
  s.dequantized.resize(x.size());
  if (dtype == ExportDtype::kFloat32) {
    std::memcpy(coded.data(), x.data(), coded.size());
    s.dequantized = x;
  } else {
    const auto format = dtype == ExportDtype::kFloat16 ? quant::RowFormat::kFp16
                        : dtype == ExportDtype::kInt8  ? quant::RowFormat::kInt8
                                                       : quant::RowFormat::kInt4;
    quant::quantize_rows(x.data(), n, dim, format, coded.data());
    quant::dequantize_rows(coded.data(), n, dim, format, s.dequantized.data());
  }
  const RowCodec codec(dtype, dim);
  s.rows.resize(n * codec.row_bytes());
  for (int r = 0; r < n; ++r) codec.store(coded.data() + r * eb, s.rows.data() + r * codec.row_bytes());
  return s;
}

// The training engine's pooling over dequantized rows, one rounding at a time.
std::vector<float> reference(const std::vector<const float*>& rows, const std::vector<int64_t>& offsets,
                             const std::vector<float>* weights, int dim, float fill, bool mean) {
  const int64_t batch = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<float> out(batch * dim, 0.0f), fills(dim, fill);
  for (int64_t b = 0; b < batch; ++b) {
    float total = 0.0f;
    for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
      const float s = weights ? (*weights)[i] : 1.0f;
      total += s;
      const float* r = rows[i] ? rows[i] : fills.data();
      for (int c = 0; c < dim; ++c) {
        volatile float v = s * r[c];
        out[b * dim + c] += v;
      }
    }
    if (mean && offsets[b + 1] > offsets[b] && total != 0.0f)
      for (int c = 0; c < dim; ++c) out[b * dim + c] /= total;
  }
  return out;
}

class RowCodecTest : public ::testing::TestWithParam<std::tuple<ExportDtype, int>> {
 protected:
  void TearDown() override { detail::force_portable_rows(false); }
};

TEST_P(RowCodecTest, PooledStoredRowsEqualPoolingTheDequantizedRowsInBothKernels) {
  const auto [dtype, dim] = GetParam();
  std::mt19937 rng(dim * 7 + static_cast<int>(dtype));
  const int n_rows = 40;
  const RowCodec codec(dtype, dim);
  const Stored stored = make_rows(dtype, dim, n_rows, rng);
  // Bags of 0..6 ids, some absent (null), some repeated.
  std::vector<int64_t> offsets{0};
  std::vector<const std::byte*> rows;
  std::vector<const float*> ref_rows;
  std::vector<float> weights;
  for (int b = 0; b < 37; ++b) {
    const int len = static_cast<int>(rng() % 7);
    for (int i = 0; i < len; ++i) {
      const int r = static_cast<int>(rng() % (n_rows + 6));
      const bool absent = r >= n_rows;
      rows.push_back(absent ? nullptr : stored.rows.data() + r * codec.row_bytes());
      ref_rows.push_back(absent ? nullptr : stored.dequantized.data() + r * dim);
      weights.push_back(0.25f + static_cast<float>(rng() % 9) * 0.5f);
    }
    offsets.push_back(static_cast<int64_t>(rows.size()));
  }
  const int64_t batch = static_cast<int64_t>(offsets.size()) - 1;
  for (bool portable : {false, true}) {
    if (!portable && !detail::vector_rows_available()) continue;
    detail::force_portable_rows(portable);
    for (bool weighted : {false, true})
      for (bool mean : {false, true}) {
        const BagRows bags{rows.data(), offsets.data(), weighted ? weights.data() : nullptr, batch};
        const auto want = reference(ref_rows, offsets, weighted ? &weights : nullptr, dim, 0.5f, mean);
        std::vector<float> got(batch * dim + 3, -7.0f);  // guard floats past the end stay
        // In two pieces, as the subscriber splits a batch over tasks.
        pool_bags(codec, bags, 0, 11, 0.5f, mean, got.data());
        pool_bags(codec, bags, 11, batch, 0.5f, mean, got.data() + 11 * dim);
        for (int64_t i = 0; i < batch * dim; ++i)
          ASSERT_EQ(got[i], want[i]) << "portable " << portable << " weighted " << weighted << " mean " << mean
                                     << " at " << i;
        for (int g = 0; g < 3; ++g) EXPECT_EQ(got[batch * dim + g], -7.0f);
      }
    // Sequences: each step s_t * row_t, zeros past the bag's length.
    const int64_t max_len = 6;
    std::vector<float> seq(batch * max_len * dim, -1.0f);
    const BagRows bags{rows.data(), offsets.data(), weights.data(), batch};
    sequence_bags(codec, bags, 0, batch, max_len, 0.5f, seq.data());
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < max_len; ++t)
        for (int c = 0; c < dim; ++c) {
          const int64_t i = offsets[b] + t;
          float want = 0.0f;
          if (i < offsets[b + 1]) want = weights[i] * (ref_rows[i] ? ref_rows[i][c] : 0.5f);
          ASSERT_EQ(seq[(b * max_len + t) * dim + c], want) << "portable " << portable;
        }
    // Decoding gives the dequantized rows.
    std::vector<float> decoded(rows.size() * dim);
    decode_rows(codec, rows.data(), static_cast<int64_t>(rows.size()), 0.5f, decoded.data());
    for (size_t i = 0; i < rows.size(); ++i)
      for (int c = 0; c < dim; ++c) ASSERT_EQ(decoded[i * dim + c], ref_rows[i] ? ref_rows[i][c] : 0.5f);
  }
}

INSTANTIATE_TEST_SUITE_P(DtypesAndDims, RowCodecTest,
                         ::testing::Combine(::testing::Values(ExportDtype::kFloat32, ExportDtype::kFloat16,
                                                              ExportDtype::kInt8, ExportDtype::kInt4),
                                            ::testing::Values(1, 3, 8, 18, 31, 33, 40)),
                         [](const auto& info) {
                           return std::string(export_dtype_name(std::get<0>(info.param))) + "_dim" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(RowCodec, LayoutsPadToWholeVectors) {
  EXPECT_EQ(RowCodec(ExportDtype::kFloat32, 18).row_bytes(), 72u);
  EXPECT_EQ(RowCodec(ExportDtype::kFloat16, 18).row_bytes(), 48u);
  EXPECT_EQ(RowCodec(ExportDtype::kInt8, 18).row_bytes(), 32u);
  EXPECT_EQ(RowCodec(ExportDtype::kInt4, 18).row_bytes(), 20u);
  EXPECT_THROW(RowCodec(ExportDtype::kFloat16, 0), InvalidArgument);
}

}  // namespace
}  // namespace sparsecore::serving
