#include "sparsecore/rpc/frame.h"

#include <algorithm>
#include <cstring>

namespace sparsecore::rpc {

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kBadFrame:
      return "bad frame";
    case Status::kFrameTooLarge:
      return "frame too large";
    case Status::kUnknownMethod:
      return "unknown method";
    case Status::kDeadlineExceeded:
      return "deadline exceeded";
    case Status::kAuthFailed:
      return "authentication failed";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kTypeMismatch:
      return "type mismatch";
    case Status::kNotFound:
      return "not found";
    case Status::kIoError:
      return "I/O error";
    case Status::kCorruptData:
      return "corrupt data";
    case Status::kInternal:
      return "internal error";
    case Status::kShuttingDown:
      return "server shutting down";
    case Status::kBusy:
      return "busy";
    case Status::kStepAborted:
      return "step aborted";
  }
  return "unknown status";
}

HeaderCheck check_header(const FrameHeader& h, uint64_t max_payload_bytes) {
  if (h.magic != kFrameMagic) return HeaderCheck::kBadMagic;
  if (h.version != kFrameVersion) return HeaderCheck::kBadVersion;
  if ((h.flags & ~uint8_t{kFlagResponse}) != 0) return HeaderCheck::kBadFlags;
  if (h.payload_bytes > max_payload_bytes) return HeaderCheck::kTooLarge;
  return HeaderCheck::kOk;
}

bool allowed_before_auth(const FrameHeader& h) {
  return (h.flags & kFlagResponse) == 0 && h.method == kMethodAuth && h.payload_bytes <= kMaxHandshakePayloadBytes;
}

const char* header_check_message(HeaderCheck c) {
  switch (c) {
    case HeaderCheck::kOk:
      return "ok";
    case HeaderCheck::kBadMagic:
      return "bad frame magic (not a sparsecore RPC peer?)";
    case HeaderCheck::kBadVersion:
      return "unsupported frame version";
    case HeaderCheck::kBadFlags:
      return "unknown frame flags";
    case HeaderCheck::kTooLarge:
      return "frame payload exceeds the size limit";
  }
  return "?";
}

std::byte* FrameReader::write_ptr(size_t min_room) {
  settle();
  if (start_ == end_) start_ = end_ = 0;
  if (buffer_.size() - end_ < min_room) {
    if (start_ > 0) {  // move the unread tail to the front before growing
      std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
      end_ -= start_;
      start_ = 0;
    }
    if (buffer_.size() - end_ < min_room) {
      // Exactly what was asked for: the owner accounts for capacity() (a doubling growth
      // policy would hold up to twice what a frame needs).
      PodVector<std::byte> grown;
      grown.reserve(end_ + min_room);
      grown.resize(end_ + min_room);
      if (end_ > 0) std::memcpy(grown.data(), buffer_.data(), end_);
      buffer_.swap(grown);
    }
  }
  return buffer_.data() + end_;
}

void FrameReader::discard(uint64_t bytes) {
  discard_ += bytes;
  settle();
}

void FrameReader::settle() {
  start_ += pending_consume_;
  pending_consume_ = 0;
  if (discard_ > 0) {
    size_t drop = static_cast<size_t>(std::min<uint64_t>(discard_, end_ - start_));
    start_ += drop;
    discard_ -= drop;
  }
  if (start_ == end_) start_ = end_ = 0;
}

bool FrameReader::release_if_idle(size_t keep) {
  settle();
  if (start_ != end_ || buffer_.size() <= keep) return false;
  PodVector<std::byte>().swap(buffer_);
  start_ = end_ = 0;
  return true;
}

FrameReader::Next FrameReader::next(FrameHeader* header, const std::byte** payload, HeaderCheck* error) {
  size_t available = 0;
  Next n = peek(header, &available, error);
  if (n != Next::kFrame) return n;
  size_t total = kFrameHeaderBytes + static_cast<size_t>(header->payload_bytes);
  if (available < header->payload_bytes) {
    // Make room for the whole frame now so the caller's next read can complete it.
    write_ptr(total - (end_ - start_));
    return Next::kNeedMore;
  }
  *payload = buffer_.data() + start_ + kFrameHeaderBytes;
  pending_consume_ = total;
  return Next::kFrame;
}

FrameReader::Next FrameReader::peek(FrameHeader* header, size_t* available, HeaderCheck* error) {
  settle();
  if (discard_ > 0) return Next::kNeedMore;
  size_t avail = end_ - start_;
  if (avail < kFrameHeaderBytes) return Next::kNeedMore;
  std::memcpy(header, buffer_.data() + start_, kFrameHeaderBytes);
  HeaderCheck c = check_header(*header, max_payload_);
  if (c != HeaderCheck::kOk) {
    *error = c;
    return Next::kError;
  }
  *available = std::min<size_t>(avail - kFrameHeaderBytes, static_cast<size_t>(header->payload_bytes));
  return Next::kFrame;
}

}  // namespace sparsecore::rpc
