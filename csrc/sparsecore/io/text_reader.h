// Streaming reader of line-oriented sample files (Criteo TSV, libsvm, libffm, CSV).
//
// Files are read in blocks of `block_bytes` cut at line ends, so memory stays bounded by
// block_bytes x (prefetch_blocks + 1) plus the batches in flight, whatever the file sizes. A
// reader thread reads ahead and parses each block in pieces on a private pool of
// `num_threads` threads (not the compute pool, so parsing never stalls the engine); pieces
// queue in file order, so batches are identical for any thread count and block size.
//
// Position: (file index, byte offset, line number) of the first line not yet consumed.
// next_batch() moves it past the last sample returned (and past malformed or empty lines
// that come before the next sample of the same block); seek() to a saved position resumes
// with exactly the samples that followed it, none skipped, none read twice.
//
// Blank lines (empty or only spaces, after dropping a CRLF's '\r') are skipped silently.
// Malformed lines are skipped, counted and the first `max_reported_errors` kept with their
// file and 1-based line number; they are counted when the position passes them. Data that
// is mostly not what the format says is an error, not an empty run: next_batch() throws
// CorruptData naming the first malformed line (file:line and why) when the data ends with
// malformed lines and no sample, or when more than `max_bad_fraction` of the lines read are
// malformed (judged at the end, and mid-stream from kMinLinesToJudge lines on).
// max_bad_fraction = 1 turns both checks off.
//
// Files may be gzip-compressed (input_stream.h); offsets are then in the decompressed text.
// With options.end_offsets a file's data ends there: the lines of [seek position, end) are
// one worker's shard of it.
//
// Thread-safety: one consumer thread at a time calls the public methods.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/io/line_format.h"
#include "sparsecore/io/sample_batch.h"

namespace sparsecore::io {

struct ReaderPosition {
  int64_t file_index = 0;   // == number of files at the end of the data
  int64_t byte_offset = 0;  // of the next unread line in that file
  int64_t line_number = 0;  // lines of that file before it (the next line is line_number + 1)

  bool operator==(const ReaderPosition&) const = default;
};

struct MalformedLine {
  int64_t file_index;
  int64_t line_number;  // 1-based
  std::string reason;
};

struct TextReaderOptions {
  int64_t block_bytes = 4 << 20;
  int num_threads = 1;      // parsing threads; the reader thread is one of them
  int prefetch_blocks = 2;  // parsed blocks queued ahead of the consumer
  int64_t max_reported_errors = 100;
  double max_bad_fraction = 0.01;
  // Per file (empty: none), where its data ends: a byte offset (of the decompressed text)
  // that is the start of a line, or -1 for the end of the file. A shard of one file is the
  // lines between a seek() to its first line and this end (python/sparsecore/data/shard.py).
  std::vector<int64_t> end_offsets;
};

// Lines read before a mid-stream fraction of malformed lines is judged.
inline constexpr int64_t kMinLinesToJudge = 1000;

class TextReader {
 public:
  // Opens every file up front: an unreadable one throws IoError naming it before any data
  // is read. Throws InvalidArgument for an empty list or bad options.
  TextReader(std::vector<std::string> paths, std::shared_ptr<const LineFormat> format, TextReaderOptions options = {});
  ~TextReader();
  TextReader(const TextReader&) = delete;
  TextReader& operator=(const TextReader&) = delete;

  // The next batch of up to batch_size samples, in file order; fewer only at the end of
  // the data, and num_samples == 0 once everything was read. Rethrows an IoError of the
  // reader thread.
  SampleBatch next_batch(int64_t batch_size);

  ReaderPosition position() const { return position_; }
  // Continues from `p` (a position this reader's files produced). Throws InvalidArgument
  // when it lies outside the files.
  void seek(const ReaderPosition& p);

  const std::vector<std::string>& paths() const { return paths_; }
  SampleBatch empty_batch() const { return format_->empty_batch(); }
  int64_t samples_read() const { return samples_read_; }
  int64_t malformed_count() const { return malformed_count_; }
  const std::vector<MalformedLine>& malformed_lines() const { return malformed_lines_; }

  // One parsed slice of a file, as the reader thread hands it over.
  struct Piece {
    int64_t file_index = 0;
    SampleBatch samples;
    std::vector<int64_t> end_offset;    // per sample: file offset just past its line
    std::vector<int64_t> line_number;   // per sample: its 1-based line number
    std::vector<MalformedLine> errors;  // ascending line numbers
    ReaderPosition end;                 // the position once the whole piece is consumed
  };

 private:
  void start_thread();
  void stop_thread();
  void produce(ReaderPosition from);
  void consume_errors_through(int64_t line_number);
  void check_malformed(int64_t samples, bool at_end) const;

  std::vector<std::string> paths_;
  std::shared_ptr<const LineFormat> format_;
  TextReaderOptions options_;

  ReaderPosition position_;
  int64_t samples_read_ = 0;
  int64_t malformed_count_ = 0;
  std::vector<MalformedLine> malformed_lines_;
  MalformedLine first_malformed_{};

  // Consumer side: the piece being drained.
  std::unique_ptr<Piece> current_;
  int64_t cursor_ = 0;       // next sample of current_
  size_t error_cursor_ = 0;  // next unreported error of current_

  // Shared with the reader thread.
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::unique_ptr<Piece>> queue_;
  size_t queue_limit_ = 0;
  bool stop_ = false;
  bool finished_ = false;  // the reader thread reached the end of the last file
  std::exception_ptr error_;
};

}  // namespace sparsecore::io
