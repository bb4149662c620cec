// DeviceRows: the rows of one parameter-server table kept in a device row store (a GPU, or
// its CPU emulation) instead of the shard's own EmbeddingTable. The device layer
// (sparsecore/cuda/device_shard_rows.h) implements it; this layer only calls it, so a
// server built without that layer simply offers no device.
//
// The shard keeps the table's config and everything around the rows (routing checks,
// synchronous steps, snapshot markers); pulls, pushes, erase and expiry run on the device
// store; snapshots, exports and statistics go through a CPU copy of the rows (to_host), in
// the CPU engine's formats, so a snapshot moves between CPU and device servers.
//
// Thread-safety: called from the owning shard's thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::ps {

class DeviceRows {
 public:
  virtual ~DeviceRows() = default;
  // out (n, dim) host float32. train: unknown ids are inserted with their initial values;
  // otherwise they read the table's default row.
  virtual void pull(const int64_t* ids, int64_t n, bool train, float* out) = 0;
  // ids (n) distinct and checked, grads (n, dim) host, finite: the table's rule applied once
  // per row (unknown ids inserted first), as EmbeddingCollection::apply_unique. Throws
  // InvalidArgument naming the table when the update left a row non-finite (a finite but
  // huge gradient overflowed it); unlike the CPU store, the device store cannot put the
  // rows of the call back, and the error says so.
  virtual void apply_unique(const int64_t* ids, int64_t n, const float* grads) = 0;
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
  // Device bytes the rows take.
  virtual int64_t memory_bytes() const = 0;
};

// Makes the device rows of a one-table collection from its CPU rows (an empty collection for
// a new table, a restored one for a snapshot). Throws InvalidArgument naming the table and
// what the device store cannot do (e.g. a row capacity) before anything is created.
using DeviceRowsFactory = std::function<std::unique_ptr<DeviceRows>(const EmbeddingCollection& host)>;

}  // namespace sparsecore::ps
