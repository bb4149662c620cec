// Emulated device memory: host pages laid out so that the end of every allocation touches
// an inaccessible guard page. A kernel that indexes past the end of a buffer faults on the
// guard page, and the emulator's fault handler stops the process with a message naming the
// allocation (the emulated counterpart of an illegal-address error; memcheck's job on a GPU).
#pragma once

#include <cstddef>
#include <optional>

namespace sparsecore::cuda_emulation {

// Emulated devices: ordinals 0 .. kEmulatedDevices - 1. Each host thread has a current
// device (0 at first), as with cudaSetDevice; allocations belong to the current device.
inline constexpr int kEmulatedDevices = 8;
int current_device();
void set_current_device(int device);  // EmulationError outside [0, kEmulatedDevices)

// Returns memory of the current device aligned to 256 bytes (as cudaMalloc), or nullptr for
// 0 bytes. Throws std::bad_alloc when the pages cannot be mapped. Detection is exact when
// `bytes` is a multiple of 256; otherwise up to 255 bytes of alignment slack precede the guard page.
void* device_allocate(size_t bytes);
void device_free(void* p);
// The device of the emulated allocation holding p (nullopt: not emulated device memory).
std::optional<int> device_of(const void* p);

}  // namespace sparsecore::cuda_emulation
