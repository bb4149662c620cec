// Bindings of the quant layer: power-of-two projection and packing, the shift matmul, and
// row quantization with pooled lookup. Arrays are checked here (dtype, shape, contiguity);
// values are checked by the C++ calls before they write anything.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/cuda/device_packed_weights.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/quant/shift_matmul.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::quant;
using sparsecore::python::checked_array;

namespace {

// Codes of another width (8-bit codes, or a different column count) name the mismatch.
void check_code_width(const py::array& codes, int64_t cols) {
  if (codes.ndim() == 2 && codes.shape(1) != packed_cols(cols)) {
    throw InvalidArgument("codes have " + std::to_string(codes.shape(1)) + " bytes per row, but " +
                          std::to_string(cols) + " columns of " + std::to_string(kCodeBits) + "-bit codes need " +
                          std::to_string(packed_cols(cols)) + " (wrong code width?)");
  }
}

// codes (rows, packed_cols(cols)) uint8 and alpha (rows) float32 of one packed matrix.
struct PackedArgs {
  const uint8_t* codes;
  const float* alpha;
  int64_t rows;
};

PackedArgs packed_args(const py::array& codes, const py::array& alpha, int64_t cols) {
  SC_CHECK_ARG(cols >= 0, "cols must be >= 0, got ", cols);
  const float* a = checked_array<float>(alpha, "alpha", {-1});
  int64_t rows = alpha.shape(0);
  check_code_width(codes, cols);
  const uint8_t* c = checked_array<uint8_t>(codes, "codes", {rows, packed_cols(cols)});
  return {c, a, rows};
}

template <typename T>
py::array_t<int32_t> fixed_matmul(const py::array& x, const py::array& codes, int64_t cols) {
  const T* xp = checked_array<T>(x, "x", {-1, cols});
  SC_CHECK_ARG(codes.ndim() == 2, "codes must be 2-D (rows, packed cols)");
  int64_t rows = codes.shape(0), batch = x.shape(0);
  check_code_width(codes, cols);
  const uint8_t* c = checked_array<uint8_t>(codes, "codes", {rows, packed_cols(cols)});
  py::array_t<int32_t> acc({batch, rows});
  int32_t* out = acc.mutable_data();
  py::gil_scoped_release release;
  shift_matmul_fixed(xp, batch, c, rows, cols, out);
  return acc;
}

// x (batch, cols) host: float32 -> y float32, int8/int16 -> exact int32 sums.
template <typename X>
py::array device_matmul(const cuda::DevicePackedWeights& w, const py::array& x) {
  using Y = std::conditional_t<std::is_same_v<X, float>, float, int32_t>;
  const X* xp = checked_array<X>(x, "x", {-1, w.cols()});
  const int64_t batch = x.shape(0);
  py::array_t<Y> y({batch, w.rows()});
  Y* out = y.mutable_data();
  py::gil_scoped_release release;
  if constexpr (std::is_same_v<X, float>)
    w.matmul(xp, batch, out);
  else
    w.matmul_fixed(xp, batch, out);
  return y;
}

}  // namespace

