#include "sparsecore/serving/predict_protocol.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/raw_features.h"

namespace sparsecore::serving {

namespace {

constexpr size_t pad8(size_t bytes) { return (bytes + 7) & ~size_t{7}; }
const std::byte kZeros[8] = {};

// Reads consecutive pieces of a payload, refusing any read past its end.
class PayloadCursor {
 public:
  explicit PayloadCursor(std::span<const std::byte> payload) : payload_(payload) {}
  // `count` elements of `bytes_each` bytes, then padding to 8; InvalidArgument naming `what`
  // when the payload is shorter.
  const std::byte* take(uint64_t count, size_t bytes_each, const std::string& what) {
    const uint64_t room = payload_.size() - at_;
    SC_CHECK_ARG(count <= room / bytes_each, "predict request: ", what, " (", count,
                 " elements) runs past the end of the payload");
    const std::byte* p = payload_.data() + at_;
    at_ += static_cast<size_t>(count) * bytes_each;
    at_ = std::min(pad8(at_), payload_.size());
    return p;
  }
  size_t remaining() const { return payload_.size() - at_; }

 private:
  std::span<const std::byte> payload_;
  size_t at_ = 0;
};

template <typename T>
std::vector<T> copy_array(const std::byte* p, uint64_t count) {
  std::vector<T> out(static_cast<size_t>(count));
  if (count) std::memcpy(out.data(), p, static_cast<size_t>(count) * sizeof(T));
  return out;
}

}  // namespace

void check_request(const Predictor& p, const OwnedPredictRequest& r) {
  const size_t nf = p.features().size();
  SC_CHECK_ARG(r.batch >= 0, "predict request: batch must be >= 0, got ", r.batch);
  SC_CHECK_ARG(r.ids.size() == nf && r.offsets.size() == nf && r.weights.size() == nf, "predict request: ", nf,
               " features expected, got ", r.ids.size());
  for (size_t f = 0; f < nf; ++f) {
    const std::string& name = p.features()[f].input;
    const auto& off = r.offsets[f];
    const int64_t n = static_cast<int64_t>(r.ids[f].size());
    SC_CHECK_ARG(static_cast<int64_t>(off.size()) == r.batch + 1, "predict request: feature '", name, "' has ",
                 static_cast<int64_t>(off.size()) - 1, " bags, the batch ", r.batch);
    SC_CHECK_ARG(off[0] == 0, "predict request: offsets of feature '", name, "' must start at 0, got ", off[0]);
    for (int64_t b = 0; b < r.batch; ++b)
      SC_CHECK_ARG(off[b + 1] >= off[b], "predict request: offsets of feature '", name, "' decrease at bag ", b);
    SC_CHECK_ARG(off[r.batch] == n, "predict request: offsets of feature '", name, "' end at ", off[r.batch],
                 ", it has ", n, " ids");
    SC_CHECK_ARG(r.weights[f].empty() || static_cast<int64_t>(r.weights[f].size()) == n, "predict request: feature '",
                 name, "' has ", r.weights[f].size(), " weights for ", n, " ids");
    for (float w : r.weights[f])
      SC_CHECK_ARG(std::isfinite(w), "predict request: a weight of feature '", name, "' is not finite");
  }
  for (float x : r.dense) SC_CHECK_ARG(std::isfinite(x), "predict request: a dense value is not finite");
  if (p.has_dense_input()) {
    SC_CHECK_ARG(static_cast<int64_t>(r.dense.size()) == r.batch * p.dense_width(), "predict request: dense needs ",
                 r.batch, " x ", p.dense_width(), " values, got ", r.dense.size());
  } else {
    SC_CHECK_ARG(r.dense.empty(), "predict request: the model has no dense input, got ", r.dense.size(),
                 " dense values");
  }
}

void decode_predict_request(const Predictor& p, std::span<const std::byte> payload, OwnedPredictRequest& out) {
  PayloadCursor cur(payload);
  PredictWireHeader h;
  std::memcpy(&h, cur.take(1, sizeof(h), "the header"), sizeof(h));
  const size_t nf = p.features().size();
  SC_CHECK_ARG(h.num_features == nf, "predict request: ", nf, " features expected, got ", h.num_features);
  SC_CHECK_ARG(h.batch >= 0 && h.batch < std::numeric_limits<int32_t>::max(), "predict request: bad batch ", h.batch);
  const std::byte* fh = cur.take(nf, sizeof(PredictWireFeature), "the feature headers");
  out.batch = h.batch;
  out.ids.resize(nf);
  out.offsets.resize(nf);
  out.weights.resize(nf);
  for (size_t f = 0; f < nf; ++f) {
    PredictWireFeature wf;
    std::memcpy(&wf, fh + f * sizeof(wf), sizeof(wf));
    const std::string& name = p.features()[f].input;
    SC_CHECK_ARG(wf.num_ids >= 0, "predict request: feature '", name, "' has ", wf.num_ids, " ids");
    out.offsets[f] = copy_array<int64_t>(cur.take(h.batch + 1, 8, "offsets of '" + name + "'"), h.batch + 1);
    out.ids[f] = copy_array<int64_t>(cur.take(wf.num_ids, 8, "ids of '" + name + "'"), wf.num_ids);
    out.weights[f].clear();
    if (wf.has_weights)
      out.weights[f] = copy_array<float>(cur.take(wf.num_ids, 4, "weights of '" + name + "'"), wf.num_ids);
  }
  out.dense.clear();
  if (h.has_dense) {
    const uint64_t n = static_cast<uint64_t>(h.batch) * static_cast<uint64_t>(std::max<int64_t>(p.dense_width(), 0));
    out.dense = copy_array<float>(cur.take(n, 4, "dense"), n);
  }
  SC_CHECK_ARG(cur.remaining() == 0, "predict request: ", cur.remaining(), " bytes after the last array");
  check_request(p, out);
}

void encode_predict_request(const FeatureBatch* features, size_t num_features, const float* dense, int64_t dense_width,
                            int64_t batch, std::vector<std::byte>& header, std::vector<iovec>& segments) {
  SC_CHECK_ARG(batch >= 0, "predict: batch must be >= 0, got ", batch);
  header.assign(sizeof(PredictWireHeader) + num_features * sizeof(PredictWireFeature), std::byte{0});
  PredictWireHeader h{static_cast<uint32_t>(num_features), dense != nullptr ? 1u : 0u, batch};
  std::memcpy(header.data(), &h, sizeof(h));
  segments.clear();
  segments.push_back({header.data(), header.size()});
  auto add = [&](const void* p, size_t bytes) {
    if (bytes) segments.push_back({const_cast<void*>(p), bytes});
    if (bytes % 8) segments.push_back({const_cast<std::byte*>(kZeros), 8 - bytes % 8});
  };
  for (size_t f = 0; f < num_features; ++f) {
    const FeatureBatch& fb = features[f];
    PredictWireFeature wf{fb.num_ids, fb.weights != nullptr ? 1u : 0u, 0};
    std::memcpy(header.data() + sizeof(h) + f * sizeof(wf), &wf, sizeof(wf));
    add(fb.offsets, static_cast<size_t>(batch + 1) * 8);
    add(fb.ids, static_cast<size_t>(fb.num_ids) * 8);
    if (fb.weights) add(fb.weights, static_cast<size_t>(fb.num_ids) * 4);
  }
  if (dense) add(dense, static_cast<size_t>(batch * dense_width) * 4);
}

namespace {

// One raw column of the JSON request: per sample a list of values, one value, or null; a
// value is a string or an integer (its decimal text).
RawColumn parse_raw_column(const std::string& name, const Json& samples) {
  SC_CHECK_ARG(samples.is_array(), "predict request: raw column '", name, "' must be a list with one entry per sample");
  RawColumn col;
  auto add = [&](const Json& v) {
    if (v.is_string()) {
      col.values.push_back(v.as_string());
    } else if (v.is_int()) {
      col.values.push_back(std::to_string(v.as_int()));
    } else if (!v.is_null()) {
      throw InvalidArgument("predict request: values of raw column '" + name +
                            "' must be strings or integers (convert other numbers to the text you mean)");
    }
  };
  for (const Json& sample : samples.as_array()) {
    if (sample.is_array()) {
      for (const Json& v : sample.as_array()) add(v);
    } else {
      add(sample);
    }
    col.offsets.push_back(static_cast<int64_t>(col.values.size()));
  }
  return col;
}

}  // namespace

void parse_json_request(const Predictor& p, std::string_view body, OwnedPredictRequest& out, int64_t* timeout_ms) {
  Json doc;
  try {
    doc = Json::parse(body);
  } catch (const CorruptData& e) {
    throw InvalidArgument(std::string("predict request: malformed JSON: ") + e.what());
  }
  SC_CHECK_ARG(doc.is_object(), "predict request: the body must be a JSON object");
  for (const auto& [key, v] : doc.as_object())
    SC_CHECK_ARG(key == "features" || key == "raw" || key == "weights" || key == "dense" || key == "timeout_ms",
                 "predict request: unknown field '", key, "' (expected features, raw, weights, dense, timeout_ms)");
  *timeout_ms = 0;
  if (const Json* t = doc.get("timeout_ms")) {
    SC_CHECK_ARG(t->is_int() && t->as_int() >= 0 && t->as_int() <= 86'400'000,
                 "predict request: timeout_ms must be an integer in [0, 86400000]");
    *timeout_ms = t->as_int();
  }
  static const Json kNone = Json::object();
  const Json* features = doc.get("features");
  SC_CHECK_ARG(!features || features->is_object(), "predict request: 'features' must be an object of feature -> bags");
  if (!features) features = &kNone;
  const Json* raw = doc.get("raw");
  SC_CHECK_ARG(!raw || raw->is_object(), "predict request: 'raw' must be an object of column -> values");
  if (!raw) raw = &kNone;
  const Json* weights = doc.get("weights");
  SC_CHECK_ARG(!weights || weights->is_object(), "predict request: 'weights' must be an object of feature -> bags");
  const size_t nf = p.features().size();
  for (const auto& [key, v] : features->as_object()) {
    bool known = false;
    for (const auto& f : p.features()) known = known || f.input == key;
    SC_CHECK_ARG(known, "predict request: the model has no feature '", key, "'");
  }
  std::map<std::string, RawColumn> columns;
  for (const auto& [key, v] : raw->as_object()) {
    bool known = false;
    for (const auto& f : p.features())
      for (const auto& c : f.columns) known = known || c == key;
    SC_CHECK_ARG(known, "predict request: the model has no raw column '", key, "'");
    columns.emplace(key, parse_raw_column(key, v));
  }
  out.ids.assign(nf, {});
  out.offsets.assign(nf, {});
  out.weights.assign(nf, {});
  int64_t batch = -1;
  auto note_batch = [&](size_t n, const std::string& what) {
    SC_CHECK_ARG(batch < 0 || static_cast<int64_t>(n) == batch, "predict request: ", what, " has ", n,
                 " samples, another field ", batch);
    batch = static_cast<int64_t>(n);
  };
  for (const auto& [name, col] : columns) note_batch(col.offsets.size() - 1, "raw column '" + name + "'");
  for (size_t f = 0; f < nf; ++f) {
    const FeatureSpec& spec = p.features()[f];
    const std::string& name = spec.input;
    const Json* bags = features->get(name);
    std::vector<const RawColumn*> given;
    for (const auto& c : spec.columns)
      if (auto it = columns.find(c); it != columns.end()) given.push_back(&it->second);
    if (bags == nullptr) {
      SC_CHECK_ARG(!spec.columns.empty() && given.size() == spec.columns.size(), "predict request: feature '", name,
                   "' is missing (its ids under 'features'",
                   spec.columns.empty() ? std::string() : ", or its raw columns under 'raw'", ")");
      raw_to_ids(spec, given, std::max<int64_t>(batch, 0), out.ids[f], out.offsets[f]);
      SC_CHECK_ARG(!weights || !weights->get(name), "predict request: weights of '", name,
                   "' need its ids under 'features'");
      continue;
    }
    SC_CHECK_ARG(given.empty(), "predict request: feature '", name, "' is given both as ids and as raw columns");
    SC_CHECK_ARG(bags->is_array(), "predict request: feature '", name, "' must be a list of id lists");
    note_batch(bags->as_array().size(), "feature '" + name + "'");
    out.offsets[f].push_back(0);
    for (const Json& bag : bags->as_array()) {
      SC_CHECK_ARG(bag.is_array(), "predict request: feature '", name, "' must be a list of id lists");
      for (const Json& id : bag.as_array()) {
        SC_CHECK_ARG(id.is_int(), "predict request: ids of feature '", name, "' must be integers");
        out.ids[f].push_back(id.as_int());
      }
      out.offsets[f].push_back(static_cast<int64_t>(out.ids[f].size()));
    }
    const Json* w = weights ? weights->get(name) : nullptr;
    if (w) {
      SC_CHECK_ARG(w->is_array() && w->as_array().size() == bags->as_array().size(), "predict request: weights of '",
                   name, "' must be one list per sample");
      for (size_t b = 0; b < w->as_array().size(); ++b) {
        const Json& wb = w->as_array()[b];
        SC_CHECK_ARG(wb.is_array() && wb.as_array().size() == bags->as_array()[b].as_array().size(),
                     "predict request: weights of '", name, "' sample ", b, " must match its ids");
        for (const Json& x : wb.as_array()) {
          SC_CHECK_ARG(x.is_number(), "predict request: weights of '", name, "' must be numbers");
          out.weights[f].push_back(static_cast<float>(x.as_double()));
        }
      }
    }
  }
  if (weights)
    for (const auto& [key, v] : weights->as_object())
      SC_CHECK_ARG(features->get(key) != nullptr, "predict request: weights name no feature '", key, "' given as ids");
  out.dense.clear();
  if (const Json* d = doc.get("dense")) {
    SC_CHECK_ARG(p.has_dense_input(), "predict request: the model has no dense input");
    SC_CHECK_ARG(d->is_array(), "predict request: 'dense' must be a list of rows");
    note_batch(d->as_array().size(), "dense");
    for (const Json& row : d->as_array()) {
      SC_CHECK_ARG(row.is_array() && static_cast<int64_t>(row.as_array().size()) == p.dense_width(),
                   "predict request: every dense row needs ", p.dense_width(), " numbers");
      for (const Json& x : row.as_array()) {
        SC_CHECK_ARG(x.is_number(), "predict request: dense values must be numbers");
        out.dense.push_back(static_cast<float>(x.as_double()));
      }
    }
  } else {
    SC_CHECK_ARG(!p.has_dense_input(), "predict request: the model needs 'dense' rows of ", p.dense_width(),
                 " numbers");
  }
  out.batch = std::max<int64_t>(batch, 0);
  if (batch < 0)  // a model without features: an empty request is a batch of none
    for (auto& off : out.offsets) off.assign(1, 0);
  check_request(p, out);
}

std::string format_json_outcome(const PredictOutcome& outcome, int64_t batch) {
  std::string s = "{\"logits\": [";
  char buf[32];
  const int64_t w = outcome.output_width;
  for (int64_t b = 0; b < batch; ++b) {
    if (b) s += ", ";
    if (w != 1) s += '[';
    for (int64_t j = 0; j < w; ++j) {
      const float x = outcome.logits[static_cast<size_t>(b * w + j)];
      if (j) s += ", ";
      if (std::isfinite(x)) {
        std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(x));
        s += buf;
      } else {
        s += "null";  // JSON has no NaN or infinity
      }
    }
    if (w != 1) s += ']';
  }
  s += "], \"version\": " + std::to_string(outcome.version) + "}\n";
  return s;
}

std::string model_info_json(const Predictor& p, int64_t version) {
  Json::Array names;
  for (const auto& f : p.features()) names.emplace_back(f.input);
  Json columns = Json::object();
  for (const auto& f : p.features()) {
    Json::Array cs;
    for (const auto& c : f.columns) cs.emplace_back(c);
    columns[f.input] = Json(std::move(cs));
  }
  Json info = Json::object();
  info["features"] = Json(std::move(names));
  info["columns"] = std::move(columns);
  info["dense_width"] = Json(p.has_dense_input() ? p.dense_width() : int64_t{0});
  info["output_width"] = Json(p.output_width());
  info["version"] = Json(version);
  return info.dump();
}

}  // namespace sparsecore::serving
