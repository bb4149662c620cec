#include "sparsecore/io/zipf_sampler.h"

#include "sparsecore/core/error.h"

namespace sparsecore::io {

ZipfSampler::ZipfSampler(int64_t n, double s) : n_(n), s_(s) {
  SC_CHECK_ARG(n >= 1, "zipf: n must be >= 1, got ", n);
  SC_CHECK_ARG(std::isfinite(s) && s > 0.0, "zipf: exponent must be finite and > 0, got ", s);
  h_integral_x1_ = h_integral(1.5) - 1.0;
  h_integral_n_ = h_integral(static_cast<double>(n) + 0.5);
  squeeze_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
}

}  // namespace sparsecore::io
