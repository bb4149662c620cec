#include "sparsecore/io/text_reader.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/io/input_stream.h"

namespace sparsecore::io {

namespace {

// Smallest piece worth a task of its own.
constexpr int64_t kMinPieceBytes = 64 << 10;

// Parses the whole lines of [begin, end) (file offset `base`) into `piece`. Line numbers are
// relative to the piece (1-based) until the caller adds the lines before it; returns how
// many lines the piece holds.
int64_t parse_piece(const LineFormat& format, const char* begin, const char* end, int64_t base,
                    TextReader::Piece& piece) {
  piece.samples = format.empty_batch();
  std::string error;
  int64_t lines = 0;
  for (const char* p = begin; p < end;) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
    const char* line_end = nl ? nl : end;
    const char* next = nl ? nl + 1 : end;
    ++lines;
    std::string_view line(p, line_end - p);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const int64_t line_offset = base + (p - begin);
    p = next;
    if (line.find_first_not_of(' ') == std::string_view::npos || (line_offset == 0 && format.has_header())) continue;
    auto mark = piece.samples.mark();
    if (format.parse(line, piece.samples, error)) {
      piece.end_offset.push_back(base + (next - begin));
      piece.line_number.push_back(lines);
    } else {
      piece.samples.rollback(mark);
      piece.errors.push_back({piece.file_index, lines, std::move(error)});
      error.clear();
    }
  }
  return lines;
}

}  // namespace

TextReader::TextReader(std::vector<std::string> paths, std::shared_ptr<const LineFormat> format,
                       TextReaderOptions options)
    : paths_(std::move(paths)), format_(std::move(format)), options_(options) {
  SC_CHECK_ARG(!paths_.empty(), "reader: paths is empty");
  SC_CHECK_ARG(format_ != nullptr, "reader: format is null");
  SC_CHECK_ARG(options_.block_bytes >= 1, "reader: block_bytes must be >= 1, got ", options_.block_bytes);
  SC_CHECK_ARG(options_.num_threads >= 1, "reader: num_threads must be >= 1, got ", options_.num_threads);
  SC_CHECK_ARG(options_.prefetch_blocks >= 1, "reader: prefetch_blocks must be >= 1, got ", options_.prefetch_blocks);
  SC_CHECK_ARG(options_.max_reported_errors >= 0, "reader: max_reported_errors must be >= 0");
  SC_CHECK_ARG(options_.max_bad_fraction >= 0.0 && options_.max_bad_fraction <= 1.0,
               "reader: max_bad_fraction must be in [0, 1], got ", options_.max_bad_fraction);
  // Fail early, naming the file: opening reads its first bytes, which also rejects a
  // directory (EISDIR) and a compression this build cannot read.
  for (const auto& p : paths_) InputStream::open(p);
  SC_CHECK_ARG(options_.end_offsets.empty() || options_.end_offsets.size() == paths_.size(), "reader: end_offsets has ",
               options_.end_offsets.size(), " entries for ", paths_.size(), " files");
  for (int64_t e : options_.end_offsets) SC_CHECK_ARG(e >= -1, "reader: an end offset must be >= -1, got ", e);
  queue_limit_ = static_cast<size_t>(options_.prefetch_blocks) * options_.num_threads * 2;
}

TextReader::~TextReader() { stop_thread(); }

void TextReader::start_thread() {
  stop_ = false;
  finished_ = false;
  error_ = nullptr;
  thread_ = std::thread(&TextReader::produce, this, position_);
}

void TextReader::stop_thread() {
  {
    std::lock_guard<std::mutex> lk(mutex_);
    stop_ = true;
  }
  not_full_.notify_all();
  if (thread_.joinable()) thread_.join();
  queue_.clear();
  current_.reset();
}

