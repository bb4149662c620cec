// The batch planning and composition of compressed tables (table/compressed_ids.h maps one
// id to its component rows). A compressed table is held by a collection as its component
// tables, ordinary num_embeddings tables (plus, for a mixed table, a hash table of exact rows).
// One group of a compressed table becomes, per batch:
//   plan_compressed_group   validate the group, dedup its ids once (the one dedup primitive),
//                           map each distinct id to its component keys; component c's core
//                           group is one bag of keys_per_id keys per distinct id (weights: the
//                           signs of signed random coding), and a mixed table's exact group one
//                           bag of one id per distinct id
//   compose_compressed_group  each distinct id's row from its component rows (sum, concat or
//                           element-wise product, plus its exact row), then the bags pooled from
//                           those rows by the engine's own pooling (weights, mean, none)
//   split_compressed_gradient  the pooled gradient summed per distinct id (the engine's own
//                           segment sum, in position order), then mapped onto each component:
//                           the same rows (sum), the matching slice (concat), or times the
//                           product of the other components' rows (mul)
// Composing per distinct id is what the math needs for mul (a product is not linear). The
// linear combines (sum, concat) take a shorter plan (CompressedGroupPlan::per_position): every
// position maps to its keys, each component pools the table's bags itself (weights times
// signs, mean as weights over the bag's weight sum), compose adds or concatenates the pooled
// outputs and split hands each component the gradient or its slice; a mixed table's exact
// group is the table's own bags. Either way each component row gets one summed gradient per
// step from the fused update, whatever store holds it.
//
// Thread-safety: a plan belongs to one batch; compose writes its rows (kept for a mul
// backward), so compose and split of one plan must not run concurrently. Each call uses the
// compute pool. Memory: every pointer is host memory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/table/compressed_ids.h"

namespace sparsecore {

// How one compressed table of a collection maps onto its core tables.
struct CompressedLayout {
  std::string name;  // the table's name (errors name it)
  CompressionSpec spec;
  uint64_t base_seed = 0;                  // the mapping seed (compression.base_seed)
  std::vector<int> components;             // core table of each component, in component order
  std::vector<Pooling> component_pooling;  // each component table's pooling: sum, or none (rows kept apart)
  int exact = -1;                          // core table of a mixed table's exact rows, or -1
  Pooling exact_pooling = Pooling::kSum;
  int dim = 0;                      // composed dim
  int component_dim = 0;            // dim of each component row (dim / components for concat)
  Pooling pooling = Pooling::kSum;  // the table's pooling of the composed rows

  // InvalidArgument naming the table when the fields disagree (counts, dims, pooling).
  void validate() const;
};

// One compressed group of a batch.
struct CompressedGroupPlan {
  const CompressedLayout* layout = nullptr;
  // The user's bags over the group's distinct ids (table -1): offsets, weights, max_len,
  // unique_keys (the distinct ids in order of first position), inverse; unique_rows point into
  // `composed` once composed.
  PreparedGroup bags;
  std::vector<PodVector<int64_t>> keys;  // per component: (num_unique * keys_per_id)
  PodVector<float> signs;                // (units * keys_per_id) key weights (signs; per_position: weights), or empty
  PodVector<int64_t> key_offsets;        // (units + 1): u * keys_per_id; units: distinct ids, or bags
  PodVector<int64_t> unit_offsets;       // (num_unique + 1): u (the exact group's bags of one)
  PodVector<float> composed;             // (num_unique, dim), by compose
  std::vector<PodVector<float>> rows;    // mul: each component's row per distinct id, by compose
  bool is_composed = false;
  // sum / concat: every position maps to its keys instead (the composition is linear, so each
  // component pools the table's bags itself, with the table's weights times the signs; mean
  // becomes weights / the bag's weight sum). No per-id pass; bags.unique_keys stays empty and
  // `ids` keeps the group's ids for the exact group.
  bool per_position = false;
  PodVector<int64_t> ids;  // per_position: (num_ids)

  int num_core_groups() const { return static_cast<int>(keys.size()) + (layout->exact >= 0 ? 1 : 0); }
  // Floats of core group i's output (= of its gradient).
  int64_t core_output_size(int i) const;
  // Shape of core group i's output: (num_unique, dim) or (num_unique, slots, dim) for a
  // table pooled "none".
  std::vector<int64_t> core_output_shape(int i) const;
  // Shape of the composed output: (batch_size, dim) or (batch_size, max_len, dim).
  std::vector<int64_t> output_shape() const;
  // Whether split needs compose first (mul keeps its component rows from compose).
  bool needs_rows() const { return layout->spec.combine == CompressionCombine::kMul && !is_composed; }
};

// Validates `in` (as validate_group_inputs) and plans it. InvalidArgument naming the table.
CompressedGroupPlan plan_compressed_group(const CompressedLayout& layout, const GroupInput& in);

// The core groups of a plan (components in order, then exact), pointing into the plan.
void append_core_inputs(const CompressedGroupPlan& plan, std::vector<GroupInput>& out);

// out (output_shape) from the core groups' outputs (core_output_shape each, in order).
void compose_compressed_group(CompressedGroupPlan& plan, const std::vector<const float*>& core_outputs, float* out);

// Whether grad (output_shape) holds finite values only.
bool compressed_gradient_is_finite(const CompressedGroupPlan& plan, const float* grad);

// core_grads (core_output_shape each) from grad (output_shape). InvalidArgument naming the
// table when grad holds NaN or Inf, or the plan of a mul table was never composed.
void split_compressed_gradient(const CompressedGroupPlan& plan, const float* grad,
                               const std::vector<float*>& core_grads);

}  // namespace sparsecore
