#include "sparsecore/core/checksum.h"

#include <cstdio>

#include "sparsecore/core/error.h"

namespace sparsecore {
namespace {

constexpr uint64_t kPrime = 0x9fb21c651e98df25ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// One 32-byte block into the four lanes.
inline void mix(uint64_t* lanes, const uint8_t* p) {
  for (int l = 0; l < 4; ++l) {
    uint64_t w;
    std::memcpy(&w, p + 8 * l, 8);
    lanes[l] = rotl(lanes[l] ^ (w * kPrime), 29) * 0xc2b2ae3d27d4eb4fULL;
  }
}

}  // namespace

void Checksum64::update(const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  total_ += bytes;
  if (pending_bytes_) {
    size_t take = 32 - pending_bytes_ < bytes ? 32 - pending_bytes_ : bytes;
    std::memcpy(pending_ + pending_bytes_, p, take);
    pending_bytes_ += take;
    p += take;
    bytes -= take;
    if (pending_bytes_ < 32) return;
    mix(lanes_, pending_);
    pending_bytes_ = 0;
  }
  // The lanes in locals: the bytes read through `p` may alias the members, which would keep
  // the lanes in memory (a store and a reload per block).
  uint64_t lanes[4] = {lanes_[0], lanes_[1], lanes_[2], lanes_[3]};
  while (bytes >= 32) {
    mix(lanes, p);
    p += 32;
    bytes -= 32;
  }
  std::memcpy(lanes_, lanes, sizeof(lanes));
  std::memcpy(pending_, p, bytes);
  pending_bytes_ = bytes;
}

uint64_t Checksum64::digest() const {
  uint64_t h = total_ * kPrime;
  for (int l = 0; l < 4; ++l) h = fmix64(h ^ rotl(lanes_[l], 7 * l + 1));
  for (size_t i = 0; i < pending_bytes_; ++i) h = fmix64(h ^ (uint64_t{pending_[i]} << (8 * (i % 8))) ^ i);
  return h;
}

std::string checksum_hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t parse_checksum_hex(const std::string& text) {
  SC_CHECK(text.size() == 16, CorruptData, "checksum '", text.substr(0, 32), "' is not 16 hex digits");
  uint64_t v = 0;
  for (char c : text) {
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    SC_CHECK(d >= 0, CorruptData, "checksum '", text, "' is not 16 hex digits");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

}  // namespace sparsecore
