#include "sparsecore/serving/export_writer.h"

#include <algorithm>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/serving/export_format_internal.h"

namespace sparsecore::serving {

using detail::join_path;
using detail::kBlockBytes;

// One file of a part being written: its rows come from spans of `unit_in` bytes each in
// memory and take `unit_out` bytes each in the file; a coded file (fp16, int8, int4 rows)
// encodes them, every other one is the spans' bytes as they are.
struct StagedPartWriter::OutFile {
  std::string name;
  File file;
  std::vector<const uint8_t*> data;  // per span
  std::vector<uint64_t> first_row;   // per span, ascending
  uint64_t rows = 0;
  uint64_t unit_in = 0, unit_out = 0;
  bool coded = false;
  ExportDtype dtype = ExportDtype::kFloat32;
  int64_t dim = 0;
  uint64_t next_block = 0;          // blocks [0, next_block) are claimed
  std::vector<uint64_t> checksums;  // per block

  OutFile(std::string n, File f) : name(std::move(n)), file(std::move(f)) {}
  void add(const void* p, uint64_t n) {
    if (n == 0) return;
    data.push_back(static_cast<const uint8_t*>(p));
    first_row.push_back(rows);
    rows += n;
  }
  uint64_t bytes() const { return rows * unit_out; }
  uint64_t span_end(size_t s) const { return s + 1 < first_row.size() ? first_row[s + 1] : rows; }
  // The span holding row r (< rows).
  size_t span_of(uint64_t r) const {
    return static_cast<size_t>(std::upper_bound(first_row.begin(), first_row.end(), r) - first_row.begin()) - 1;
  }

  // Encodes (coded) or gathers block b, checksums it, writes it at its offset and starts its
  // writeback. Runs on any thread; each block is written by exactly one task.
  void write_block(uint64_t b) {
    const uint64_t b0 = b * kBlockBytes, b1 = std::min(bytes(), b0 + kBlockBytes);
    Checksum64 sum;
    if (coded) {
      // The rows the block touches, encoded whole (a row cut by the block's edge is encoded
      // by both blocks it spans), then the block's bytes of them.
      const uint64_t r0 = b0 / unit_out, r1 = (b1 + unit_out - 1) / unit_out;
      thread_local PodVector<uint8_t> scratch;
      scratch.resize((r1 - r0) * unit_out);
      for (uint64_t r = r0; r < r1;) {
        const size_t s = span_of(r);
        const uint64_t end = std::min(r1, span_end(s));
        quant::quantize_rows(reinterpret_cast<const float*>(data[s] + (r - first_row[s]) * unit_in),
                             static_cast<int64_t>(end - r), dim, detail::row_format(dtype),
                             scratch.data() + (r - r0) * unit_out);
        r = end;
      }
      const uint8_t* p = scratch.data() + (b0 - r0 * unit_out);
      sum.update(p, b1 - b0);
      file.write_at(p, b1 - b0, b0);
    } else {
      // Straight from the spans: one write per span the block crosses.
      for (uint64_t at = b0; at < b1;) {
        const size_t s = span_of(at / unit_out);
        const uint64_t end = std::min(b1, span_end(s) * unit_out);
        const uint8_t* p = data[s] + (at - first_row[s] * unit_out);
        sum.update(p, end - at);
        file.write_at(p, end - at, at);
        at = end;
      }
    }
    checksums[b] = sum.digest();
    file.start_writeback(b0, b1 - b0);
  }

