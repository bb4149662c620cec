// DeviceRows: the rows of one parameter-server table kept in a device row store (a GPU, or
// its CPU emulation) instead of the shard's own EmbeddingTable. The device layer
// (sparsecore/cuda/device_shard_rows.h) implements it; this layer only calls it, so a
// server built without that layer simply offers no device.
//
// The shard keeps the table's config and everything around the rows (routing checks,
// synchronous steps, snapshot markers); pulls, pushes, erase and expiry run on the device
// store. Statistics read counts and incremental exports read the changed rows only (picked
// on the device); a full snapshot reads every row into a CPU copy (to_host), in the CPU
// engine's formats, so a snapshot moves between CPU and device servers.
//
// Thread-safety: called from the owning shard's thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/table/export_table.h"

namespace sparsecore::ps {

class DeviceRows {
 public:
  virtual ~DeviceRows() = default;
  // out (n, dim) host float32. train: unknown ids are inserted with their initial values
  // (with admission or a capacity: sighted, given room or refused as a CPU shard's pull
  // does); otherwise they read the table's default row.
  virtual void pull(const int64_t* ids, int64_t n, bool train, float* out) = 0;
  // Puts back what one apply_unique changed: its rows and the step (rows it inserted stay,
  // with their initial values, as on a CPU shard).
  class Undo {
   public:
    virtual ~Undo() = default;
    virtual void apply() = 0;
  };
  // ids (n) distinct and checked, grads (n, dim) host, finite: the table's rule applied once
  // per row (unknown ids inserted first; with admission or a capacity only the ids a CPU
  // shard would give a row, the others' gradients dropped and counted), as
  // EmbeddingCollection::apply_unique, and all or
  // nothing as it: when the update left a row's weights or state non-finite (a finite but
  // huge gradient overflowed it), the rows and the step are put back and InvalidArgument
  // names the table. Returns the undo of the update, for a push whose later table fails.
  virtual std::unique_ptr<Undo> apply_unique(const int64_t* ids, int64_t n, const float* grads) = 0;
  // Removes ids (n); returns how many were present.
  virtual int64_t erase(const int64_t* ids, int64_t n) = 0;
  // Removes the rows the table's expiry rules name now; returns how many.
  virtual int64_t expire() = 0;
  // The number of updates applied (the store's step), and setting it (an export raises it to
  // its version, so rows changed later are stamped after it).
  virtual int64_t step() const = 0;
  virtual void set_step(int64_t step) = 0;
  // A CPU collection holding a copy of every row, its optimizer state, metadata and step.
  virtual std::unique_ptr<EmbeddingCollection> to_host() const = 0;
  // Rows held now (a count read from the device, no row copied).
  virtual int64_t size() const = 0;
  // The table's expiry and feature admission (their statistics), or nullptr.
  virtual const Expiry* expiry() const = 0;
  virtual const Admission* admission() const = 0;
  // collect_export_table (table/export_table.h) of the rows: the step raised to `version`
  // first, then the rows changed after `since` (since < 0: every row) and the keys removed
  // after it; only those rows come over from the device.
  virtual ExportTable collect_export(int64_t since, int64_t version) = 0;
  // Device bytes the rows take.
  virtual int64_t memory_bytes() const = 0;
};

// Makes the device rows of a one-table collection from its CPU rows (an empty collection for
// a new table, a restored one for a snapshot), with its admission state, expiry statistics
// and this shard's part of a capacity. Throws InvalidArgument naming the table and what the
// device store cannot do (num_embeddings, sampled eviction) before anything is created.
using DeviceRowsFactory = std::function<std::unique_ptr<DeviceRows>(const EmbeddingCollection& host)>;

}  // namespace sparsecore::ps
