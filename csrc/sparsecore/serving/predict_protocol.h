// The requests of a prediction server (`sparsecore serve`): one owned request type, its
// binary form on the project's RPC layer, and its JSON form over HTTP.
//
// Binary (method kMethodPredict), little-endian, every array 8-byte aligned:
//   PredictWireHeader {num_features u32, has_dense u32, batch i64}
//   num_features x PredictWireFeature {num_ids i64, has_weights u32, reserved u32}
//   per feature: offsets i64[batch + 1], ids i64[num_ids], weights f32[num_ids] (when
//                has_weights) then zero bytes to the next multiple of 8
//   dense f32[batch * dense_width] (when has_dense)
// Features come in the model's order (kMethodModelInfo names them). The reply is
// {output_width i64, version i64} then logits f32[batch * output_width].
// kMethodModelInfo: empty request; the reply is JSON {"features": [names], "columns":
// {name: [raw columns]}, "dense_width", "output_width", "version"}.
//
// JSON (POST /v1/predict): {"features": {"<name>": [[id, ...], ...], ...} one list of ids per
// sample, "raw": {"<column>": [[value, ...], ...], ...} raw values (strings or integers; per
// sample a list, one value, or null) of the columns a feature is hashed from
// (raw_features.h), "weights": {"<name>": [[w, ...], ...]} (optional, for features given as
// ids, the same shape as the ids), "dense": [[x, ...], ...] (one row per sample, when the
// model has a dense input), "timeout_ms": N (optional)}. Every feature comes either as ids or
// as all of its raw columns. The answer: {"logits": [...] (one number per sample, or one list
// per sample when the model has several outputs), "version": V}.
//
// Every decoder checks every size against what arrived (no read past the payload, no
// overflow) and the request against the model (feature count, batch agreement, offsets
// from 0, non-decreasing, ending at num_ids; dense width) before anything runs, throwing
// InvalidArgument naming the feature and what is wrong.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sparsecore/rpc/frame.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

inline constexpr uint16_t kMethodPredict = 0x0501;
inline constexpr uint16_t kMethodModelInfo = 0x0502;

struct PredictWireHeader {
  uint32_t num_features = 0;
  uint32_t has_dense = 0;
  int64_t batch = 0;
};
struct PredictWireFeature {
  int64_t num_ids = 0;
  uint32_t has_weights = 0;
  uint32_t reserved = 0;
};
struct PredictWireReplyHeader {
  int64_t output_width = 0;
  int64_t version = 0;
};
static_assert(sizeof(PredictWireHeader) == 16 && sizeof(PredictWireFeature) == 16);

// What a finished request receives: status kOk and the logits (batch, output_width), or an
// error status and its message.
struct PredictOutcome {
  rpc::Status status = rpc::Status::kOk;
  std::string error;
  std::vector<float> logits;
  int64_t output_width = 0;
  int64_t version = -1;
};

// One request that owns its arrays: per feature ids, offsets (batch + 1) and weights (empty:
// none); dense (batch, dense width) or empty.
struct OwnedPredictRequest {
  int64_t batch = 0;
  std::vector<std::vector<int64_t>> ids, offsets;
  std::vector<std::vector<float>> weights;
  std::vector<float> dense;
  std::chrono::steady_clock::time_point arrival;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::function<void(PredictOutcome&&)> done;  // called once, on any thread
};

// Checks `r` against `p` (see above). InvalidArgument naming what is wrong.
void check_request(const Predictor& p, const OwnedPredictRequest& r);

// The binary request: a payload decoded into `out` (checked against `p`).
void decode_predict_request(const Predictor& p, std::span<const std::byte> payload, OwnedPredictRequest& out);

// Builds the binary request over the caller's arrays without copying them: `header` receives
// the fixed part, `segments` the iovecs to send (valid while the arrays and `header` live).
// features: one per model feature, in its order; dense (batch, dense_width) or null.
void encode_predict_request(const FeatureBatch* features, size_t num_features, const float* dense, int64_t dense_width,
                            int64_t batch, std::vector<std::byte>& header, std::vector<iovec>& segments);

// The JSON request (checked against `p`); its "timeout_ms" (0 when absent) in *timeout_ms.
// InvalidArgument on anything malformed, naming it.
void parse_json_request(const Predictor& p, std::string_view body, OwnedPredictRequest& out, int64_t* timeout_ms);

// The JSON answer of a successful outcome.
std::string format_json_outcome(const PredictOutcome& outcome, int64_t batch);

// The kMethodModelInfo reply.
std::string model_info_json(const Predictor& p, int64_t version);

}  // namespace sparsecore::serving
