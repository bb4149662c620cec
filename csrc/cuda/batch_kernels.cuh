// Table-batched kernels of a step: one launch per op across every group of a batch. The ids
// of all groups lie one after another (group g owns positions [id_begin[g], id_begin[g + 1]));
// each kernel finds the group of its item by a binary search in the per-group offsets
// (bags, positions, unique ids, radix chunks). Unique ids are numbered over the whole batch
// (group g owns [unique_begin[g], unique_begin[g + 1])), and that numbering stays on the
// device: kernels loop over an upper bound (the id count) and stop at the device count, so
// the host never reads a count to size a buffer or a grid.
#pragma once

#include "dedup_kernels.cuh"
#include "hash_table_kernels.cuh"
#include "radix_sort_kernels.cuh"
#include "scan_kernels.cuh"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// Elements of a gradient row per thread of unique_grad_kernel (one float4 when aligned).
inline constexpr int kGradWidth = 4;

// One group of a batch, as laid out by the host before any kernel runs.
struct GroupDesc {
  int table = 0;
  int dim = 0;
  Pooling pooling = Pooling::kSum;
  int64_t batch_size = 0;
  int64_t max_len = 0;
  int64_t out_begin = 0;  // first element of the group's output in a concatenated output
  int64_t row_begin = 0;  // first element of the group's rows in per-id scratch (sum of n * dim before it)
  int64_t sum_begin = 0;  // first element of the group's chunk sums (ceil(n / kGradientChunk) rows of dim)
};

// A batch as the kernels see it (device pointers). Offsets arrays have num_groups + 1 entries.
struct BatchView {
  int num_groups = 0;
  int64_t num_ids = 0;   // N, all groups
  int64_t num_bags = 0;  // all groups
  const GroupDesc* groups = nullptr;
  const int64_t* id_begin = nullptr;
  const int64_t* bag_begin = nullptr;
  const int64_t* chunk_begin = nullptr;   // radix chunks of kRadixChunk positions, per group
  const int64_t* vec_begin = nullptr;     // gradient items: n * ceil(dim / kGradWidth) per group
  const int64_t* const* ids = nullptr;    // per group: its n ids
  const float* const* weights = nullptr;  // per group: its n weights, or nullptr
  const int64_t* offsets = nullptr;       // (num_bags + 1) bag bounds as batch positions
  // Written by dedup.
  int64_t* unique_begin = nullptr;  // (num_groups + 1)
  int64_t* unique_keys = nullptr;   // (N, bound; unique_begin[G] used)
  int* inverse = nullptr;           // (N) batch-wide unique index of each position
};

// Per-group array pointers of a call (outputs, gradients) passed with the launch itself, so a
// call with device arrays copies nothing to the device first (and can be captured in a CUDA
// graph): the first kInline inline in the kernel's parameters, those of further groups in a
// device array. With `base` set, group g's array is base + GroupDesc::out_begin instead (the
// concatenated arrays of host inputs).
template <typename P>
struct GroupPointers {
  static constexpr int kInline = 32;
  P inline_ptrs[kInline] = {};
  const P* more = nullptr;
  P base = nullptr;
  __device__ __forceinline__ P get(int g, int64_t out_begin) const {
    if (base) return base + out_begin;
    return g < kInline ? inline_ptrs[g] : more[g - kInline];
  }
};

