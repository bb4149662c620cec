// What the running CPU offers, for logs and tests. Dispatch itself happens through GCC's
// target_clones on the hot loops (SC_DISPATCH below): one clone per ISA level, picked at load
// time by feature test (x86-64-v3 = AVX2+FMA+F16C, v4 = AVX-512; "arch=<cpu>" clones would
// only match that exact CPU model).
#pragma once

#include <string>
#include <vector>

namespace sparsecore {

// e.g. {"sse4.2", "avx2", "fma", "avx512f"}
std::vector<std::string> cpu_feature_names();

}  // namespace sparsecore

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(SPARSECORE_NO_DISPATCH)
#define SC_DISPATCH __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define SC_DISPATCH
#endif
