// Predictor: a whole model served without Python: embedding rows from a RowSource, pooled per
// feature, then the dense network (DenseGraph) to logits.
//
// A request is one batch of B samples: per feature (in the graph's input order, the dense
// input excepted) a CSR bag per sample, ids (n) int64 and offsets (B + 1) int64 with
// offsets[0] = 0, non-decreasing, offsets[B] = n, and optional per-id weights (n) float32; plus
// the dense features (B, width) float32 when the graph has a dense input. Pooling is the
// training engine's: "sum", "mean" (an empty bag gives zeros; with weights, divided by the sum
// of the weights) or "none" (the bag as a sequence, zero padded to the longest bag, for
// din_attention). Ids the source does not hold read as its default row (zeros).
//
// Consistency: all rows of one request are read by one RowSource::read_pooled call, which a source
// that changes while serving (the Subscriber applying deltas) answers from one state, so a
// prediction never mixes two versions of the model.
//
// Thread-safety: predict() may run on many threads at once, each with its own
// PredictorWorkspace; steady-state calls allocate nothing once the workspace has grown.
// Malformed requests throw InvalidArgument naming the feature and what is wrong; nothing is
// read before the whole request has been checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/serving/dense_graph.h"

namespace sparsecore::serving {

enum class ServingPooling : uint8_t { kSum, kMean, kNone };

// One table read of a request: ids (n) host; out (n, dim of the table) host float32.
struct RowRead {
  const std::string* table = nullptr;
  const int64_t* ids = nullptr;
  int64_t n = 0;
  float* out = nullptr;
};

// One feature of a request read and pooled straight into its graph input: the bags (offsets
// (batch + 1), checked by the caller) of ids (num_ids) with optional weights (num_ids), pooled
// by `pooling` into out: (batch, dim) for sum and mean, (batch, max_len, dim) for none (each
// bag as a sequence, zeros past its length; max_len at least its longest bag).
struct PooledRead {
  const std::string* table = nullptr;
  int64_t dim = 0;
  const int64_t* ids = nullptr;
  const int64_t* offsets = nullptr;
  const float* weights = nullptr;
  int64_t num_ids = 0;
  int64_t batch = 0;
  ServingPooling pooling = ServingPooling::kSum;
  int64_t max_len = 0;
  float* out = nullptr;
};

// Memory a RowSource may use while it answers read_pooled, kept by the caller between calls
// (a PredictorWorkspace), so that steady-state reads allocate nothing.
struct RowScratch {
  std::vector<float> rows;
  std::vector<std::byte*> row_ptrs;
  std::vector<int64_t> keys;
  std::vector<RowRead> reads;
};

// Where a Predictor reads embedding rows.
class RowSource {
 public:
  virtual ~RowSource() = default;
  // Floats per row of `table`; NotFound naming it when the source does not serve it.
  virtual int dim(const std::string& table) const = 0;
  // Fills every read from one consistent state (unknown ids: the table's default row).
  // NotFound when a table is not (or no longer) served.
  virtual void read(const RowRead* reads, size_t count) const = 0;
  // Pools every read from one consistent state, summing in id order as the training engine
  // does (a mean divides the sum by the sum of the weights). The default reads the rows with
  // read() into scratch, then pools them; a source that holds its rows pools them in place.
  virtual void read_pooled(const PooledRead* reads, size_t count, RowScratch& scratch) const;
};

// How graph input `input` is made: from table `table` pooled by `pooling`. Raw values become
// its ids as the readers make them (raw_features.h): the values of each of `columns` hashed
// under that column's name, a sample's bag holding them column after column; no columns: the
// feature takes ids only.
struct FeatureSpec {
  std::string input;
  std::string table;
  ServingPooling pooling = ServingPooling::kSum;
  std::vector<std::string> columns;
};

struct FeatureBatch {
  const int64_t* ids = nullptr;
  const int64_t* offsets = nullptr;  // (batch + 1)
  const float* weights = nullptr;    // (n) or null
  int64_t num_ids = 0;
};

class PredictorWorkspace {
 public:
  DenseWorkspace graph;
  RowScratch scratch;         // the row source's
  std::vector<float> pooled;  // pooled inputs, one block per feature
  std::vector<int64_t> lengths;
  std::vector<PooledRead> reads;
  std::vector<DenseInputView> views;
  std::vector<size_t> pooled_at, length_at;  // per feature: where its blocks start
  std::vector<int64_t> max_len;
};

class Predictor {
 public:
  // Every graph input but a "dense" one must be named by exactly one feature, whose table the
  // source serves with the input's width (sequence inputs need pooling none, pooled inputs sum
  // or mean). InvalidArgument naming the mismatch otherwise.
  Predictor(std::vector<FeatureSpec> features, DenseGraph graph, std::shared_ptr<const RowSource> source);

  const DenseGraph& graph() const { return graph_; }
  // features() in graph input order (the dense input, if any, is not a feature).
  const std::vector<FeatureSpec>& features() const { return features_; }
  bool has_dense_input() const { return dense_input_ >= 0; }
  int64_t dense_width() const;
  int64_t output_width() const { return graph_.output_width(); }

  // features: one per features() entry; dense (batch, dense_width()) or null without a dense
  // input; out (batch, output_width()) float32 logits.
  void predict(const FeatureBatch* features, const float* dense, int64_t batch, float* out,
               PredictorWorkspace& ws) const;

 private:
  void check(const FeatureBatch* features, const float* dense, int64_t batch) const;

  std::vector<FeatureSpec> features_;
  std::vector<int> feature_input_;  // graph input index of each feature
  std::vector<int> input_feature_;  // feature of each graph input (-1: the dense input)
  int dense_input_ = -1;
  DenseGraph graph_;
  std::shared_ptr<const RowSource> source_;
};

class Subscriber;

// A model directory served: its Subscriber (the rows, following the export stream) and the
// Predictor over it. The directory holds model.json (format "sparsecore-model", version 1:
// "features" [{input, table, pooling}], "stream": the plain name of the export stream
// directory inside it; a feature may list "columns", the raw value columns hashed into its ids;
// "compressed_tables" {name: CompressedTableSpec} when tables are compressed: their features
// read composed rows, composed_row_source.h), dense/ (DenseGraph::load) and the stream. load_model applies the
// stream's exports that are ready (at least one: NotFound otherwise); call
// subscriber->poll() or start() to follow newer ones while serving.
struct LoadedModel {
  std::shared_ptr<Subscriber> subscriber;
  std::unique_ptr<Predictor> predictor;
};
LoadedModel load_model(const std::string& dir);

}  // namespace sparsecore::serving