void TextReader::produce(ReaderPosition pos) {
  try {
    ThreadPool pool(options_.num_threads);
    std::vector<char> buf;
    const auto num_files = static_cast<int64_t>(paths_.size());
    // Pieces go to the consumer in order; false once the reader is being stopped.
    auto hand_over = [&](std::vector<std::unique_ptr<Piece>>& pieces) {
      for (auto& piece : pieces) {
        std::unique_lock<std::mutex> lk(mutex_);
        not_full_.wait(lk, [&] { return stop_ || queue_.size() < queue_limit_; });
        if (stop_) return false;
        queue_.push_back(std::move(piece));
        not_empty_.notify_one();
      }
      pieces.clear();
      return true;
    };
    for (; pos.file_index < num_files; pos = {pos.file_index + 1, 0, 0}) {
      auto stream = InputStream::open(paths_[pos.file_index], pos.byte_offset);
      const int64_t end = options_.end_offsets.empty() || options_.end_offsets[pos.file_index] < 0
                              ? std::numeric_limits<int64_t>::max()
                              : options_.end_offsets[pos.file_index];
      int64_t read_to = pos.byte_offset;  // the stream's offset: what was read, carried lines included
      // The last block's pieces wait until the next read says whether the file goes on, so
      // that the final one can carry the position past the file.
      std::vector<std::unique_ptr<Piece>> pending;
      size_t carry = 0;  // bytes of an unfinished line at the front of buf
      auto capacity = static_cast<size_t>(options_.block_bytes);
      bool eof = false;
      while (!eof) {
        if (buf.size() < capacity) buf.resize(capacity);
        const size_t want = static_cast<size_t>(
            std::min<int64_t>(static_cast<int64_t>(capacity - carry), std::max<int64_t>(0, end - read_to)));
        const size_t got = want ? stream->read(buf.data() + carry, want) : 0;
        read_to += static_cast<int64_t>(got);
        eof = got < want || read_to >= end;
        const size_t have = carry + got;
        if (have == 0) break;
        size_t region = have;  // at the end of the file the rest is the last line
        if (!eof) {
          const void* nl = memrchr(buf.data(), '\n', have);
          if (nl == nullptr) {  // a line longer than the block: read on with a larger one
            capacity *= 2;
            carry = have;
            continue;
          }
          region = static_cast<size_t>(static_cast<const char*>(nl) - buf.data()) + 1;
        }
        if (!hand_over(pending)) return;

        // Pieces cut at line ends, parsed in parallel, queued in order.
        const int64_t size = static_cast<int64_t>(region);
        const int64_t target = std::max(kMinPieceBytes, size / (options_.num_threads * 2));
        std::vector<std::pair<int64_t, int64_t>> bounds;
        for (int64_t b = 0; b < size;) {
          int64_t e = std::min(b + target, size);
          if (e < size) {
            const void* nl = std::memchr(buf.data() + e - 1, '\n', static_cast<size_t>(size - e + 1));
            e = nl ? static_cast<const char*>(nl) - buf.data() + 1 : size;
          }
          bounds.emplace_back(b, e);
          b = e;
        }
        pending.resize(bounds.size());
        std::vector<int64_t> lines(bounds.size());
        pool.parallel_for(static_cast<int64_t>(bounds.size()), 1, [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) {
            pending[i] = std::make_unique<Piece>();
            pending[i]->file_index = pos.file_index;
            lines[i] = parse_piece(*format_, buf.data() + bounds[i].first, buf.data() + bounds[i].second,
                                   pos.byte_offset + bounds[i].first, *pending[i]);
          }
        });
        for (size_t i = 0; i < pending.size(); ++i) {
          Piece& piece = *pending[i];
          for (auto& l : piece.line_number) l += pos.line_number;
          for (auto& e : piece.errors) e.line_number += pos.line_number;
          pos.line_number += lines[i];
          piece.end = {pos.file_index, pos.byte_offset + bounds[i].second, pos.line_number};
        }
        pos.byte_offset += size;
        carry = have - region;
        std::memmove(buf.data(), buf.data() + region, carry);
      }
      if (pending.empty()) {  // an empty file (or one that ends on a block boundary)
        pending.push_back(std::make_unique<Piece>());
        pending.back()->file_index = pos.file_index;
        pending.back()->samples = format_->empty_batch();
      }
      pending.back()->end = {pos.file_index + 1, 0, 0};
      if (!hand_over(pending)) return;
    }
    std::lock_guard<std::mutex> lk(mutex_);
    finished_ = true;
  } catch (...) {
    std::lock_guard<std::mutex> lk(mutex_);
    error_ = std::current_exception();
    finished_ = true;
  }
  not_empty_.notify_all();
}

