// A prepared batch of the device collection: the host-side layout of its groups (offsets of
// ids, bags, radix chunks, gradient items, outputs and per-id rows, all known before any
// kernel runs) and its device buffers. Everything the kernels need of the inputs travels in
// one upload (host inputs) or is read in place (device inputs), and every buffer is sized
// by the id count, an upper bound of the unique count that stays on the device.
#pragma once

#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch_kernels.cuh"
#include "device_collection_impl.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

class PreparedBatchImpl final : public DevicePreparedBatch {
 public:
  // Buffers go back to the memory cache tagged with the stream of the batch's last call.
  ~PreparedBatchImpl() override { release_.activate(last_stream); }
  bool train() const override { return train_; }
  const std::vector<DeviceGroupInfo>& groups() const override { return infos_; }

  int64_t num_unique(int g) const override {
    check_group(g);
    const std::vector<int64_t>& begin = unique_begin_on_host();
    return begin[g + 1] - begin[g];
  }

  std::vector<int64_t> unique_ids(int g) const override {
    check_group(g);
    const std::vector<int64_t>& begin = unique_begin_on_host();
    std::vector<int64_t> out(begin[g + 1] - begin[g]);
    DeviceGuard on(device);
    StreamScope stream(last_stream);
    copy_bytes(out.data(), unique_keys.data() + begin[g], out.size() * sizeof(int64_t), Copy::kDeviceToHost);
    return out;
  }

