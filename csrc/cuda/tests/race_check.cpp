// A toy kernel that reverses a block's values through shared memory. Built with
// ThreadSanitizer: without the barrier between the write and the read, threads read slots
// other threads write concurrently, and the emulator's real threads make that a real race.
#include <cstdio>
#include <cstring>
#include <vector>

#include "device_runtime.cuh"

namespace {

template <bool kBarrier>
__global__ void reverse_kernel(const int* in, int* out) {
  SC_DYNAMIC_SHARED(int, tile);
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  const int base = static_cast<int>(blockIdx.x) * n;
  tile[t] = in[base + t];
  if constexpr (kBarrier) __syncthreads();
  out[base + t] = tile[n - 1 - t];
}

}  // namespace

int main(int argc, char** argv) {
  const bool barrier = argc > 1 && std::strcmp(argv[1], "with-barrier") == 0;
  const int threads = 64, blocks = 4;
  std::vector<int> in(threads * blocks), out(threads * blocks, 0);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i);
  if (barrier) {
    SC_LAUNCH(dim3(blocks), dim3(threads), threads * sizeof(int), nullptr, reverse_kernel<true>)(in.data(), out.data());
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < threads; ++t)
        if (out[b * threads + t] != in[b * threads + threads - 1 - t]) {
          std::printf("wrong result at %d\n", b * threads + t);
          return 1;
        }
  } else {
    SC_LAUNCH(dim3(blocks), dim3(threads), threads * sizeof(int), nullptr, reverse_kernel<false>)
    (in.data(), out.data());
  }
  std::printf("race-check done\n");
  return 0;
}
