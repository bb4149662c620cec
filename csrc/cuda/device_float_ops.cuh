// The float arithmetic that shared SC_HOST_DEVICE generator code runs with inside kernels:
// the device's correctly rounded intrinsics, which nvcc never contracts into an FMA (a plain
// `a * b + c` in device code becomes one fma by default, which rounds once instead of twice).
// Passed as the `Ops` policy of sparsecore/table/initializer.h, so kernels compute the bits
// that init_detail::HostFloatOps computes on the CPU. Under the emulator the intrinsics are the
// host's IEEE float operations (emulation/cuda_emulation.h), so CI runs this very code path.
#pragma once

#include "device_runtime.cuh"
#include "sparsecore/table/initializer.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

struct DeviceFloatOps {
#if defined(__CUDA_ARCH__) || !defined(__CUDACC__)
  __host__ __device__ __forceinline__ static float add(float a, float b) { return __fadd_rn(a, b); }
  __host__ __device__ __forceinline__ static float sub(float a, float b) { return __fsub_rn(a, b); }
  __host__ __device__ __forceinline__ static float mul(float a, float b) { return __fmul_rn(a, b); }
  __host__ __device__ __forceinline__ static float div(float a, float b) { return __fdiv_rn(a, b); }
  __host__ __device__ __forceinline__ static float sqrt(float a) { return __fsqrt_rn(a); }
#else
  // nvcc's host pass of __host__ __device__ callers (kernels never run it): the same values.
  __host__ __device__ __forceinline__ static float add(float a, float b) {
    return init_detail::HostFloatOps::add(a, b);
  }
  __host__ __device__ __forceinline__ static float sub(float a, float b) {
    return init_detail::HostFloatOps::sub(a, b);
  }
  __host__ __device__ __forceinline__ static float mul(float a, float b) {
    return init_detail::HostFloatOps::mul(a, b);
  }
  __host__ __device__ __forceinline__ static float div(float a, float b) {
    return init_detail::HostFloatOps::div(a, b);
  }
  __host__ __device__ __forceinline__ static float sqrt(float a) { return init_detail::HostFloatOps::sqrt(a); }
#endif
};

}  // namespace sparsecore::cuda::SC_BACKEND_NS
