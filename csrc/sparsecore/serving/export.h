// Full and incremental exports of an embedded EmbeddingCollection (format: export_format.h).
//
// Versions are collection steps. A row carries the step of its last change (PackedRowMeta::
// last_step: the update's step, or step() + 1 when it was inserted, see
// EmbeddingTable::init_row), and every removal is logged with its step (DeletedKeysLog). So:
//   version = export_full(c, dir)            every row, at version c.step()
//   version = export_delta(c, dir, since)    rows with last_step > since and keys removed after
//                                            since, at version c.step()
// and applying export_full at v0 then deltas since v0, v1, ... gives exactly the rows a fresh
// export_full would hold (a row inserted just before an export at the same step may travel
// twice, which changes nothing). A delta since a version older than what the deleted-keys log
// retains throws InvalidArgument telling the caller to take a full export; so does a delta
// since a version newer than the collection's step (it was restored from an older checkpoint).
//
// Weights travel as fp32, fp16 or int8 (dtype); only weights are exported (no optimizer
// state). Thread-safety: like save(), run an export while no backward runs (rows would be
// caught mid-update); lookups may run (their inserts are stamped after the export's version).
//
// Speed: each table's hash shards are collected in stages on the thread pool, and the file
// blocks of the shards collected so far are written during the next stage (StagedPartWriter,
// export_writer.h), so the disk works during the collection. The collection buffers are kept
// between exports (up to 256 MiB in all; larger ones are freed after the export): a periodic
// exporter writes its rows into memory already paged in.
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/serving/export_format.h"

namespace sparsecore::serving {

// Writes <stream_dir>/full-<step> (one part) and returns the version (the collection step).
int64_t export_full(EmbeddingCollection& collection, const std::string& stream_dir,
                    ExportDtype dtype = ExportDtype::kFloat32);
// Writes <stream_dir>/delta-<since>-<step> and returns the version.
int64_t export_delta(EmbeddingCollection& collection, const std::string& stream_dir, int64_t since,
                     ExportDtype dtype = ExportDtype::kFloat32);

// The writer of export parts a parameter server needs (PsServerOptions::export_writer):
// every part in this format, so that a Subscriber applies a cluster's export like an
// embedded one.
ps::ExportPartWriter ps_export_writer();

}  // namespace sparsecore::serving
