#include "sparsecore/io/input_stream.h"

#include <algorithm>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"

#ifdef SPARSECORE_HAVE_ZLIB
#include <zlib.h>
#endif

namespace sparsecore::io {

namespace {

constexpr unsigned char kGzipMagic[2] = {0x1f, 0x8b};
constexpr unsigned char kZstdMagic[4] = {0x28, 0xb5, 0x2f, 0xfd};

class PlainStream final : public InputStream {
 public:
  PlainStream(File file, int64_t offset) : file_(std::move(file)), offset_(offset) {}

  size_t read(char* out, size_t bytes) override {
    const size_t got = file_.read_at(out, bytes, static_cast<uint64_t>(offset_));
    offset_ += static_cast<int64_t>(got);
    return got;
  }
  int64_t offset() const override { return offset_; }

 private:
  File file_;
  int64_t offset_;
};

#ifdef SPARSECORE_HAVE_ZLIB
class GzipStream final : public InputStream {
 public:
  explicit GzipStream(File file) : file_(std::move(file)), in_(1 << 18) {
    // 15 + 16: a gzip wrapper (not raw deflate or zlib).
    SC_CHECK(inflateInit2(&z_, 15 + 16) == Z_OK, IoError, "gzip: cannot initialise zlib for '", file_.path(), "'");
  }
  ~GzipStream() override { inflateEnd(&z_); }

  size_t read(char* out, size_t bytes) override {
    size_t done = 0;
    while (done < bytes && !end_) {
      if (z_.avail_in == 0) {
        const size_t got = file_.read_at(in_.data(), in_.size(), file_offset_);
        file_offset_ += got;
        if (got == 0) {
          SC_CHECK(!inside_member_, CorruptData, "gzip: '", file_.path(), "' ends in the middle of its data");
          end_ = true;
          break;
        }
        z_.next_in = reinterpret_cast<Bytef*>(in_.data());
        z_.avail_in = static_cast<uInt>(got);
      }
      if (!inside_member_) {
        // Between members: trailing zero padding ends the data; anything else starts a new member.
        if (z_.next_in[0] == 0) {
          skip_padding();
          continue;
        }
        inside_member_ = true;
      }
      z_.next_out = reinterpret_cast<Bytef*>(out + done);
      z_.avail_out = static_cast<uInt>(std::min<size_t>(bytes - done, 1u << 30));
      const size_t before = z_.avail_out;
      const int rc = inflate(&z_, Z_NO_FLUSH);
      done += before - z_.avail_out;
      if (rc == Z_STREAM_END) {
        inside_member_ = false;
        inflateReset(&z_);
      } else if (rc != Z_OK && !(rc == Z_BUF_ERROR && z_.avail_in == 0)) {
        throw CorruptData(detail::concat("gzip: '", file_.path(), "' is damaged near compressed byte ",
                                         file_offset_ - z_.avail_in, ": ", z_.msg ? z_.msg : "inflate failed"));
      }
    }
    offset_ += static_cast<int64_t>(done);
    return done;
  }
  int64_t offset() const override { return offset_; }

 private:
  void skip_padding() {
    while (z_.avail_in > 0 && z_.next_in[0] == 0) {
      ++z_.next_in;
      --z_.avail_in;
    }
  }

  File file_;
  std::vector<char> in_;
  uint64_t file_offset_ = 0;
  int64_t offset_ = 0;
  z_stream z_{};
  bool inside_member_ = false;
  bool end_ = false;
};
#endif

// Up to 4 leading bytes of the file (fewer for a shorter file).
size_t head(const File& f, unsigned char (&bytes)[4]) { return f.read_at(bytes, sizeof bytes, 0); }

}  // namespace

bool InputStream::is_gzip(const std::string& path) {
  File f = File::open_read(path);
  unsigned char bytes[4] = {};
  return head(f, bytes) >= 2 && bytes[0] == kGzipMagic[0] && bytes[1] == kGzipMagic[1];
}

std::unique_ptr<InputStream> InputStream::open(const std::string& path, int64_t offset) {
  SC_CHECK_ARG(offset >= 0, "input: negative offset ", offset, " for '", path, "'");
  File f = File::open_read(path);
  unsigned char bytes[4] = {};
  const size_t n = head(f, bytes);  // also turns a directory into IoError (EISDIR)
  if (n == 4 && std::equal(bytes, bytes + 4, kZstdMagic))
    throw IoError(detail::concat("'", path, "' is zstd-compressed, which this build does not read; ",
                                 "decompress it first (zstd -d) or stream it: zstd -dc FILE > FILE.txt"));
  if (n >= 2 && bytes[0] == kGzipMagic[0] && bytes[1] == kGzipMagic[1]) {
#ifdef SPARSECORE_HAVE_ZLIB
    auto stream = std::make_unique<GzipStream>(std::move(f));
    std::vector<char> skip(1 << 16);
    for (int64_t left = offset; left > 0;) {
      const size_t got = stream->read(skip.data(), static_cast<size_t>(std::min<int64_t>(left, skip.size())));
      SC_CHECK_ARG(got > 0, "input: offset ", offset, " lies beyond the end of '", path, "' (", stream->offset(),
                   " bytes decompressed)");
      left -= static_cast<int64_t>(got);
    }
    return stream;
#else
    throw IoError(
        detail::concat("'", path, "' is gzip-compressed and this build has no zlib; ", "decompress it first (gunzip)"));
#endif
  }
  const auto size = static_cast<int64_t>(f.size());
  SC_CHECK_ARG(offset <= size, "input: offset ", offset, " lies beyond the end of '", path, "' (", size, " bytes)");
  return std::make_unique<PlainStream>(std::move(f), offset);
}

}  // namespace sparsecore::io
