#include "sparsecore/core/cpu_features.h"

namespace sparsecore {

std::vector<std::string> cpu_feature_names() {
  std::vector<std::string> out;
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) out.emplace_back("sse4.2");
  if (__builtin_cpu_supports("avx")) out.emplace_back("avx");
  if (__builtin_cpu_supports("avx2")) out.emplace_back("avx2");
  if (__builtin_cpu_supports("fma")) out.emplace_back("fma");
  if (__builtin_cpu_supports("avx512f")) out.emplace_back("avx512f");
#endif
  return out;
}

}  // namespace sparsecore
