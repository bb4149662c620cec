// The host front of cuda::DeviceEmbeddingCollection: validation (everything is checked on
// the host before any device work, so a bad batch changes nothing) and backend selection.
#include "sparsecore/cuda/device_embedding_collection.h"

#include <set>

#include "device_collection_impl.h"
#include "sparsecore/core/error.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore::cuda {

RowStorage row_storage_from_name(const std::string& name) {
  if (name == "fp32") return RowStorage::kFloat32;
  if (name == "fp16") return RowStorage::kFloat16;
  throw InvalidArgument("unknown row storage '" + name + "' (known: fp32, fp16)");
}

const char* row_storage_name(RowStorage s) { return s == RowStorage::kFloat16 ? "fp16" : "fp32"; }

std::string device_unavailable_reason() {
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  return device::unavailable_reason();
#else
  return "no CUDA device (sparsecore was built without CUDA kernels)";
#endif
}

bool device_available() { return device_unavailable_reason().empty(); }

DeviceEmbeddingCollection::DeviceEmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed,
                                                     RowStorage storage, Backend backend, LaunchLimits limits)
    : backend_(backend), storage_(storage), seed_(seed), configs_(std::move(tables)) {
  SC_CHECK_ARG(!configs_.empty(), "a DeviceEmbeddingCollection needs at least one table");
  SC_CHECK_ARG(limits.block_threads >= 32 && limits.block_threads <= 1024 && limits.block_threads % 32 == 0,
               "block_threads must be a multiple of 32 in [32, 1024], got ", limits.block_threads);
  SC_CHECK_ARG(limits.max_blocks >= 0, "max_blocks must be >= 0, got ", limits.max_blocks);
  std::set<std::string> names;
  for (const auto& c : configs_) {
    c.validate();
    SC_CHECK_ARG(names.insert(c.name).second, "duplicate table name '", c.name, "'");
  }
  if (backend == Backend::kEmulated) {
    impl_ = emulated::make_collection(configs_, seed, storage, limits);
  } else {
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
    impl_ = device::make_collection(configs_, seed, storage, limits);
#else
    throw CudaError(device_unavailable_reason());
#endif
  }
}

DeviceEmbeddingCollection::~DeviceEmbeddingCollection() = default;

int DeviceEmbeddingCollection::table_index(const std::string& name) const {
  std::string known;
  for (size_t i = 0; i < configs_.size(); ++i) {
    if (configs_[i].name == name) return static_cast<int>(i);
    known += (i ? ", " : "") + configs_[i].name;
  }
  throw NotFound("unknown table '" + name + "' (tables: " + known + ")");
}

void DeviceEmbeddingCollection::check_table(int table) const {
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range [0, ", num_tables(), ")");
}

int64_t DeviceEmbeddingCollection::step() const { return impl_->step(); }

int64_t DeviceEmbeddingCollection::table_size(int table) const {
  check_table(table);
  return impl_->table_size(table);
}

int64_t DeviceEmbeddingCollection::table_capacity(int table) const {
  check_table(table);
  return impl_->table_capacity(table);
}

void DeviceEmbeddingCollection::set_max_load_factor(double f) {
  SC_CHECK_ARG(f > 0.0 && f <= 0.95, "max_load_factor must be in (0, 0.95], got ", f);
  impl_->set_max_load_factor(f);
}

void DeviceEmbeddingCollection::validate_inputs(const std::vector<GroupInput>& inputs) const {
  std::vector<char> seen(configs_.size(), 0);
  for (size_t g = 0; g < inputs.size(); ++g) {
    const GroupInput& in = inputs[g];
    SC_CHECK_ARG(in.table >= 0 && in.table < num_tables(), "group ", g, ": table index ", in.table,
                 " out of range [0, ", num_tables(), ")");
    const std::string& name = configs_[in.table].name;
    SC_CHECK_ARG(!seen[in.table], "table '", name, "' appears in more than one group of the batch");
    seen[in.table] = 1;
    SC_CHECK_ARG(in.num_ids >= 0 && in.num_ids < (int64_t{1} << 31), "group '", name, "': ids has ", in.num_ids,
                 " elements; at most 2^31 - 1 per group");
    SC_CHECK_ARG(in.batch_size >= 0, "group '", name, "': batch size must be >= 0, got ", in.batch_size);
    SC_CHECK_ARG(in.num_ids == 0 || in.ids != nullptr, "group '", name, "': ids is null");
    SC_CHECK_ARG(in.offsets != nullptr, "group '", name, "': offsets is null");
    const int64_t* off = in.offsets;
    SC_CHECK_ARG(off[0] == 0, "group '", name, "': offsets[0] must be 0, got ", off[0]);
    for (int64_t b = 0; b < in.batch_size; ++b)
      SC_CHECK_ARG(off[b + 1] >= off[b], "group '", name, "': offsets must be non-decreasing, but offsets[", b,
                   "] = ", off[b], " > offsets[", b + 1, "] = ", off[b + 1]);
    SC_CHECK_ARG(off[in.batch_size] == in.num_ids, "group '", name, "': offsets[", in.batch_size, "] = ",
                 off[in.batch_size], " must equal the number of ids (", in.num_ids, ")");
    if (in.weights)
      SC_CHECK_ARG(kernels::all_finite(in.weights, in.num_ids), "group '", name, "': weights contain NaN or Inf");
  }
}

std::shared_ptr<DevicePreparedBatch> DeviceEmbeddingCollection::prepare(const std::vector<GroupInput>& inputs,
                                                                        bool train) {
  validate_inputs(inputs);
  return impl_->prepare(inputs, train);
}

void DeviceEmbeddingCollection::forward(const DevicePreparedBatch& batch, const std::vector<float*>& outputs) {
  const auto& groups = batch.groups();
  SC_CHECK_ARG(outputs.size() == groups.size(), "forward: ", outputs.size(), " output buffers for ", groups.size(),
               " groups");
  for (size_t g = 0; g < groups.size(); ++g)
    SC_CHECK_ARG(outputs[g] != nullptr || groups[g].output_size() == 0, "forward: output ", g, " is null");
  impl_->forward(batch, outputs);
}

int64_t DeviceEmbeddingCollection::backward(const DevicePreparedBatch& batch, const std::vector<const float*>& grads) {
  SC_CHECK_ARG(batch.train(), "backward needs a batch prepared with train=true (this one was prepared for evaluation)");
  const auto& groups = batch.groups();
  SC_CHECK_ARG(grads.size() == groups.size(), "backward: ", grads.size(), " gradients for ", groups.size(), " groups");
  for (size_t g = 0; g < groups.size(); ++g) {
    SC_CHECK_ARG(grads[g] != nullptr || groups[g].output_size() == 0, "backward: gradient ", g, " is null");
    SC_CHECK_ARG(kernels::all_finite(grads[g], groups[g].output_size()), "gradient of group '",
                 configs_[groups[g].table].name, "' contains NaN or Inf; no row was updated");
  }
  return impl_->backward(batch, grads);
}

void DeviceEmbeddingCollection::lookup(int table, const int64_t* keys, int64_t n, float* out, bool insert) {
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || (keys && out)), "lookup: null keys or output for ", n, " keys");
  impl_->lookup(table, keys, n, out, insert);
}

int64_t DeviceEmbeddingCollection::erase(int table, const int64_t* keys, int64_t n) {
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || keys), "erase: null keys for ", n, " keys");
  return impl_->erase(table, keys, n);
}

DeviceEmbeddingCollection::Export DeviceEmbeddingCollection::export_rows(int table) const {
  check_table(table);
  return impl_->export_rows(table);
}

}  // namespace sparsecore::cuda