  // Lays the groups out and uploads what the kernels read of them. inputs validated;
  // host_offsets[g]: group g's offsets on the host; dims[g], pooling[g]: its table's.
  void lay_out(const std::vector<GroupInput>& inputs, const std::vector<std::vector<int64_t>>& host_offsets,
               const std::vector<int>& dims, const std::vector<Pooling>& pooling, MemorySpace space) {
    const int groups = static_cast<int>(inputs.size());
    id_begin.assign(groups + 1, 0);
    std::vector<int64_t> bag_begin(groups + 1, 0), chunk_begin(groups + 1, 0), vec_begin(groups + 1, 0);
    std::vector<GroupDesc> desc(groups);
    bool any_weights = false;
    for (int g = 0; g < groups; ++g) {
      const GroupInput& in = inputs[g];
      DeviceGroupInfo info;
      info.table = in.table;
      info.dim = dims[g];
      info.pooling = pooling[g];
      info.batch_size = in.batch_size;
      info.num_ids = in.num_ids;
      const std::vector<int64_t>& off = host_offsets[g];
      for (int64_t b = 0; b < in.batch_size; ++b) info.max_len = std::max(info.max_len, off[b + 1] - off[b]);
      infos_.push_back(info);
      GroupDesc& d = desc[g];
      d.table = in.table;
      d.dim = info.dim;
      d.pooling = info.pooling;
      d.batch_size = info.batch_size;
      d.max_len = info.max_len;
      // Four-element alignment keeps float4 access aligned inside the concatenated arrays.
      d.out_begin = out_total;
      out_begin.push_back(out_total);
      out_total = round_up(out_total + info.output_size(), 4);
      d.row_begin = rows_total;
      rows_total = round_up(rows_total + in.num_ids * info.dim, 4);
      d.sum_begin = sums_total;
      sums_total = round_up(sums_total + (in.num_ids + kGradientChunk - 1) / kGradientChunk * info.dim, 4);
      id_begin[g + 1] = id_begin[g] + in.num_ids;
      bag_begin[g + 1] = bag_begin[g] + in.batch_size;
      chunk_begin[g + 1] = chunk_begin[g] + (in.num_ids + kRadixChunk - 1) / kRadixChunk;
      vec_begin[g + 1] = vec_begin[g] + in.num_ids * ((info.dim + kGradWidth - 1) / kGradWidth);
      max_group_ids = std::max(max_group_ids, in.num_ids);
      any_weights = any_weights || in.weights != nullptr;
    }
    num_ids = id_begin[groups];
    num_chunks = chunk_begin[groups];
    num_grad_items = vec_begin[groups];
    const int64_t bags = bag_begin[groups];

    // One blob: descriptors, offsets tables, per-group pointers, bag bounds, and (host
    // inputs) the ids and weights themselves.
    size_t size = 0;
    auto take = [&size](size_t bytes) {
      const size_t at = size;
      size = (size + bytes + 255) / 256 * 256;
      return at;
    };
    const size_t at_desc = take(sizeof(GroupDesc) * groups);
    const size_t at_id_begin = take(sizeof(int64_t) * (groups + 1));
    const size_t at_bag_begin = take(sizeof(int64_t) * (groups + 1));
    const size_t at_chunk_begin = take(sizeof(int64_t) * (groups + 1));
    const size_t at_vec_begin = take(sizeof(int64_t) * (groups + 1));
    const size_t at_id_ptrs = take(sizeof(void*) * groups);
    const size_t at_weight_ptrs = take(sizeof(void*) * groups);
    const size_t at_offsets = take(sizeof(int64_t) * (bags + 1));
    const bool host = space == MemorySpace::kHost;
    const size_t at_ids = host ? take(sizeof(int64_t) * num_ids) : 0;
    const size_t at_weights = any_weights ? take(sizeof(float) * num_ids) : 0;
    blob.resize(size);
    unsigned char* base = blob.data();
    std::vector<unsigned char> staging(size);
    auto put = [&staging](size_t at, const void* src, size_t bytes) {
      if (bytes) std::memcpy(staging.data() + at, src, bytes);
    };
    put(at_desc, desc.data(), sizeof(GroupDesc) * groups);
    put(at_id_begin, id_begin.data(), sizeof(int64_t) * (groups + 1));
    put(at_bag_begin, bag_begin.data(), sizeof(int64_t) * (groups + 1));
    put(at_chunk_begin, chunk_begin.data(), sizeof(int64_t) * (groups + 1));
    put(at_vec_begin, vec_begin.data(), sizeof(int64_t) * (groups + 1));
    std::vector<const int64_t*> id_ptrs(groups);
    std::vector<const float*> weight_ptrs(groups, nullptr);
    std::vector<int64_t> offsets(bags + 1, 0);
    if (any_weights && !host) weights.resize(num_ids);
    for (int g = 0; g < groups; ++g) {
      const GroupInput& in = inputs[g];
      for (int64_t b = 0; b < in.batch_size; ++b) offsets[bag_begin[g] + b + 1] = id_begin[g] + host_offsets[g][b + 1];
      const size_t id_bytes = sizeof(int64_t) * id_begin[g];
      if (host) {
        put(at_ids + id_bytes, in.ids, sizeof(int64_t) * in.num_ids);
        id_ptrs[g] = reinterpret_cast<const int64_t*>(base + at_ids + id_bytes);
      } else {
        id_ptrs[g] = in.ids;  // read in place by dedup, never after prepare
      }
      if (!in.weights) continue;
      // Weights are read again by forward and backward: the batch keeps its own copy.
      if (host) {
        put(at_weights + sizeof(float) * id_begin[g], in.weights, sizeof(float) * in.num_ids);
        weight_ptrs[g] = reinterpret_cast<const float*>(base + at_weights + sizeof(float) * id_begin[g]);
      } else {
        copy_bytes(weights.data() + id_begin[g], in.weights, sizeof(float) * in.num_ids, Copy::kDeviceToDevice);
        weight_ptrs[g] = weights.data() + id_begin[g];
      }
    }
    put(at_id_ptrs, id_ptrs.data(), sizeof(void*) * groups);
    put(at_weight_ptrs, weight_ptrs.data(), sizeof(void*) * groups);
    put(at_offsets, offsets.data(), sizeof(int64_t) * (bags + 1));
    copy_bytes(base, staging.data(), size, Copy::kHostToDevice);

    unique_begin.resize(groups + 1);
    unique_keys.resize(std::max<int64_t>(num_ids, 1));
    inverse.resize(num_ids);
    slots.resize(std::max<int64_t>(num_ids, 1));
    view.num_groups = groups;
    view.num_ids = num_ids;
    view.num_bags = bags;
    view.groups = reinterpret_cast<const GroupDesc*>(base + at_desc);
    view.id_begin = reinterpret_cast<const int64_t*>(base + at_id_begin);
    view.bag_begin = reinterpret_cast<const int64_t*>(base + at_bag_begin);
    view.chunk_begin = reinterpret_cast<const int64_t*>(base + at_chunk_begin);
    view.vec_begin = reinterpret_cast<const int64_t*>(base + at_vec_begin);
    view.ids = reinterpret_cast<const int64_t* const*>(base + at_id_ptrs);
    view.weights = reinterpret_cast<const float* const*>(base + at_weight_ptrs);
    view.offsets = reinterpret_cast<const int64_t*>(base + at_offsets);
    view.unique_begin = unique_begin.data();
    view.unique_keys = unique_keys.data();
    view.inverse = inverse.data();
  }