  Json json() const {
    Json j = Json::object();
    j["name"] = name;
    j["bytes"] = static_cast<int64_t>(bytes());
    Json sums = Json::array();
    for (uint64_t c : checksums) sums.push_back(checksum_hex(c));
    j["checksums"] = std::move(sums);
    return j;
  }
};

struct StagedPartWriter::Table {
  const TableConfig* config = nullptr;
  uint64_t seed = 0;
  size_t keys = 0, rows = 0;  // indices into files_
  bool deleted = false;       // files_[rows + 1] is its deleted file
};

StagedPartWriter::StagedPartWriter(const ExportHeader& header, const std::string& stream_dir) : header_(header) {
  SC_CHECK_ARG(header.version >= 0, "export version must be >= 0, got ", header.version);
  SC_CHECK_ARG(!header.delta || (header.since >= 0 && header.since <= header.version), "a delta since version ",
               header.since, " cannot lead to version ", header.version);
  SC_CHECK_ARG(header.num_parts >= 1 && header.num_parts <= detail::kMaxParts && header.part >= 0 &&
                   header.part < header.num_parts,
               "export part ", header.part, " of ", header.num_parts, " is out of range");
  export_dir_ = join_path(stream_dir, export_name({header.delta, header.since, header.version}));
  make_directories(export_dir_);
  sync_directory(stream_dir);
  target_ = join_path(export_dir_, part_name(header.part, header.num_parts));
  staging_ = join_path(export_dir_, "." + part_name(header.part, header.num_parts) + "." + random_suffix());
  make_directory(staging_);
}

StagedPartWriter::~StagedPartWriter() {
  if (committed_) return;
  files_.clear();  // descriptors closed before their directory goes
  try {
    remove_tree(staging_);
  } catch (...) {  // a destructor must not throw; the hidden directory is ignored by readers
  }
}

size_t StagedPartWriter::add_table(const TableConfig& config, uint64_t seed, const std::vector<int64_t>* deleted) {
  SC_CHECK_ARG(config.dim > 0, "export of table '", config.name, "' with dim ", config.dim);
  const size_t index = tables_.size();
  const std::string prefix = "table-" + std::to_string(index);
  auto open = [&](const std::string& suffix) -> OutFile& {
    files_.push_back(std::make_unique<OutFile>(prefix + suffix, File::create(join_path(staging_, prefix + suffix))));
    return *files_.back();
  };
  Table t;
  t.config = &config;
  t.seed = seed;
  t.keys = files_.size();
  OutFile& keys = open(".keys");
  keys.unit_in = keys.unit_out = sizeof(int64_t);
  t.rows = files_.size();
  OutFile& rows = open(".rows");
  const uint64_t dim = static_cast<uint64_t>(config.dim);
  rows.unit_in = dim * sizeof(float);
  rows.unit_out = export_row_bytes(header_.dtype, dim);
  rows.coded = header_.dtype != ExportDtype::kFloat32;
  rows.dtype = header_.dtype;
  rows.dim = config.dim;
  if (deleted && !deleted->empty()) {
    t.deleted = true;
    OutFile& d = open(".deleted");
    d.unit_in = d.unit_out = sizeof(int64_t);
    d.add(deleted->data(), deleted->size());
  }
  tables_.push_back(t);
  return index;
}

void StagedPartWriter::append(size_t table, const ExportRowSpan& span) {
  SC_CHECK_ARG(table < tables_.size() && tables_[table].keys >= open_from_, "export: table ", table,
               " is not open for rows");
  SC_CHECK_ARG(span.rows == 0 || (span.keys && span.weights), "export of table '", tables_[table].config->name,
               "': a span of rows without keys or weights");
  files_[tables_[table].keys]->add(span.keys, span.rows);
  files_[tables_[table].rows]->add(span.weights, span.rows);
}

void StagedPartWriter::claim(uint64_t (*available)(const OutFile&)) {
  claimed_.clear();
  for (size_t f = open_from_; f < files_.size(); ++f) {
    OutFile& file = *files_[f];
    const uint64_t upto = available(file);
    if (file.checksums.size() < upto) file.checksums.resize(upto);
    for (; file.next_block < upto; ++file.next_block) claimed_.emplace_back(&file, file.next_block);
  }
}

size_t StagedPartWriter::claim_ready() {
  claim([](const OutFile& f) { return f.bytes() / kBlockBytes; });  // whole blocks only
  return claimed_.size();
}

void StagedPartWriter::write_claimed(size_t i) { claimed_.at(i).first->write_block(claimed_[i].second); }

void StagedPartWriter::finish_tables() {
  claim([](const OutFile& f) { return (f.bytes() + kBlockBytes - 1) / kBlockBytes; });
  parallel_for(static_cast<int64_t>(claimed_.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) write_claimed(static_cast<size_t>(i));
  });
  claimed_.clear();
  // The disk takes the files' data together: their writeback is under way already.
  parallel_for(static_cast<int64_t>(files_.size() - open_from_), 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      OutFile& file = *files_[open_from_ + static_cast<size_t>(f)];
      file.file.sync();
      file.file.close();
    }
  });
  open_from_ = files_.size();
}

