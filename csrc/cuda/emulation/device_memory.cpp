#include "device_memory.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>

#include "cuda_emulation.h"

namespace sparsecore::cuda_emulation {
namespace {

// Guard pages are recorded in a fixed table the fault handler can scan without locks.
constexpr int kMaxTracked = 1 << 14;
std::atomic<uintptr_t> g_tracked_guards[kMaxTracked];  // guard page addresses; 0: free entry
struct Allocation {
  size_t bytes;
  int device;
};
std::mutex g_sizes_mutex;
std::map<uintptr_t, Allocation> g_sizes;  // live allocations by start (not used by the handler)
thread_local int g_current_device = 0;
struct sigaction g_previous;
std::once_flag g_install_once;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

void write_all(const char* s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void format_hex(char* out, uintptr_t v) {
  const char* digits = "0123456789abcdef";
  char tmp[2 + 16 + 1];
  int i = 0;
  do {
    tmp[i++] = digits[v & 15];
    v >>= 4;
  } while (v);
  int k = 0;
  out[k++] = '0';
  out[k++] = 'x';
  while (i) out[k++] = tmp[--i];
  out[k] = 0;
}

void on_fault(int sig, siginfo_t* info, void* context) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const size_t page = page_size();
  for (int i = 0; i < kMaxTracked; ++i) {
    uintptr_t guard = g_tracked_guards[i].load(std::memory_order_relaxed);
    if (guard && addr >= guard && addr < guard + page) {
      char hex[24];
      format_hex(hex, addr);
      write_all("sparsecore CUDA emulator: out-of-bounds device memory access at ");
      write_all(hex);
      write_all(", past the end of a device allocation (illegal address)\n");
      _exit(134);
    }
  }
  // Not ours: hand over to whoever handled SIGSEGV before (or the default action).
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != SIG_DFL) {
    return g_previous.sa_handler(sig);
  }
  signal(sig, SIG_DFL);  // returning re-executes the access, which now takes the default action
}

void install_handler() {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_previous);
}

}  // namespace

int current_device() { return g_current_device; }

void set_current_device(int device) {
  if (device < 0 || device >= kEmulatedDevices)
    throw EmulationError("invalid device ordinal " + std::to_string(device) + " (the emulator has devices 0.." +
                         std::to_string(kEmulatedDevices - 1) + ")");
  g_current_device = device;
}

std::optional<int> device_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_sizes_mutex);
  auto it = g_sizes.upper_bound(address);
  if (it == g_sizes.begin()) return std::nullopt;
  --it;
  if (address >= it->first + it->second.bytes) return std::nullopt;
  return it->second.device;
}

void* device_allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  std::call_once(g_install_once, install_handler);
  const size_t page = page_size();
  const size_t data_pages = (bytes + page - 1) / page * page;
  void* base = mmap(nullptr, data_pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  char* guard = static_cast<char*>(base) + data_pages;
  if (mprotect(guard, page, PROT_NONE) != 0) {
    munmap(base, data_pages + page);
    throw std::bad_alloc();
  }
  for (int i = 0; i < kMaxTracked; ++i) {
    uintptr_t expected = 0;
    if (g_tracked_guards[i].compare_exchange_strong(expected, reinterpret_cast<uintptr_t>(guard))) {
      break;
    }
  }
  // Right-align (to 256 bytes) against the guard page.
  size_t offset = (data_pages - bytes) & ~size_t{255};
  void* p = static_cast<char*>(base) + offset;
  std::lock_guard<std::mutex> lock(g_sizes_mutex);
  g_sizes[reinterpret_cast<uintptr_t>(p)] = {bytes, g_current_device};
  return p;
}

void device_free(void* p) {
  if (!p) return;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_sizes_mutex);
    auto it = g_sizes.find(reinterpret_cast<uintptr_t>(p));
    if (it == g_sizes.end()) return;
    bytes = it->second.bytes;
    g_sizes.erase(it);
  }
  const size_t page = page_size();
  const size_t data_pages = (bytes + page - 1) / page * page;
  char* base = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~(page - 1));
  const uintptr_t guard = reinterpret_cast<uintptr_t>(base + data_pages);
  for (int i = 0; i < kMaxTracked; ++i) {
    uintptr_t expected = guard;
    if (g_tracked_guards[i].compare_exchange_strong(expected, 0)) break;
  }
  munmap(base, data_pages + page);
}

}  // namespace sparsecore::cuda_emulation
