// TextReaderSource: a BatchSource over a streaming file reader (io/text_reader.h).
//
// Batches of up to batch_size samples in file order; the data ends when the reader returns
// an empty batch. State: the reader's position {"file_index", "byte_offset", "line_number"};
// load_state() seeks there (InvalidArgument when it lies outside the files).
//
// Ownership: the source owns its reader. Thread-safety: one thread at a time (BatchSource).
#pragma once

#include <cstdint>
#include <memory>

#include "sparsecore/io/text_reader.h"
#include "sparsecore/train/batch_source.h"

namespace sparsecore::train {

class TextReaderSource : public BatchSource {
 public:
  // Throws InvalidArgument for a null reader or batch_size < 1.
  TextReaderSource(std::unique_ptr<io::TextReader> reader, int64_t batch_size);

  std::optional<SourceBatch> next_batch() override;
  std::string state() const override;
  void load_state(const std::string& state) override;

  io::TextReader& reader() { return *reader_; }

 private:
  std::unique_ptr<io::TextReader> reader_;
  int64_t batch_size_;
};

}  // namespace sparsecore::train