std::string StagedPartWriter::commit() {
  finish_tables();
  Json jtables = Json::array();
  for (const Table& t : tables_) {
    Json files = Json::object();
    files["keys"] = files_[t.keys]->json();
    files["rows"] = files_[t.rows]->json();
    if (t.deleted) files["deleted"] = files_[t.rows + 1]->json();
    Json jt = Json::object();
    jt["name"] = t.config->name;
    jt["config"] = t.config->to_json();
    jt["seed"] = checksum_hex(t.seed);
    jt["rows"] = static_cast<int64_t>(files_[t.keys]->rows);
    jt["deleted"] = static_cast<int64_t>(t.deleted ? files_[t.rows + 1]->rows : 0);
    jt["files"] = std::move(files);
    jtables.push_back(std::move(jt));
  }
  Json m = Json::object();
  m["format"] = detail::kFormat;
  m["format_version"] = detail::kFormatVersion;
  m["kind"] = header_.delta ? "delta" : "full";
  m["version"] = header_.version;
  if (header_.delta) m["since"] = header_.since;
  m["part"] = header_.part;
  m["num_parts"] = header_.num_parts;
  m["dtype"] = export_dtype_name(header_.dtype);
  m["block_bytes"] = static_cast<int64_t>(kBlockBytes);
  m["tables"] = std::move(jtables);
  const std::string text = m.dump(1);
  File manifest = File::create(join_path(staging_, detail::kManifest));
  manifest.write_all(text.data(), text.size());
  manifest.sync();
  manifest.close();
  files_.clear();
  commit_directory(staging_, target_, /*files_synced=*/true);
  committed_ = true;
  // Stagings of this part left by writers that died before their switch (one writer per part
  // of a version, so none of them is live once this one has committed).
  remove_stale_stagings(export_dir_, "." + part_name(header_.part, header_.num_parts) + ".");
  return target_;
}

std::string write_export_part(const ExportPart& part, const std::string& stream_dir) {
  std::vector<ExportTableSource> sources;
  for (const ExportTable& t : part.tables) {
    const uint64_t dim = static_cast<uint64_t>(t.config.dim);
    SC_CHECK_ARG(t.weights.size() == t.keys.size() * dim, "export of table '", t.config.name, "': ", t.keys.size(),
                 " keys but ", t.weights.size(), " weights (dim ", dim, ")");
    sources.push_back({&t.config, t.seed, {{t.keys.data(), t.weights.data(), t.keys.size()}}, &t.deleted});
  }
  return write_export_part(static_cast<const ExportHeader&>(part), sources, stream_dir);
}

std::string write_export_part(const ExportHeader& header, const std::vector<ExportTableSource>& tables,
                              const std::string& stream_dir) {
  for (const ExportTableSource& t : tables) SC_CHECK_ARG(t.config != nullptr, "export of a table without a config");
  StagedPartWriter writer(header, stream_dir);
  constexpr size_t kGroup = 20;  // tables whose files are open at once (3 each at most)
  for (size_t i = 0; i < tables.size(); ++i) {
    const size_t t = writer.add_table(*tables[i].config, tables[i].seed, tables[i].deleted);
    for (const ExportRowSpan& s : tables[i].spans) writer.append(t, s);
    if ((i + 1) % kGroup == 0) writer.finish_tables();
  }
  return writer.commit();
}

}  // namespace sparsecore::serving
