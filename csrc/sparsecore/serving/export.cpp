#include "sparsecore/serving/export.h"

#include "sparsecore/core/error.h"

namespace sparsecore::serving {

namespace {

int64_t write_collection(EmbeddingCollection& c, const std::string& stream_dir, bool delta, int64_t since,
                         ExportDtype dtype) {
  SC_CHECK_ARG(c.has_local_tables(),
               "export of a collection whose rows live on parameter servers: use the cluster's export");
  SC_CHECK_ARG(!stream_dir.empty(), "export directory must not be empty");
  ExportPart part;
  part.delta = delta;
  part.version = c.step();
  part.since = since;
  part.dtype = dtype;
  if (delta) {
    SC_CHECK_ARG(since >= 0, "export_delta: since must be a version >= 0, got ", since);
    SC_CHECK_ARG(since <= part.version, "export_delta: since version ", since, " is newer than the collection's step ",
                 part.version, " (was it restored from an older checkpoint?); take a full export");
  }
  for (int i = 0; i < c.num_tables(); ++i)
    part.tables.push_back(collect_export_table(c.table(i), delta ? since : -1, part.version));
  write_export_part(part, stream_dir);
  return part.version;
}

}  // namespace

int64_t export_full(EmbeddingCollection& collection, const std::string& stream_dir, ExportDtype dtype) {
  return write_collection(collection, stream_dir, false, 0, dtype);
}

int64_t export_delta(EmbeddingCollection& collection, const std::string& stream_dir, int64_t since, ExportDtype dtype) {
  return write_collection(collection, stream_dir, true, since, dtype);
}

ps::ExportPartWriter ps_export_writer() {
  return [](const std::string& stream_dir, const ps::ExportPartRequest& request, std::vector<ExportTable>& tables) {
    ExportPart part;
    part.delta = request.delta;
    part.since = request.since;
    part.version = request.version;
    part.dtype = export_dtype_from_name(request.dtype);
    part.part = request.part;
    part.num_parts = request.num_parts;
    part.tables = std::move(tables);
    write_export_part(part, stream_dir);
  };
}

}  // namespace sparsecore::serving
