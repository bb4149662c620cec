#include "sparsecore/serving/predictor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/composed_row_source.h"
#include "sparsecore/serving/row_codec.h"
#include "sparsecore/serving/subscriber.h"

namespace sparsecore::serving {

Predictor::Predictor(std::vector<FeatureSpec> features, DenseGraph graph, std::shared_ptr<const RowSource> source)
    : features_(std::move(features)), graph_(std::move(graph)), source_(std::move(source)) {
  SC_CHECK_ARG(source_ != nullptr, "predictor: no row source");
  const auto& inputs = graph_.inputs();
  input_feature_.assign(inputs.size(), -1);
  std::vector<FeatureSpec> ordered;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const auto& in = inputs[k];
    int found = -1;
    for (size_t f = 0; f < features_.size(); ++f)
      if (features_[f].input == in.name) {
        SC_CHECK_ARG(found < 0, "predictor: graph input '", in.name, "' is named by two features");
        found = static_cast<int>(f);
      }
    if (in.kind == "dense") {
      SC_CHECK_ARG(found < 0, "predictor: graph input '", in.name, "' is the dense input, not a feature");
      SC_CHECK_ARG(dense_input_ < 0, "predictor: the graph has two dense inputs");
      dense_input_ = static_cast<int>(k);
      continue;
    }
    SC_CHECK_ARG(found >= 0, "predictor: no feature feeds graph input '", in.name, "'");
    const FeatureSpec& spec = features_[found];
    int dim = 0;
    try {
      dim = source_->dim(spec.table);
    } catch (const NotFound&) {
      throw InvalidArgument("predictor: feature '" + spec.input + "' reads table '" + spec.table +
                            "', which the row source does not serve");
    }
    SC_CHECK_ARG(dim == in.width, "predictor: table '", spec.table, "' has dim ", dim, ", graph input '", in.name,
                 "' width ", in.width);
    const bool sequence = in.kind == "sequence";
    SC_CHECK_ARG(sequence == (spec.pooling == ServingPooling::kNone), "predictor: feature '", spec.input, "' ",
                 sequence ? "feeds a sequence input and needs pooling none"
                          : "feeds a pooled input and needs pooling sum or mean");
    input_feature_[k] = static_cast<int>(ordered.size());
    feature_input_.push_back(static_cast<int>(k));
    ordered.push_back(spec);
  }
  SC_CHECK_ARG(ordered.size() == features_.size(), "predictor: ", features_.size() - ordered.size(),
               " feature(s) name no input of the graph");
  features_ = std::move(ordered);
}

int64_t Predictor::dense_width() const { return dense_input_ < 0 ? 0 : graph_.inputs()[dense_input_].width; }

void Predictor::check(const FeatureBatch* features, const float* dense, int64_t batch) const {
  SC_CHECK_ARG(batch >= 0, "predict: batch must be >= 0, got ", batch);
  for (size_t f = 0; f < features_.size(); ++f) {
    const FeatureBatch& fb = features[f];
    const std::string& name = features_[f].input;
    SC_CHECK_ARG(fb.num_ids >= 0 && (fb.num_ids == 0 || fb.ids != nullptr), "predict: feature '", name, "' has no ids");
    SC_CHECK_ARG(fb.offsets != nullptr, "predict: feature '", name, "' has no offsets");
    SC_CHECK_ARG(fb.offsets[0] == 0, "predict: feature '", name, "' offsets[0] is ", fb.offsets[0], ", not 0");
    for (int64_t b = 0; b < batch; ++b)
      SC_CHECK_ARG(fb.offsets[b + 1] >= fb.offsets[b], "predict: feature '", name, "' offsets decrease at ", b + 1);
    SC_CHECK_ARG(fb.offsets[batch] == fb.num_ids, "predict: feature '", name, "' offsets end at ", fb.offsets[batch],
                 ", not at its ", fb.num_ids, " ids");
    if (fb.weights != nullptr)
      for (int64_t i = 0; i < fb.num_ids; ++i)
        SC_CHECK_ARG(std::isfinite(fb.weights[i]), "predict: feature '", name, "' weight ", i, " is not finite");
  }
  SC_CHECK_ARG(dense_input_ < 0 || dense != nullptr || batch == 0, "predict: the model needs dense features");
  if (dense_input_ >= 0)
    for (int64_t i = 0; i < batch * dense_width(); ++i)
      SC_CHECK_ARG(std::isfinite(dense[i]), "predict: dense feature value ", i, " is not finite");
}