  ReleaseScope release_;  // first member: last destroyed
  bool train_ = false;
  const void* owner_ = nullptr;
  int device = 0;
  cudaStream_t last_stream = nullptr;  // of the last call that used the batch
  std::vector<DeviceGroupInfo> infos_;
  std::vector<uint64_t> generations;  // per group: its table's generation when its slots were found
  std::vector<int64_t> absent_rows;   // per group: unique ids left without a row at prepare (admission)
  std::vector<int64_t> id_begin;      // (G + 1) host copy
  int64_t num_ids = 0, num_chunks = 0, num_grad_items = 0, max_group_ids = 0;
  // elements of the concatenated outputs / per-id rows / chunk sums (backward_kernels.cuh)
  int64_t out_total = 0, rows_total = 0, sums_total = 0;
  std::vector<int64_t> out_begin;  // per group: its first element in the concatenated outputs

  DeviceBuffer<unsigned char> blob;
  DeviceBuffer<float> weights;  // device inputs with weights: the batch's copy
  DeviceBuffer<int64_t> unique_begin, unique_keys, slots;
  DeviceBuffer<int> inverse;
  // training only
  DeviceBuffer<int> occ_offsets, occ_positions, bag_of;
  DeviceBuffer<float> bag_scale;
  BatchView view;

  // The per-group unique bounds (G + 1), read back once (a host sync) and kept.
  const std::vector<int64_t>& unique_begin_on_host() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (unique_begin_host_.empty()) {
      unique_begin_host_.resize(infos_.size() + 1);
      DeviceGuard on(device);
      StreamScope stream(last_stream);
      unique_begin.download(unique_begin_host_.data(), unique_begin_host_.size());
    }
    return unique_begin_host_;
  }

 private:
  void check_group(int g) const {
    if (g < 0 || g >= static_cast<int>(infos_.size()))
      throw std::out_of_range("group " + std::to_string(g) + " out of range [0, " + std::to_string(infos_.size()) +
                              ")");
  }

  mutable std::mutex mutex_;
  mutable std::vector<int64_t> unique_begin_host_;
};

// GroupPointers of a call's arrays; those past the inline ones go up through `more`.
template <typename P>
GroupPointers<P> group_pointers(const std::vector<P>& ptrs, DeviceBuffer<P>& more) {
  GroupPointers<P> gp;
  const size_t inline_count = std::min<size_t>(ptrs.size(), GroupPointers<P>::kInline);
  for (size_t g = 0; g < inline_count; ++g) gp.inline_ptrs[g] = ptrs[g];
  if (ptrs.size() > inline_count) {
    more.upload(ptrs.data() + inline_count, ptrs.size() - inline_count);
    gp.more = more.data();
  }
  return gp;
}

// The launch shape of a collection's kernels: its block size, and grids capped by max_blocks
// (kernels are grid-stride loops).
struct LaunchShape {
  const LaunchLimits& limits;
  dim3 block() const { return dim3(static_cast<unsigned>(limits.block_threads)); }
  dim3 grid(int64_t threads) const {
    int64_t blocks = (std::max<int64_t>(threads, 1) + limits.block_threads - 1) / limits.block_threads;
    if (limits.max_blocks > 0) blocks = std::min<int64_t>(blocks, limits.max_blocks);
    return dim3(static_cast<unsigned>(std::min<int64_t>(blocks, 1 << 30)));
  }
};

// Exclusive scan buffers: the tiles' local sums and the tiles' offsets (ScanView).
struct Scan {
  DeviceBuffer<int> local, sums, offsets;
  ScanView view;
};

// Exclusive scan of in (n, device): two launches, the result read through s.view.
inline void scan(const LaunchShape& shape, const int* in, int64_t n, Scan& s) {
  const int threads = shape.limits.block_threads;
  const int64_t tile = int64_t{threads} * kScanItemsPerThread;
  const int64_t tiles = std::max<int64_t>((n + tile - 1) / tile, 1);
  s.local.resize(std::max<int64_t>(n, 1));
  s.sums.resize(tiles);
  s.offsets.resize(tiles);
  const size_t shared = 2 * threads * sizeof(int);
  SC_LAUNCH(dim3(static_cast<unsigned>(tiles)), shape.block(), shared, nullptr, scan_tiles_kernel)
  (in, s.local.data(), s.sums.data(), n);
  SC_CHECK_LAUNCH();
  SC_LAUNCH(dim3(1), shape.block(), shared, nullptr, scan_tile_sums_kernel)(s.sums.data(), s.offsets.data(), tiles);
  SC_CHECK_LAUNCH();
  s.view = {s.local.data(), s.offsets.data(), tile};
}

