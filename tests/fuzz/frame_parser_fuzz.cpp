// Fuzz target for the RPC frame parser (FrameReader), bounded in time.
//
// Streams are built from valid frames, then mutated (bit flips, truncation, spliced garbage,
// huge lengths) and fed in random chunk sizes. Invariants: no crash; every frame returned
// passes check_header and lies inside the buffer; buffered bytes stay below
// limit + header + chunk; an unmutated stream yields exactly its frames, less those the
// receiver discarded (refused frames whose stream goes on, as a server over its budget does).
// In handshake mode the receiver is an unauthenticated server connection: it stops at the
// first frame allowed_before_auth refuses, reads at most 4 KiB at a time, and its buffer
// never holds more than one read plus one handshake frame, whatever the stream announces.
// Usage: sparsecore_fuzz_frame_parser [--seconds S] [--seed N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include "fuzz_args.h"

#include "sparsecore/rpc/frame.h"

using namespace sparsecore::rpc;

namespace {

constexpr uint64_t kLimit = 1 << 16;

std::vector<std::byte> make_stream(std::mt19937_64& rng, std::vector<std::pair<uint64_t, uint64_t>>* frames) {
  std::vector<std::byte> s;
  int n = static_cast<int>(rng() % 8);
  for (int i = 0; i < n; ++i) {
    FrameHeader h;
    h.method = static_cast<uint16_t>(rng());
    h.request_id = rng();
    h.flags = rng() % 2;
    h.payload_bytes = rng() % 3 == 0 ? rng() % 70000 : rng() % 64;
    if (rng() % 4 == 0) h.method = kMethodAuth;
    if (h.payload_bytes > kLimit) h.payload_bytes = kLimit;
    frames->push_back({h.request_id, h.payload_bytes});
    auto* p = reinterpret_cast<const std::byte*>(&h);
    s.insert(s.end(), p, p + sizeof(h));
    for (uint64_t b = 0; b < h.payload_bytes; ++b) s.push_back(static_cast<std::byte>(b * 31 + i));
  }
  return s;
}

void mutate(std::mt19937_64& rng, std::vector<std::byte>& s) {
  int kind = static_cast<int>(rng() % 5);
  if (s.empty()) kind = 2;
  switch (kind) {
    case 0:  // bit flips
      for (int i = 0; i < 1 + static_cast<int>(rng() % 8); ++i)
        s[rng() % s.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
      break;
    case 1:  // truncate
      s.resize(rng() % s.size());
      break;
    case 2: {  // splice garbage
      size_t at = s.empty() ? 0 : rng() % s.size();
      std::vector<std::byte> junk(rng() % 100);
      for (auto& b : junk) b = static_cast<std::byte>(rng());
      s.insert(s.begin() + static_cast<long>(at), junk.begin(), junk.end());
      break;
    }
    case 3: {  // a header with a huge length
      if (s.size() >= sizeof(FrameHeader)) {
        uint64_t huge = rng();
        std::memcpy(s.data() + offsetof(FrameHeader, payload_bytes), &huge, 8);
      }
      break;
    }
    default: {  // overwrite a header field with extreme values
      if (s.size() >= sizeof(FrameHeader)) s[rng() % sizeof(FrameHeader)] = static_cast<std::byte>(0xff);
    }
  }
}

constexpr size_t kHandshakeChunk = 4096;

// Returns false when an invariant broke.
bool run_one(std::mt19937_64& rng, bool mutated, bool handshake) {
  std::vector<std::pair<uint64_t, uint64_t>> frames;
  std::vector<std::byte> s = make_stream(rng, &frames);
  if (mutated) mutate(rng, s);
  FrameReader reader(kLimit);
  size_t pos = 0;
  std::vector<std::pair<uint64_t, uint64_t>> got, expected;
  for (auto& f : frames)
    if (f.first % 8 != 0) expected.push_back(f);
  bool failed = false;
  while (!failed) {
    FrameHeader h;
    const std::byte* payload = nullptr;
    HeaderCheck err;
    size_t available = 0;
    auto next = reader.peek(&h, &available, &err);
    if (next == FrameReader::Next::kFrame) {
      if (handshake && !allowed_before_auth(h)) return true;  // the server closes here
      if (!handshake && h.request_id % 8 == 0) {              // refused: skipped, the stream goes on
        reader.discard(kFrameHeaderBytes + h.payload_bytes);
        continue;
      }
      next = reader.next(&h, &payload, &err);
    }
    if (next == FrameReader::Next::kError) {
      if (err == HeaderCheck::kOk) return false;
      failed = true;
      break;
    }
    if (next == FrameReader::Next::kFrame) {
      if (check_header(h, kLimit) != HeaderCheck::kOk) return false;
      for (uint64_t b = 0; b < h.payload_bytes; ++b) (void)std::to_integer<int>(payload[b]);  // readable
      got.push_back({h.request_id, h.payload_bytes});
      continue;
    }
    if (pos == s.size()) break;
    size_t chunk = 1 + rng() % (handshake ? kHandshakeChunk : 9000);
    chunk = std::min(chunk, s.size() - pos);
    std::byte* dst = reader.write_ptr(chunk);
    std::memcpy(dst, s.data() + pos, chunk);
    reader.commit(chunk);
    pos += chunk;
    if (reader.buffered() > kLimit + sizeof(FrameHeader) + 9000) return false;
    if (handshake && reader.capacity() > kHandshakeChunk + sizeof(FrameHeader) + kMaxHandshakePayloadBytes)
      return false;
  }
  if (!mutated && !handshake && (failed || got != expected)) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const FuzzArgs args = parse_fuzz_args(argc, argv);
  const double seconds = args.seconds;
  uint64_t seed = args.seed;
  std::mt19937_64 rng(seed);
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t cases = 0;
  while (std::chrono::steady_clock::now() < end && cases < 50'000'000) {
    for (int i = 0; i < 64; ++i, ++cases) {
      if (!run_one(rng, i % 4 != 0, i % 3 == 0)) {
        std::fprintf(stderr, "frame parser invariant broken (seed %llu, case %llu)\n",
                     static_cast<unsigned long long>(seed), static_cast<unsigned long long>(cases));
        return 1;
      }
    }
  }
  std::printf("fuzz_frame_parser: %llu streams, seed %llu, no failure\n", static_cast<unsigned long long>(cases),
              static_cast<unsigned long long>(seed));
  return 0;
}
