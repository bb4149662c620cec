// checksum64: a fast non-cryptographic 64-bit checksum of a byte range (four independent
// multiply-rotate lanes over 8-byte words, then fmix64). Detects truncation and bit rot in
// checkpoint files; not an integrity guarantee against an adversary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "sparsecore/core/hash.h"

namespace sparsecore {

class Checksum64 {
 public:
  void update(const void* data, size_t bytes);
  uint64_t digest() const;

 private:
  uint64_t lanes_[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL};
  uint8_t pending_[32];
  size_t pending_bytes_ = 0;
  uint64_t total_ = 0;
};

inline uint64_t checksum64(const void* data, size_t bytes) {
  Checksum64 c;
  c.update(data, bytes);
  return c.digest();
}

// A checksum as manifests store it: exactly 16 lowercase hex digits. parse_checksum_hex
// refuses anything else with CorruptData (a damaged manifest).
std::string checksum_hex(uint64_t v);
uint64_t parse_checksum_hex(const std::string& text);

}  // namespace sparsecore