// The last g in [0, groups) with begin[g] <= i (empty groups are skipped: their begin
// equals the next one's).
__device__ __forceinline__ int find_group(const int64_t* __restrict__ begin, int groups, int64_t i) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (begin[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Exclusive prefix sums left in two parts by scan_tiles_kernel + scan_tile_sums_kernel: the
// consumer adds the tile's offset (one launch saved per scan).
struct ScanView {
  const int* local = nullptr;
  const int* tile_offsets = nullptr;
  int64_t tile = 1;
  __device__ __forceinline__ int at(int64_t i) const { return local[i] + tile_offsets[i / tile]; }
};

__device__ __forceinline__ int64_t batch_id(const BatchView& b, int g, int64_t i) {
  return b.ids[g][i - b.id_begin[g]];
}

// Dedup per group through one scratch set for the batch: a slot holds 1 + the smallest
// position of its (group, key); keys are compared through the ids, groups through the
// position ranges (dedup_kernels.cuh describes the set).
__global__ void SC_LAUNCH_BOUNDS batch_dedup_insert_kernel(BatchView b, int* set_pos, uint64_t mask,
                                                           int64_t* __restrict__ slot_of) {
  for (int64_t i = global_thread(); i < b.num_ids; i += grid_threads()) {
    const int g = find_group(b.id_begin, b.num_groups, i);
    const int64_t lo = b.id_begin[g], hi = b.id_begin[g + 1];
    const int64_t key = batch_id(b, g, i);
    const int tag = static_cast<int>(i) + 1;
    uint64_t s = (key_hash(key) ^ splitmix64(static_cast<uint64_t>(g))) & mask;
    for (;;) {
      int v = load_relaxed(&set_pos[s]);
      if (v == 0) {
        v = atomicCAS(&set_pos[s], 0, tag);
        if (v == 0) break;  // claimed
      }
      if (v - 1 >= lo && v - 1 < hi && batch_id(b, g, v - 1) == key) {
        atomicMin(&set_pos[s], tag);
        break;
      }
      s = (s + 1) & mask;
    }
    slot_of[i] = static_cast<int64_t>(s);
  }
}

// inverse (N), unique_keys (U) and unique_begin (G + 1) from the first-occurrence flags and
// their exclusive scan (unique ids numbered in order of first occurrence, group by group).
__global__ void SC_LAUNCH_BOUNDS batch_dedup_finish_kernel(BatchView b, const int* __restrict__ set_pos,
                                                           const int64_t* __restrict__ slot_of, ScanView index,
                                                           const int* __restrict__ is_first) {
  const int64_t n = b.num_ids;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int first = set_pos[slot_of[i]] - 1;
    const int u = index.at(first);
    b.inverse[i] = u;
    if (first == i) b.unique_keys[u] = batch_id(b, find_group(b.id_begin, b.num_groups, i), i);
  }
  for (int64_t g = global_thread(); g <= b.num_groups; g += grid_threads()) {
    const int64_t p = b.id_begin[g];
    b.unique_begin[g] = p < n ? index.at(p) : (n > 0 ? index.at(n - 1) + is_first[n - 1] : 0);
  }
}

// slots[u] of every unique id (inserting when `insert`; inserted[u] = 1 for the thread that
// created the key, counted into its table's size). Finding: misses[table] counts absent keys
// (nullptr: not counted). admit (N, or nullptr: every id): inserting, only ids with
// admit[u] != 0 are inserted, the others are only found (slot -1 when absent).
template <typename Table>
__global__ void SC_LAUNCH_BOUNDS batch_lookup_kernel(const Table* __restrict__ tables, BatchView b, bool insert,
                                                     int64_t* __restrict__ slots, int* __restrict__ inserted,
                                                     unsigned long long* misses,
                                                     const unsigned char* __restrict__ admit) {
  const int64_t total = b.unique_begin[b.num_groups];
  for (int64_t base = warp_base(); base < total; base += grid_threads()) {  // whole warps (warp_increment)
    const int64_t u = base + lane_index();
    unsigned long long* counter = nullptr;
    bool counted = false;
    if (u < total) {
      const int t = b.groups[find_group(b.unique_begin, b.num_groups, u)].table;
      int created = 0;
      const bool may_insert = insert && (!admit || admit[u]);
      const int64_t s = probe_slot(tables[t].view, b.unique_keys[u], may_insert, &created);
      slots[u] = s;
      if (inserted) inserted[u] = created;
      counter = insert ? tables[t].stats : (misses ? misses + t : nullptr);
      counted = counter && (insert ? created != 0 : s < 0);
    }
    warp_increment(counter, counted);  // one atomic per table per warp
  }
}

// bag_of (N): the batch-wide bag of each position; bag_scale (bags): 1/denominator for mean
// pooling (0 for an empty bag), 1 otherwise; the CPU engine's bag_gradient_scales.
__global__ void SC_LAUNCH_BOUNDS batch_bag_layout_kernel(BatchView b, int* __restrict__ bag_of,
                                                         float* __restrict__ bag_scale) {
  for (int64_t bag = global_thread(); bag < b.num_bags; bag += grid_threads()) {
    const int g = find_group(b.bag_begin, b.num_groups, bag);
    const float* w = b.weights[g];
    const int64_t lo = b.id_begin[g];
    const int64_t start = b.offsets[bag], end = b.offsets[bag + 1];
    float denom = 0.0f;
    for (int64_t p = start; p < end; ++p) {
      bag_of[p] = static_cast<int>(bag);
      denom += w ? w[p - lo] : 1.0f;
    }
    if (!w) denom = static_cast<float>(end - start);
    bag_scale[bag] = b.groups[g].pooling != Pooling::kMean ? 1.0f : (denom != 0.0f ? 1.0f / denom : 0.0f);
  }
}

// Stable LSD radix sort of every group's positions by their group-local unique index, all
// groups in one launch per step of a pass (radix_sort_kernels.cuh describes a pass). Chunks
// never straddle groups; the (digit, chunk) counts are laid out group-major, then digit,
// then chunk, so one batch-wide exclusive scan puts group g's items at its own positions.
struct RadixChunk {
  int g;
  int64_t local, chunks, begin, end;
};
__device__ __forceinline__ RadixChunk radix_chunk(const BatchView& b, int64_t c) {
  RadixChunk r;
  r.g = find_group(b.chunk_begin, b.num_groups, c);
  r.local = c - b.chunk_begin[r.g];
  r.chunks = b.chunk_begin[r.g + 1] - b.chunk_begin[r.g];
  r.begin = b.id_begin[r.g] + r.local * kRadixChunk;
  const int64_t end = r.begin + kRadixChunk, group_end = b.id_begin[r.g + 1];
  r.end = end < group_end ? end : group_end;
  return r;
}
__device__ __forceinline__ int64_t radix_bin(const BatchView& b, const RadixChunk& r, int digit) {
  return b.chunk_begin[r.g] * kRadixBins + digit * r.chunks + r.local;
}
// The key of position i: keys_in[i], or on the first pass its group-local unique index.
__device__ __forceinline__ int radix_key(const BatchView& b, const int* keys_in, int g, int64_t i) {
  return keys_in ? keys_in[i] : static_cast<int>(b.inverse[i] - b.unique_begin[g]);
}

__global__ void SC_LAUNCH_BOUNDS batch_radix_histogram_kernel(BatchView b, const int* __restrict__ keys_in,
                                                              int64_t num_chunks, int shift, int* __restrict__ hist) {
  for (int64_t c = global_thread(); c < num_chunks; c += grid_threads()) {
    const RadixChunk r = radix_chunk(b, c);
    DigitCounters counts;
    for (int64_t i = r.begin; i < r.end; ++i) counts.increment(radix_digit(radix_key(b, keys_in, r.g, i), shift));
    SC_UNROLL
    for (int d = 0; d < kRadixBins; ++d) hist[radix_bin(b, r, d)] = counts.get(d);
  }
}

// values_in nullptr: the value of position i is i.
__global__ void SC_LAUNCH_BOUNDS batch_radix_scatter_kernel(BatchView b, const int* __restrict__ keys_in,
                                                            const int* __restrict__ values_in, int64_t num_chunks,
                                                            int shift, ScanView bin_offsets, int* __restrict__ keys_out,
                                                            int* __restrict__ values_out) {
  for (int64_t c = global_thread(); c < num_chunks; c += grid_threads()) {
    const RadixChunk r = radix_chunk(b, c);
    DigitCounters seen;
    for (int64_t i = r.begin; i < r.end; ++i) {
      const int key = radix_key(b, keys_in, r.g, i);
      const int digit = radix_digit(key, shift);
      const int at = bin_offsets.at(radix_bin(b, r, digit)) + seen.get(digit);
      seen.increment(digit);
      keys_out[at] = key;
      values_out[at] = values_in ? values_in[i] : static_cast<int>(i);
    }
  }
}

// occ_offsets (U + 1): where each unique id's run starts in the sorted positions (sorted_keys:
// the group-local unique index of each sorted position).
__global__ void SC_LAUNCH_BOUNDS occurrence_bounds_kernel(BatchView b, const int* __restrict__ sorted_keys,
                                                          int* __restrict__ occ_offsets) {
  const int64_t n = b.num_ids;
  for (int64_t j = global_thread(); j < n; j += grid_threads()) {
    const int g = find_group(b.id_begin, b.num_groups, j);
    const int64_t u = b.unique_begin[g] + sorted_keys[j];
    if (j == b.id_begin[g] || sorted_keys[j] != sorted_keys[j - 1]) occ_offsets[u] = static_cast<int>(j);
    if (j == n - 1) occ_offsets[u + 1] = static_cast<int>(n);
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