void TextReader::consume_errors_through(int64_t line_number) {
  auto& errors = current_->errors;
  for (; error_cursor_ < errors.size() && errors[error_cursor_].line_number <= line_number; ++error_cursor_) {
    if (malformed_count_ == 0) first_malformed_ = errors[error_cursor_];
    ++malformed_count_;
    if (static_cast<int64_t>(malformed_lines_.size()) < options_.max_reported_errors)
      malformed_lines_.push_back(errors[error_cursor_]);
  }
}

SampleBatch TextReader::next_batch(int64_t batch_size) {
  SC_CHECK_ARG(batch_size >= 1, "next_batch: batch_size must be >= 1, got ", batch_size);
  if (!thread_.joinable()) start_thread();
  SampleBatch out = format_->empty_batch();
  while (out.num_samples < batch_size) {
    if (!current_) {
      std::unique_lock<std::mutex> lk(mutex_);
      not_empty_.wait(lk, [&] { return !queue_.empty() || finished_; });
      if (queue_.empty()) {
        if (error_) std::rethrow_exception(error_);
        break;
      }
      current_ = std::move(queue_.front());
      queue_.pop_front();
      cursor_ = 0;
      error_cursor_ = 0;
      not_full_.notify_one();
    }
    Piece& p = *current_;
    const int64_t take = std::min(batch_size - out.num_samples, p.samples.num_samples - cursor_);
    if (take > 0) {
      out.append_samples(p.samples, cursor_, cursor_ + take);
      cursor_ += take;
      position_ = {p.file_index, p.end_offset[cursor_ - 1], p.line_number[cursor_ - 1]};
      consume_errors_through(p.line_number[cursor_ - 1]);
    }
    if (cursor_ == p.samples.num_samples) {
      consume_errors_through(std::numeric_limits<int64_t>::max());
      position_ = p.end;
      current_.reset();
    }
    check_malformed(samples_read_ + out.num_samples, false);
  }
  check_malformed(samples_read_ + out.num_samples, out.num_samples < batch_size);
  samples_read_ += out.num_samples;
  return out;
}

void TextReader::check_malformed(int64_t samples, bool at_end) const {
  if (malformed_count_ == 0 || options_.max_bad_fraction >= 1.0) return;
  const int64_t lines = samples + malformed_count_;
  const std::string first = detail::concat("first: ", paths_[first_malformed_.file_index], ":",
                                           first_malformed_.line_number, ": ", first_malformed_.reason);
  if (at_end && samples == 0)
    throw CorruptData(detail::concat("no line of the data parses (", malformed_count_, " malformed); ", first));
  // Mid-stream, the fraction is judged once enough lines were read for it to mean something.
  if ((at_end || lines >= kMinLinesToJudge) &&
      static_cast<double>(malformed_count_) > options_.max_bad_fraction * static_cast<double>(lines))
    throw CorruptData(detail::concat(malformed_count_, " of ", lines, " lines read are malformed, more than ",
                                     "max_bad_fraction ", options_.max_bad_fraction, " allows; ", first));
}

void TextReader::seek(const ReaderPosition& p) {
  const auto num_files = static_cast<int64_t>(paths_.size());
  SC_CHECK_ARG(p.file_index >= 0 && p.file_index <= num_files, "seek: file_index ", p.file_index, " outside [0, ",
               num_files, "]");
  SC_CHECK_ARG(p.byte_offset >= 0 && p.line_number >= 0, "seek: negative byte_offset or line_number");
  if (p.file_index == num_files) {
    SC_CHECK_ARG(p.byte_offset == 0 && p.line_number == 0, "seek: the end position has offset 0, line 0");
  } else {
    char before = '\n';
    if (p.byte_offset > 0) {
      auto stream = InputStream::open(paths_[p.file_index], p.byte_offset - 1);
      SC_CHECK_ARG(stream->read(&before, 1) == 1, "seek: byte_offset ", p.byte_offset, " beyond the end of ",
                   paths_[p.file_index]);
    }
    SC_CHECK_ARG(before == '\n', "seek: byte_offset ", p.byte_offset, " of ", paths_[p.file_index],
                 " is not the start of a line");
  }
  stop_thread();
  position_ = p;
}

}  // namespace sparsecore::io
