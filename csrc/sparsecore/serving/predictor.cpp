#include "sparsecore/serving/predictor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/composed_row_source.h"
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
  // Rows of every feature, read in one consistent call.
  size_t row_floats = 0, pooled_floats = 0, lengths = 0;
  auto& row_at = ws.row_at;
  auto& pooled_at = ws.pooled_at;
  auto& length_at = ws.length_at;
  auto& max_len = ws.max_len;
  row_at.resize(features_.size());
  pooled_at.resize(features_.size());
  length_at.resize(features_.size());
  max_len.assign(features_.size(), 0);
  for (size_t f = 0; f < features_.size(); ++f) {
    const int64_t width = inputs[feature_input_[f]].width;
    row_at[f] = row_floats;
    row_floats += static_cast<size_t>(features[f].num_ids * width);
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
  if (ws.rows.size() < row_floats) ws.rows.resize(row_floats);
  if (ws.pooled.size() < pooled_floats) ws.pooled.resize(pooled_floats);
  if (ws.lengths.size() < lengths) ws.lengths.resize(lengths);
  ws.reads.clear();
  for (size_t f = 0; f < features_.size(); ++f)
    ws.reads.push_back({&features_[f].table, features[f].ids, features[f].num_ids, ws.rows.data() + row_at[f]});
  source_->read(ws.reads.data(), ws.reads.size());

  ws.views.assign(inputs.size(), DenseInputView{});
  for (size_t f = 0; f < features_.size(); ++f) {
    const FeatureBatch& fb = features[f];
    const int64_t w = inputs[feature_input_[f]].width;
    const float* rows = ws.rows.data() + row_at[f];
    float* pooled = ws.pooled.data() + pooled_at[f];
    DenseInputView& view = ws.views[feature_input_[f]];
    view.values = pooled;
    if (features_[f].pooling == ServingPooling::kNone) {
      const int64_t L = max_len[f];
      std::fill(pooled, pooled + batch * L * w, 0.0f);
      int64_t* len = ws.lengths.data() + length_at[f];
      for (int64_t b = 0; b < batch; ++b) {
        len[b] = fb.offsets[b + 1] - fb.offsets[b];
        for (int64_t t = 0; t < len[b]; ++t) {
          const int64_t i = fb.offsets[b] + t;
          const float s = fb.weights ? fb.weights[i] : 1.0f;
          for (int64_t c = 0; c < w; ++c) pooled[(b * L + t) * w + c] = s * rows[i * w + c];
        }
      }
      view.max_len = L;
      view.lengths = len;
      continue;
    }
    // Sum in id order, then the mean's division (the training engine's order).
    for (int64_t b = 0; b < batch; ++b) {
      float* o = pooled + b * w;
      std::fill(o, o + w, 0.0f);
      float total = 0.0f;
      for (int64_t i = fb.offsets[b]; i < fb.offsets[b + 1]; ++i) {
        const float s = fb.weights ? fb.weights[i] : 1.0f;
        total += s;
        for (int64_t c = 0; c < w; ++c) o[c] += s * rows[i * w + c];
      }
      if (features_[f].pooling == ServingPooling::kMean && fb.offsets[b + 1] > fb.offsets[b] && total != 0.0f)
        for (int64_t c = 0; c < w; ++c) o[c] /= total;
    }
  }
  if (dense_input_ >= 0) ws.views[dense_input_].values = dense;
  graph_.run(ws.views.data(), batch, out, ws.graph);
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
