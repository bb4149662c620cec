// What the running CPU offers, for logs and tests. Dispatch itself happens through GCC's
// target_clones on the hot loops (SC_DISPATCH below): one clone per ISA, picked at load time.
#pragma once

#include <string>
#include <vector>

namespace sparsecore {

// e.g. {"sse4.2", "avx2", "fma", "avx512f"}
std::vector<std::string> cpu_feature_names();

}  // namespace sparsecore

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && !defined(SPARSECORE_NO_DISPATCH)
#define SC_DISPATCH __attribute__((target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define SC_DISPATCH
#endif
