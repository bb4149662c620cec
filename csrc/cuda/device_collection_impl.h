// The backend side of cuda::DeviceEmbeddingCollection (host-only declarations). The kernel
// sources implement it twice from one text: sparsecore::cuda::device (nvcc) and
// sparsecore::cuda::emulated (g++ through the emulation layer). Inputs arrive validated.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda {

class DeviceCollectionImpl {
 public:
  virtual ~DeviceCollectionImpl() = default;
  virtual int64_t step() const = 0;
  virtual int64_t table_size(int table) const = 0;
  virtual int64_t table_capacity(int table) const = 0;
  virtual void set_max_load_factor(double f) = 0;
  virtual std::shared_ptr<DevicePreparedBatch> prepare(const std::vector<GroupInput>& inputs, bool train) = 0;
  virtual void forward(const DevicePreparedBatch& batch, const std::vector<float*>& outputs) = 0;
  virtual int64_t backward(const DevicePreparedBatch& batch, const std::vector<const float*>& grads) = 0;
  virtual void lookup(int table, const int64_t* keys, int64_t n, float* out, bool insert) = 0;
  virtual int64_t erase(int table, const int64_t* keys, int64_t n) = 0;
  virtual DeviceEmbeddingCollection::Export export_rows(int table) const = 0;
};

using ImplFactory = std::unique_ptr<DeviceCollectionImpl> (*)(const std::vector<TableConfig>&, uint64_t, RowStorage,
                                                               LaunchLimits);

namespace emulated {
std::unique_ptr<DeviceCollectionImpl> make_collection(const std::vector<TableConfig>& tables, uint64_t seed,
                                                      RowStorage storage, LaunchLimits limits);
}  // namespace emulated

namespace device {
std::unique_ptr<DeviceCollectionImpl> make_collection(const std::vector<TableConfig>& tables, uint64_t seed,
                                                      RowStorage storage, LaunchLimits limits);
// "" when a device is usable, otherwise why not.
std::string unavailable_reason();
}  // namespace device

}  // namespace sparsecore::cuda