SPARSECORE_BINDING(quant, 90) {
  m.def(
      "project_pow2",
      [](const py::array& w, const std::vector<float>& codebook, bool per_channel, int max_iter) {
        const float* wp = checked_array<float>(w, "weight", {-1, -1});
        int64_t rows = w.shape(0), cols = w.shape(1);
        py::array_t<float> projected({rows, cols});
        py::array_t<float> alpha(per_channel ? rows : 1);
        float* pp = projected.mutable_data();
        float* ap = alpha.mutable_data();
        int iters;
        {
          py::gil_scoped_release release;
          iters = project_pow2(wp, rows, cols, codebook, per_channel, max_iter, pp, ap);
        }
        return py::make_tuple(projected, alpha, iters);
      },
      py::arg("weight"), py::arg("codebook"), py::arg("per_channel"), py::arg("max_iter") = 100);
  m.def(
      "pack_pow2",
      [](const py::array& w, const py::array& alpha) {
        const float* wp = checked_array<float>(w, "weight", {-1, -1});
        int64_t rows = w.shape(0), cols = w.shape(1);
        const float* ap = checked_array<float>(alpha, "alpha", {rows});
        py::array_t<uint8_t> codes({rows, packed_cols(cols)});
        uint8_t* cp = codes.mutable_data();
        py::gil_scoped_release release;
        pack_pow2(wp, ap, rows, cols, cp);
        return codes;
      },
      py::arg("weight"), py::arg("alpha"));
  m.def(
      "unpack_pow2",
      [](const py::array& codes, const py::array& alpha, int64_t cols) {
        PackedArgs p = packed_args(codes, alpha, cols);
        py::array_t<float> w({p.rows, cols});
        float* wp = w.mutable_data();
        py::gil_scoped_release release;
        unpack_pow2(p.codes, p.alpha, p.rows, cols, wp);
        return w;
      },
      py::arg("codes"), py::arg("alpha"), py::arg("cols"));
  m.def(
      "shift_matmul_float",
      [](const py::array& x, const py::array& codes, const py::array& alpha, int64_t cols) {
        PackedArgs p = packed_args(codes, alpha, cols);
        const float* xp = checked_array<float>(x, "x", {-1, cols});
        int64_t batch = x.shape(0);
        py::array_t<float> y({batch, p.rows});
        float* yp = y.mutable_data();
        py::gil_scoped_release release;
        shift_matmul(xp, batch, p.codes, p.alpha, p.rows, cols, yp);
        return y;
      },
      py::arg("x"), py::arg("codes"), py::arg("alpha"), py::arg("cols"));
  m.def("shift_matmul_int8", &fixed_matmul<int8_t>, py::arg("x"), py::arg("codes"), py::arg("cols"));
  m.def("shift_matmul_int16", &fixed_matmul<int16_t>, py::arg("x"), py::arg("codes"), py::arg("cols"));
  m.def(
      "fixed_to_float",
      [](const py::array& acc, const py::array& alpha, float x_scale) {
        const float* ap = checked_array<float>(alpha, "alpha", {-1});
        int64_t rows = alpha.shape(0);
        const int32_t* accp = checked_array<int32_t>(acc, "acc", {-1, rows});
        int64_t batch = acc.shape(0);
        py::array_t<float> y({batch, rows});
        float* yp = y.mutable_data();
        py::gil_scoped_release release;
        fixed_to_float(accp, batch, ap, rows, x_scale, yp);
        return y;
      },
      py::arg("acc"), py::arg("alpha"), py::arg("x_scale"));
  m.def("shift_matmul_kernel", &shift_matmul_kernel,
        "The float shift-matmul kernel picked for this CPU: 'avx512', 'avx2' or 'portable'.");
  m.def("shift_matmul_fixed_kernel", &shift_matmul_fixed_kernel,
        "The fixed-point (int8/int16) shift-matmul kernel picked for this CPU: 'avx512vnni' or 'portable'.");

  m.def(
      "quantized_row_bytes",
      [](const std::string& format, int64_t dim) { return quantized_row_bytes(parse_row_format(format), dim); },
      py::arg("format"), py::arg("dim"));
  m.def(
      "quantize_rows",
      [](const py::array& x, const std::string& format) {
        RowFormat f = parse_row_format(format);
        const float* xp = checked_array<float>(x, "rows", {-1, -1});
        int64_t n = x.shape(0), dim = x.shape(1);
        SC_CHECK_ARG(dim >= 1, "rows must have at least one column");
        py::array_t<uint8_t> q({n, quantized_row_bytes(f, dim)});
        uint8_t* qp = q.mutable_data();
        py::gil_scoped_release release;
        quantize_rows(xp, n, dim, f, qp);
        return q;
      },
      py::arg("rows"), py::arg("format"));
  m.def(
      "dequantize_rows",
      [](const py::array& q, int64_t dim, const std::string& format) {
        RowFormat f = parse_row_format(format);
        SC_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
        const uint8_t* qp = checked_array<uint8_t>(q, "quantized rows", {-1, quantized_row_bytes(f, dim)});
        int64_t n = q.shape(0);
        py::array_t<float> out({n, dim});
        float* op = out.mutable_data();
        py::gil_scoped_release release;
        dequantize_rows(qp, n, dim, f, op);
        return out;
      },
      py::arg("quantized"), py::arg("dim"), py::arg("format"));
  m.def(
      "pooled_lookup_quantized",
      [](const py::array& table, int64_t dim, const std::string& format, const py::array& indices,
         const py::array& offsets, const py::object& weights, bool mean) {
        RowFormat f = parse_row_format(format);
        SC_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
        const uint8_t* tp = checked_array<uint8_t>(table, "quantized table", {-1, quantized_row_bytes(f, dim)});
        const int64_t* ip = checked_array<int64_t>(indices, "indices", {-1});
        const int64_t* op = checked_array<int64_t>(offsets, "offsets", {-1});
        int64_t num = indices.shape(0);
        SC_CHECK_ARG(offsets.shape(0) >= 1, "offsets must have at least one element (batch + 1)");
        int64_t batch = offsets.shape(0) - 1;
        const float* wp = nullptr;
        py::array warr;
        if (!weights.is_none()) {
          warr = weights.cast<py::array>();
          wp = checked_array<float>(warr, "weights", {num});
        }
        py::array_t<float> out({batch, dim});
        float* outp = out.mutable_data();
        int64_t rows = table.shape(0);
        py::gil_scoped_release release;
        pooled_lookup(tp, rows, dim, f, ip, num, op, batch, wp, mean, outp);
        return out;
      },
      py::arg("table"), py::arg("dim"), py::arg("format"), py::arg("indices"), py::arg("offsets"), py::arg("weights"),
      py::arg("mean"));

  // The CUDA twin (device or emulated). Arrays are host memory except in matmul_device, which
  // takes raw device addresses (e.g. torch CUDA tensors' data_ptr()) and a cudaStream_t.
  py::class_<cuda::DevicePackedWeights>(m, "DevicePackedWeights")
      .def(py::init([](const py::array& codes, const py::array& alpha, int64_t cols, bool emulate, int block_threads,
                       int max_blocks) {
             PackedArgs p = packed_args(codes, alpha, cols);
             py::gil_scoped_release release;
             return std::make_unique<cuda::DevicePackedWeights>(
                 p.codes, p.alpha, p.rows, cols, emulate ? cuda::Backend::kEmulated : cuda::Backend::kDevice,
                 cuda::LaunchLimits{block_threads, max_blocks});
           }),
           py::arg("codes"), py::arg("alpha"), py::arg("cols"), py::arg("emulate") = false,
           py::arg("block_threads") = 128, py::arg("max_blocks") = 0)
      .def_property_readonly("rows", &cuda::DevicePackedWeights::rows)
      .def_property_readonly("cols", &cuda::DevicePackedWeights::cols)
      .def_property_readonly("emulated",
                             [](const cuda::DevicePackedWeights& w) { return w.backend() == cuda::Backend::kEmulated; })
      .def_property_readonly("device_bytes", &cuda::DevicePackedWeights::device_bytes)
      .def("matmul", &device_matmul<float>, py::arg("x"))
      .def("matmul_int8", &device_matmul<int8_t>, py::arg("x"))
      .def("matmul_int16", &device_matmul<int16_t>, py::arg("x"))
      .def(
          "matmul_device",
          [](const cuda::DevicePackedWeights& w, uintptr_t x, int64_t batch, uintptr_t y, uintptr_t stream) {
            py::gil_scoped_release release;
            w.matmul_device(reinterpret_cast<const float*>(x), batch, reinterpret_cast<float*>(y),
                            reinterpret_cast<void*>(stream));
          },
          py::arg("x_ptr"), py::arg("batch"), py::arg("y_ptr"), py::arg("stream") = 0);
}
