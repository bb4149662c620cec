// SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104) for the connection handshake: the shared
// token never crosses the wire, only HMACs of fresh nonces.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sparsecore::rpc {

using Digest256 = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  Digest256 finish();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t pending_[64];
  size_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
};

Digest256 sha256(const void* data, size_t bytes);
// HMAC of the concatenation of `parts` under `key`.
Digest256 hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts);
// Comparison whose time does not depend on where the digests differ.
bool digests_equal(const Digest256& a, const Digest256& b);
// 16 bytes from the OS random source (getrandom).
std::array<uint8_t, 16> random_nonce();

}  // namespace sparsecore::rpc
