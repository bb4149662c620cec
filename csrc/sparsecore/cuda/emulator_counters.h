// What the CUDA emulator counts: the emulated backend as a performance witness.
//
// The emulated kernels run on the CPU, so their times say nothing about a GPU; what they ask
// of a device does: kernel launches (and blocks) per kernel, host synchronisations
// (device-wide syncs and blocking device-to-host copies, each a round trip that stalls the
// host), and copies with their bytes by direction. Counters are process-wide (every emulated
// collection and packed weight together) and thread-safe; tests reset them around the work
// they measure. The emulator also runs the blocks of each launch in a seeded random order, so
// no kernel can depend on block order; the seed comes from SPARSECORE_EMULATOR_BLOCK_SEED
// (default 1), and no seed means grid order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace sparsecore::cuda {

struct EmulatorKernelCount {
  uint64_t launches = 0;
  uint64_t blocks = 0;
};

struct EmulatorCounters {
  uint64_t launches = 0;
  uint64_t host_syncs = 0;  // synchronisations, and device-to-host copies (the host waits for them)
  uint64_t h2d_copies = 0, h2d_bytes = 0;
  uint64_t d2h_copies = 0, d2h_bytes = 0;
  uint64_t d2d_copies = 0, d2d_bytes = 0;
  uint64_t memsets = 0, memset_bytes = 0;
  std::map<std::string, EmulatorKernelCount> kernels;  // by kernel, as written at its launch
};

EmulatorCounters emulator_counters();
void reset_emulator_counters();
// Block order of later launches: a seeded random permutation per launch, or grid order (nullopt).
void set_emulator_block_seed(std::optional<uint64_t> seed);
std::optional<uint64_t> emulator_block_seed();

// Deferred side streams, to test stream ordering without a device: work queued on one (a
// copy) runs only when a consumer orders itself after it (an event wait) or the stream is
// synchronised, as a producer's writes land on a real side stream. Handles are cudaStream_t
// values as integers.
uintptr_t emulator_side_stream();
void emulator_enqueue_copy(uintptr_t stream, void* dst, const void* src, size_t bytes);
uint64_t emulator_pending_work(uintptr_t stream);
void emulator_release_stream(uintptr_t stream);

}  // namespace sparsecore::cuda
