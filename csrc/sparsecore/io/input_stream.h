// Sequential bytes of one sample file, decompressed when it is compressed.
//
// A file whose first bytes are the gzip magic (1f 8b) is inflated with zlib (several
// concatenated gzip members read as one stream, as `zcat` does); any other file is read as
// it is. Offsets are always offsets into the decompressed text, so reader positions mean
// the same for both. Opening at an offset inside a gzip file decompresses and drops what
// comes before it (a resumed reader pays one re-read of the file head). zstd files are
// recognised by their magic and refused with a message that says how to read them.
//
// Thread-safety: one thread at a time per stream; streams of one file are independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace sparsecore::io {

class InputStream {
 public:
  virtual ~InputStream() = default;

  // Opens `path` positioned at decompressed byte `offset`. Throws IoError naming the path
  // when it cannot be opened or read (a directory included), CorruptData for a damaged
  // compressed stream, InvalidArgument when `offset` lies beyond the end of the data.
  static std::unique_ptr<InputStream> open(const std::string& path, int64_t offset = 0);

  // Whether `path` holds gzip data (by its magic bytes; IoError when it cannot be read).
  static bool is_gzip(const std::string& path);

  // Reads up to `bytes` into `out`; fewer only at the end of the data (0 there). Throws
  // IoError or CorruptData naming the path.
  virtual size_t read(char* out, size_t bytes) = 0;

  // The decompressed offset of the next byte read() returns.
  virtual int64_t offset() const = 0;
};

}  // namespace sparsecore::io