void Predictor::predict(const FeatureBatch* features, const float* dense, int64_t batch, float* out,
                        PredictorWorkspace& ws) const {
  check(features, dense, batch);
  if (batch == 0) return;
  const auto& inputs = graph_.inputs();
  // Where each feature's pooled block (and a sequence's lengths) goes.
  size_t pooled_floats = 0, lengths = 0;
  auto& pooled_at = ws.pooled_at;
  auto& length_at = ws.length_at;
  auto& max_len = ws.max_len;
  pooled_at.resize(features_.size());
  length_at.resize(features_.size());
  max_len.assign(features_.size(), 0);
  for (size_t f = 0; f < features_.size(); ++f) {
    const int64_t width = inputs[feature_input_[f]].width;
    pooled_at[f] = pooled_floats;
    if (features_[f].pooling == ServingPooling::kNone) {
      for (int64_t b = 0; b < batch; ++b)
        max_len[f] = std::max(max_len[f], features[f].offsets[b + 1] - features[f].offsets[b]);
      pooled_floats += static_cast<size_t>(batch * max_len[f] * width);
      length_at[f] = lengths;
      lengths += static_cast<size_t>(batch);
    } else {
      pooled_floats += static_cast<size_t>(batch * width);
    }
  }
  if (ws.pooled.size() < pooled_floats) ws.pooled.resize(pooled_floats);
  if (ws.lengths.size() < lengths) ws.lengths.resize(lengths);
  // Every feature read and pooled in one consistent call.
  ws.reads.clear();
  for (size_t f = 0; f < features_.size(); ++f) {
    const FeatureBatch& fb = features[f];
    ws.reads.push_back({&features_[f].table, inputs[feature_input_[f]].width, fb.ids, fb.offsets, fb.weights,
                        fb.num_ids, batch, features_[f].pooling, max_len[f], ws.pooled.data() + pooled_at[f]});
  }
  source_->read_pooled(ws.reads.data(), ws.reads.size(), ws.scratch);

  ws.views.assign(inputs.size(), DenseInputView{});
  for (size_t f = 0; f < features_.size(); ++f) {
    DenseInputView& view = ws.views[feature_input_[f]];
    view.values = ws.pooled.data() + pooled_at[f];
    if (features_[f].pooling != ServingPooling::kNone) continue;
    int64_t* len = ws.lengths.data() + length_at[f];
    for (int64_t b = 0; b < batch; ++b) len[b] = features[f].offsets[b + 1] - features[f].offsets[b];
    view.max_len = max_len[f];
    view.lengths = len;
  }
  if (dense_input_ >= 0) ws.views[dense_input_].values = dense;
  graph_.run(ws.views.data(), batch, out, ws.graph);
}

