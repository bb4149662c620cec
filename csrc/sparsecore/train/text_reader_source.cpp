#include "sparsecore/train/text_reader_source.h"

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"

namespace sparsecore::train {

TextReaderSource::TextReaderSource(std::unique_ptr<io::TextReader> reader, int64_t batch_size)
    : reader_(std::move(reader)), batch_size_(batch_size) {
  SC_CHECK_ARG(reader_ != nullptr, "TextReaderSource: reader must not be null");
  SC_CHECK_ARG(batch_size >= 1, "TextReaderSource: batch_size must be >= 1, got ", batch_size);
}

std::optional<SourceBatch> TextReaderSource::next_batch() {
  io::SampleBatch batch = reader_->next_batch(batch_size_);
  if (batch.num_samples == 0) return std::nullopt;
  return SourceBatch::of(std::move(batch));
}

std::string TextReaderSource::state() const {
  const io::ReaderPosition p = reader_->position();
  Json j = Json::object();
  j["file_index"] = p.file_index;
  j["byte_offset"] = p.byte_offset;
  j["line_number"] = p.line_number;
  return j.dump();
}

void TextReaderSource::load_state(const std::string& state) {
  const Json j = Json::parse(state);
  io::ReaderPosition p;
  p.file_index = j.at("file_index").as_int("file_index");
  p.byte_offset = j.at("byte_offset").as_int("byte_offset");
  p.line_number = j.at("line_number").as_int("line_number");
  reader_->seek(p);
}

}  // namespace sparsecore::train
