// PredictClient: the C++ client of a PredictServer's RPC port (predict_protocol.h): one
// connection, many calls in flight from many threads (rpc::RpcClient underneath).
//
// Failures: the server's typed errors as thrown there (InvalidArgument naming what is wrong
// in the request, RpcTimeout past the call's deadline, RpcAuthError for a wrong token,
// RpcConnectionError once the server is gone).
//
// Thread-safety: every method may be called from many threads at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/rpc/rpc_client.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

struct RemoteModelInfo {
  std::vector<std::string> features;              // in the order predict() takes them
  std::vector<std::vector<std::string>> columns;  // per feature: its raw columns (raw_features.h)
  int64_t dense_width = 0;                        // 0: no dense input
  int64_t output_width = 1;
  int64_t version = -1;  // when info() was asked
};

class PredictClient {
 public:
  // Connects, authenticates and asks the model's inputs (kMethodModelInfo).
  PredictClient(const std::string& host, int port, rpc::ClientOptions options = {});

  // The model's inputs as learned at connect; refresh() asks again (and the version).
  const RemoteModelInfo& info() const { return info_; }
  RemoteModelInfo refresh(int timeout_ms = -1);

  // features: one per info().features, in that order (as Predictor::predict takes them);
  // dense (batch, dense_width) or null; out (batch, output_width) float32. Returns the version
  // of the rows that answered. timeout_ms: -1 the client's default, 0 none.
  int64_t predict(const FeatureBatch* features, size_t num_features, const float* dense, int64_t batch, float* out,
                  int timeout_ms = -1);

 private:
  rpc::RpcClient client_;
  RemoteModelInfo info_;
};

}  // namespace sparsecore::serving