void RowSource::read_pooled(const PooledRead* reads, size_t count, RowScratch& scratch) const {
  size_t floats = 0, ids = 0;
  for (size_t r = 0; r < count; ++r) {
    floats += static_cast<size_t>(reads[r].num_ids * reads[r].dim);
    ids = std::max(ids, static_cast<size_t>(reads[r].num_ids));
  }
  if (scratch.rows.size() < floats) scratch.rows.resize(floats);
  if (scratch.row_ptrs.size() < ids) scratch.row_ptrs.resize(ids);
  scratch.reads.clear();
  floats = 0;
  for (size_t r = 0; r < count; ++r) {
    scratch.reads.push_back({reads[r].table, reads[r].ids, reads[r].num_ids, scratch.rows.data() + floats});
    floats += static_cast<size_t>(reads[r].num_ids * reads[r].dim);
  }
  read(scratch.reads.data(), scratch.reads.size());
  for (size_t r = 0; r < count; ++r) {
    const PooledRead& p = reads[r];
    const RowCodec codec(ExportDtype::kFloat32, static_cast<int>(p.dim));
    float* rows = scratch.reads[r].out;
    for (int64_t i = 0; i < p.num_ids; ++i) scratch.row_ptrs[i] = reinterpret_cast<std::byte*>(rows + i * p.dim);
    const BagRows bags{scratch.row_ptrs.data(), p.offsets, p.weights, p.batch};
    if (p.pooling == ServingPooling::kNone)
      sequence_bags(codec, bags, 0, p.batch, p.max_len, 0.0f, p.out);
    else
      pool_bags(codec, bags, 0, p.batch, 0.0f, p.pooling == ServingPooling::kMean, p.out);
  }
}

namespace {

ServingPooling pooling_of(const std::string& name, const std::string& feature) {
  if (name == "sum") return ServingPooling::kSum;
  if (name == "mean") return ServingPooling::kMean;
  if (name == "none") return ServingPooling::kNone;
  throw CorruptData("model.json: feature '" + feature + "' has pooling '" + name + "'");
}

}  // namespace

LoadedModel load_model(const std::string& dir) {
  const auto text = read_regular_file(dir + "/model.json", uint64_t{16} << 20);
  const Json j = Json::parse(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  const std::string format = j.at("format").as_string("format");
  if (format != "sparsecore-model") throw CorruptData("model.json: format is '" + format + "'");
  const int64_t version = j.at("version").as_int("version");
  if (version != 1) throw CorruptData("model.json: version " + std::to_string(version) + " is not supported (1)");
  std::vector<FeatureSpec> features;
  for (const Json& f : j.at("features").as_array("features")) {
    FeatureSpec spec;
    spec.input = f.at("input").as_string("input");
    spec.table = f.at("table").as_string("table");
    spec.pooling = pooling_of(f.at("pooling").as_string("pooling"), spec.input);
    if (const Json* columns = f.get("columns")) {
      for (const Json& c : columns->as_array("columns")) {
        spec.columns.push_back(c.as_string("column"));
        if (spec.columns.back().empty())
          throw CorruptData("model.json: feature '" + spec.input + "' has an empty column name");
      }
    }
    features.push_back(std::move(spec));
  }
  std::vector<CompressedTableSpec> compressed;
  if (const Json* tables = j.get("compressed_tables"))
    for (const auto& [name, spec] : tables->as_object("compressed_tables"))
      compressed.push_back(CompressedTableSpec::from_json(name, spec));
  std::set<std::string> columns;
  for (const auto& spec : features)
    for (const auto& c : spec.columns)
      if (!columns.insert(c).second) throw CorruptData("model.json: column '" + c + "' feeds two features");
  const std::string stream = j.at("stream").as_string("stream");
  if (!is_plain_name(stream)) throw CorruptData("model.json: stream '" + stream + "' is not a plain name");
  LoadedModel m;
  m.subscriber = std::make_shared<Subscriber>(dir + "/" + stream);
  m.subscriber->poll();
  if (m.subscriber->version() < 0) throw NotFound("model '" + dir + "': its export stream holds no complete export");
  try {
    std::shared_ptr<const RowSource> rows = m.subscriber;
    if (!compressed.empty()) rows = std::make_shared<ComposedRowSource>(m.subscriber, std::move(compressed));
    m.predictor = std::make_unique<Predictor>(std::move(features), DenseGraph::load(dir + "/dense"), std::move(rows));
  } catch (const InvalidArgument& e) {
    throw CorruptData(std::string("model '") + dir + "': " + e.what());
  }
  return m;
}

}  // namespace sparsecore::serving
