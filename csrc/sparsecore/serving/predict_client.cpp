#include "sparsecore/serving/predict_client.h"

#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/predict_protocol.h"

namespace sparsecore::serving {

PredictClient::PredictClient(const std::string& host, int port, rpc::ClientOptions options)
    : client_(host, port, std::move(options)) {
  refresh();
}

RemoteModelInfo PredictClient::refresh(int timeout_ms) {
  rpc::Response r = client_.call(kMethodModelInfo, {}, timeout_ms);
  const Json j = Json::parse(std::string_view(reinterpret_cast<const char*>(r.data.data()), r.bytes));
  RemoteModelInfo info;
  for (const Json& name : j.at("features").as_array("features")) {
    info.features.push_back(name.as_string("feature"));
    info.columns.emplace_back();
    if (const Json* cs = j.at("columns").get(info.features.back()))
      for (const Json& c : cs->as_array("columns")) info.columns.back().push_back(c.as_string("column"));
  }
  info.dense_width = j.at("dense_width").as_int("dense_width");
  info.output_width = j.at("output_width").as_int("output_width");
  info.version = j.at("version").as_int("version");
  info_ = info;
  return info;
}

int64_t PredictClient::predict(const FeatureBatch* features, size_t num_features, const float* dense, int64_t batch,
                               float* out, int timeout_ms) {
  SC_CHECK_ARG(num_features == info_.features.size(), "predict: the model reads ", info_.features.size(),
               " features, got ", num_features);
  SC_CHECK_ARG(batch >= 0, "predict: batch must be >= 0, got ", batch);
  for (size_t f = 0; f < num_features; ++f)
    SC_CHECK_ARG(features[f].offsets != nullptr && (features[f].num_ids == 0 || features[f].ids != nullptr),
                 "predict: feature '", info_.features[f], "' needs ids and offsets");
  if (info_.dense_width > 0)
    SC_CHECK_ARG(dense != nullptr || batch == 0, "predict: the model needs dense features");
  else
    SC_CHECK_ARG(dense == nullptr, "predict: the model has no dense input");
  std::vector<std::byte> header;
  std::vector<iovec> segments;
  encode_predict_request(features, num_features, dense, info_.dense_width, batch, header, segments);
  PredictWireReplyHeader h;
  const size_t out_bytes = static_cast<size_t>(batch * info_.output_width) * sizeof(float);
  iovec into[2] = {{&h, sizeof(h)}, {out, out_bytes}};
  rpc::Response r = client_.call_async(kMethodPredict, segments, timeout_ms, std::span<const iovec>(into, 2)).get();
  if (!r.in_caller_buffer) {  // a reply of another size: the model changed shape under us
    SC_CHECK(r.bytes >= sizeof(h), CorruptData, "predict: a reply of ", r.bytes, " bytes");
    std::memcpy(&h, r.data.data(), sizeof(h));
    throw InvalidArgument("predict: the server answered " + std::to_string(r.bytes - sizeof(h)) + " bytes of logits (" +
                          std::to_string(h.output_width) + " per sample), " + std::to_string(out_bytes) +
                          " expected; call refresh()");
  }
  SC_CHECK(r.bytes == sizeof(h) + out_bytes && h.output_width == info_.output_width, CorruptData,
           "predict: a reply of ", r.bytes, " bytes, ", sizeof(h) + out_bytes, " expected");
  return h.version;
}

}  // namespace sparsecore::serving
