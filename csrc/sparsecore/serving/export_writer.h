// StagedPartWriter: writes one export part (export_format.h) from rows that arrive in pieces,
// so that an exporter can have the blocks of the rows it has collected written (encoded,
// checksummed, written with one positioned write each, writeback started at once) while it
// collects the next rows: the disk then works during the collection instead of after it.
//
//   StagedPartWriter w(header, stream_dir);           // a hidden staging directory
//   size_t t = w.add_table(config, seed, &deleted);   // creates the table's files
//   w.append(t, span); ...                            // rows, in file order
//   size_t n = w.claim_ready();                       // whole blocks appended, not yet written
//   parallel_for over i < n: w.write_claimed(i)       // beside other work of the same region
//   w.finish_tables();                                // the rest; files synced and closed
//   w.commit();                                       // manifest, then the part switched in
//
// What add_table and append are given (configs, deleted keys, rows) must stay unchanged until
// commit returns.
// Thread-safety: write_claimed may run on many threads at once (each i once); every other
// call from one thread, never while a write_claimed runs, and every claimed block must be
// written before the next claim_ready, finish_tables or commit. Destroyed uncommitted (an
// exception), the writer removes its staging directory: nothing of the part appears.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/serving/export_format.h"

namespace sparsecore::serving {

class StagedPartWriter {
 public:
  StagedPartWriter(const ExportHeader& header, const std::string& stream_dir);
  ~StagedPartWriter();
  StagedPartWriter(const StagedPartWriter&) = delete;
  StagedPartWriter& operator=(const StagedPartWriter&) = delete;

  // The next table of the part (its index: the tables added before); `deleted` ascending, or
  // nullptr for none.
  size_t add_table(const TableConfig& config, uint64_t seed, const std::vector<int64_t>* deleted);
  // Rows of table `table` after those appended before.
  void append(size_t table, const ExportRowSpan& span);
  size_t claim_ready();
  void write_claimed(size_t i);
  // Writes every block left of the tables added so far, then syncs and closes their files
  // (a part of many tables is written a group at a time: few files are open at once).
  void finish_tables();
  // Returns the part's directory.
  std::string commit();

 private:
  struct OutFile;
  struct Table;
  void claim(uint64_t (*available)(const OutFile&));

  ExportHeader header_;
  std::string export_dir_, target_, staging_;
  std::vector<std::unique_ptr<OutFile>> files_;
  std::vector<Table> tables_;
  size_t open_from_ = 0;  // files_[open_from_...] are open
  std::vector<std::pair<OutFile*, uint64_t>> claimed_;
  bool committed_ = false;
};

}  // namespace sparsecore::serving
