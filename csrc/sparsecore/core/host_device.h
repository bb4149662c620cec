// SC_HOST_DEVICE marks functions shared by the CPU engine and CUDA kernels (update rules,
// hashing, initializers). Under nvcc it expands to __host__ __device__; under the CPU
// emulation layer and plain C++ builds it expands to nothing.
#pragma once

#if defined(__CUDACC__)
#define SC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SC_HOST_DEVICE inline
#endif
