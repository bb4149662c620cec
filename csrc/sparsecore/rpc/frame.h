// The wire format of sparsecore's RPC layer (docs/architecture.md, "Files and frames").
//
// Every message is one frame: a fixed 32-byte little-endian header followed by
// `payload_bytes` of payload. Payloads are raw arrays laid end to end (the method defines
// the layout); the sender hands them to writev as they are, the receiver reads them into a
// buffer sized from the header. Requests and responses share the header: a response carries
// kFlagResponse, the request's id and method, and a Status (kOk or an error whose payload is
// the UTF-8 message). Many requests may be in flight on one connection; responses are
// matched by id, not by order.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

#include "sparsecore/core/pod_vector.h"

namespace sparsecore::rpc {

static_assert(std::endian::native == std::endian::little, "frames are little-endian on the wire");

inline constexpr uint32_t kFrameMagic = 0x50524353;  // "SCRP"
inline constexpr uint8_t kFrameVersion = 1;

enum FrameFlags : uint8_t {
  kFlagResponse = 1,  // a reply to the request with the same id
};

// Methods at and above kFirstReservedMethod belong to the transport itself.
inline constexpr uint16_t kFirstReservedMethod = 0xFF00;
inline constexpr uint16_t kMethodHello = 0xFF00;           // server -> client on accept: challenge
inline constexpr uint16_t kMethodAuth = 0xFF01;            // client -> server: answer, chosen reactor
inline constexpr uint16_t kMethodPing = 0xFF02;            // heartbeat; empty reply
inline constexpr uint16_t kMethodTransportStats = 0xFF03;  // the server's transport counters (JSON)

// Until a connection has authenticated, its only legal frame is one kMethodAuth request whose
// payload is an AuthPayload; a server closes a connection that announces more than this.
inline constexpr uint64_t kMaxHandshakePayloadBytes = 1024;

// Status of a response. Errors carry their message as the payload.
enum class Status : uint32_t {
  kOk = 0,
  kBadFrame = 1,       // bad magic, version or flags; the connection is closed after the reply
  kFrameTooLarge = 2,  // payload_bytes above the server's limit; connection closed
  kUnknownMethod = 3,
  kDeadlineExceeded = 4,  // the request waited past its timeout before it could run
  kAuthFailed = 5,
  kInvalidArgument = 6,  // handler threw InvalidArgument (ValueError in Python)
  kTypeMismatch = 7,
  kNotFound = 8,
  kIoError = 9,
  kCorruptData = 10,
  kInternal = 11,  // any other exception in the handler
  kShuttingDown = 12,
  kBusy = 13,         // the request cannot be served now (e.g. a shard is restoring)
  kStepAborted = 14,  // a synchronous step or barrier was abandoned: its workers changed
};

const char* status_name(Status s);

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint8_t version = kFrameVersion;
  uint8_t flags = 0;
  uint16_t method = 0;
  uint64_t request_id = 0;
  uint32_t timeout_ms = 0;  // requests: 0 = no deadline
  uint32_t status = 0;      // responses: a Status; requests: 0
  uint64_t payload_bytes = 0;
};
static_assert(sizeof(FrameHeader) == 32);
inline constexpr size_t kFrameHeaderBytes = sizeof(FrameHeader);

enum class HeaderCheck { kOk, kBadMagic, kBadVersion, kBadFlags, kTooLarge };

// Validates a received header against the receiver's payload limit. Pure function over the
// 32 bytes: the frame parser and its fuzz target share it.
HeaderCheck check_header(const FrameHeader& h, uint64_t max_payload_bytes);
const char* header_check_message(HeaderCheck c);
// Whether an unauthenticated peer may send this (checked) header: only a kMethodAuth request
// of at most kMaxHandshakePayloadBytes. Pure, shared by the server and the fuzz target.
bool allowed_before_auth(const FrameHeader& h);

// Handshake payloads. On accept the server sends kMethodHello (a response frame, id 0) with
// HelloPayload; the client answers kMethodAuth with AuthPayload, where
//   client_mac = HMAC-SHA256(token, "sparsecore-client" | server_nonce | client_nonce)
// and the server replies with AuthReplyPayload, where
//   server_mac = HMAC-SHA256(token, "sparsecore-server" | client_nonce | server_nonce),
// so each side proves it knows the token without sending it. Without a token the MACs are
// zeros and ignored. `reactor` picks the reactor (mod their number) that serves the connection.
struct HelloPayload {
  uint32_t num_reactors;
  uint32_t token_required;
  uint8_t server_nonce[16];
};
struct AuthPayload {
  uint32_t reactor;
  uint32_t reserved;
  uint8_t client_nonce[16];
  uint8_t client_mac[32];
};
struct AuthReplyPayload {
  uint8_t server_mac[32];
};
inline constexpr const char* kClientMacLabel = "sparsecore-client";
inline constexpr const char* kServerMacLabel = "sparsecore-server";

// Incremental frame splitter over a byte stream: feed bytes, take complete frames. Holds at
// most one frame plus one read's worth of bytes, so memory is bounded by the payload limit;
// the buffer grows only to what write_ptr and next ask for (capacity() says how much is
// held), never by more. Used by the client, the server's connections and the fuzz target.
class FrameReader {
 public:
  explicit FrameReader(uint64_t max_payload_bytes) : max_payload_(max_payload_bytes) {}

  // Where the next bytes go, with room for at least `min_room` bytes.
  std::byte* write_ptr(size_t min_room);
  size_t write_room() const { return buffer_.size() - end_; }
  void commit(size_t bytes) { end_ += bytes; }

  enum class Next { kFrame, kNeedMore, kError };
  // On kFrame, `header` and `payload` describe the frame, valid until the next call to any
  // method; on kError, `error` says what was wrong and the stream cannot continue.
  Next next(FrameHeader* header, const std::byte** payload, HeaderCheck* error);
  size_t buffered() const { return end_ - start_; }

  // Lower-level access for readers that place payloads themselves: a checked header at the
  // front (kFrame even when the payload is incomplete; `available` = payload bytes buffered),
  // then consume() what was taken.
  Next peek(FrameHeader* header, size_t* available, HeaderCheck* error);
  const std::byte* front() const { return buffer_.data() + start_; }
  void consume(size_t bytes) { start_ += bytes; }

  // Drops the next `bytes` bytes of the stream, those buffered now and those still to come
  // (a frame the receiver refuses but whose stream continues after it). Call after peek().
  void discard(uint64_t bytes);
  uint64_t discarding() const { return discard_; }

  // Bytes of memory the buffer holds.
  size_t capacity() const { return buffer_.size(); }
  // Frees the buffer when nothing is buffered and it holds more than `keep` bytes; returns
  // whether it did. Afterwards buffered() counts only bytes not yet taken.
  bool release_if_idle(size_t keep);

 private:
  void settle();  // applies pending_consume_ and discard_ to the buffered bytes

  uint64_t max_payload_;
  PodVector<std::byte> buffer_;  // bytes [start_, end_) are unread; size() == capacity()
  size_t start_ = 0;
  size_t end_ = 0;
  size_t pending_consume_ = 0;
  uint64_t discard_ = 0;
};

}  // namespace sparsecore::rpc
