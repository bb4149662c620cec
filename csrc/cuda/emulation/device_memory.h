// Emulated device memory: host pages laid out so that the end of every allocation touches
// an inaccessible guard page. A kernel that indexes past the end of a buffer faults on the
// guard page, and the emulator's fault handler stops the process with a message naming the
// allocation (the emulated counterpart of an illegal-address error; memcheck's job on a GPU).
#pragma once

#include <cstddef>

namespace sparsecore::cuda_emulation {

// Returns memory aligned to 256 bytes (as cudaMalloc), or nullptr for 0 bytes. Throws
// std::bad_alloc when the pages cannot be mapped. Detection is exact when `bytes` is a
// multiple of 256; otherwise up to 255 bytes of alignment slack precede the guard page.
void* device_allocate(size_t bytes);
void device_free(void* p);

}  // namespace sparsecore::cuda_emulation