// unique_begin, unique_keys and inverse of every group of the batch, on the device.
inline void dedup(const LaunchShape& shape, PreparedBatchImpl& batch) {
  const int64_t n = batch.num_ids;
  if (n == 0) {
    batch.unique_begin.fill_zero();
    return;
  }
  const int64_t set_capacity = dedup_set_capacity(n);
  DeviceBuffer<int> set_pos(set_capacity), is_first(n);
  DeviceBuffer<int64_t> slot_of(n);
  set_pos.fill_zero();
  SC_LAUNCH(shape.grid(n), shape.block(), 0, nullptr, batch_dedup_insert_kernel)
  (batch.view, set_pos.data(), static_cast<uint64_t>(set_capacity - 1), slot_of.data());
  SC_CHECK_LAUNCH();
  SC_LAUNCH(shape.grid(n), shape.block(), 0, nullptr, mark_first_kernel)
  (set_pos.data(), slot_of.data(), n, is_first.data());
  SC_CHECK_LAUNCH();
  Scan index;
  scan(shape, is_first.data(), n, index);
  SC_LAUNCH(shape.grid(std::max<int64_t>(n, batch.view.num_groups + 1)), shape.block(), 0, nullptr,
            batch_dedup_finish_kernel)
  (batch.view, set_pos.data(), slot_of.data(), index.view, is_first.data());
  SC_CHECK_LAUNCH();
}

// What backward needs beyond forward: each position's bag, each bag's gradient scale, and
// each unique id's occurrences in ascending position order (a stable radix sort of the
// positions by group-local unique index, all groups at once).
inline void build_occurrences(const LaunchShape& shape, PreparedBatchImpl& batch) {
  const int64_t n = batch.num_ids, bags = batch.view.num_bags;
  batch.bag_of.resize(n);
  batch.bag_scale.resize(bags);
  if (bags > 0) {
    SC_LAUNCH(shape.grid(bags), shape.block(), 0, nullptr, batch_bag_layout_kernel)
    (batch.view, batch.bag_of.data(), batch.bag_scale.data());
    SC_CHECK_LAUNCH();
  }
  batch.occ_offsets.resize(n + 1);
  batch.occ_positions.resize(n);
  if (n == 0) {
    batch.occ_offsets.fill_zero();
    return;
  }
  int bits = 0;
  while (bits < 31 && (int64_t{1} << bits) < batch.max_group_ids) ++bits;
  const int passes = std::max(1, (bits + kRadixBits - 1) / kRadixBits);
  const int64_t chunks = batch.num_chunks;
  DeviceBuffer<int> hist(kRadixBins * chunks), sorted_keys(n);
  DeviceBuffer<int> keys_a, keys_b, values_a, values_b;
  if (passes > 1) {
    for (DeviceBuffer<int>* b : {&keys_a, &keys_b, &values_a, &values_b}) b->resize(n);
  }
  const int* keys_in = nullptr;
  const int* values_in = nullptr;
  Scan offsets;
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * kRadixBits;
    const bool last = pass == passes - 1;
    int* keys_out = last ? sorted_keys.data() : (pass % 2 ? keys_b.data() : keys_a.data());
    int* values_out = last ? batch.occ_positions.data() : (pass % 2 ? values_b.data() : values_a.data());
    SC_LAUNCH(shape.grid(chunks), shape.block(), 0, nullptr, batch_radix_histogram_kernel)
    (batch.view, keys_in, chunks, shift, hist.data());
    SC_CHECK_LAUNCH();
    scan(shape, hist.data(), kRadixBins * chunks, offsets);
    SC_LAUNCH(shape.grid(chunks), shape.block(), 0, nullptr, batch_radix_scatter_kernel)
    (batch.view, keys_in, values_in, chunks, shift, offsets.view, keys_out, values_out);
    SC_CHECK_LAUNCH();
    keys_in = keys_out;
    values_in = values_out;
  }
  SC_LAUNCH(shape.grid(n), shape.block(), 0, nullptr, occurrence_bounds_kernel)
  (batch.view, sorted_keys.data(), batch.occ_offsets.data());
  SC_CHECK_LAUNCH();
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
