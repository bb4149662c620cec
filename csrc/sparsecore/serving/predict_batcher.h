// PredictBatcher: requests from many connections (RPC and HTTP alike) gathered into batches
// and run by a few worker threads over one Predictor.
//
// A worker takes the oldest queued request and waits until the queued samples reach
// max_batch or that request has waited max_wait_us (or a queued request's deadline comes),
// then takes requests in arrival order while their samples fit in max_batch (a request larger
// than max_batch runs alone), concatenates them into one batch, predicts it once and hands
// each request its rows of the logits.
// Requests whose deadline has passed when their batch is formed are answered
// kDeadlineExceeded without running. Each request is checked on its own (check_request) before
// it is queued, so a malformed one is refused at submit and never spoils a batch; should a
// merged batch still fail (a table no longer served), its requests are run one by one so that
// each gets its own answer.
//
// Concatenation keeps results exact: a bag's pooled row depends only on its own ids, and the
// dense network treats the rows of a batch independently, so a request's logits do not depend
// on its batch companions. A feature that some requests weigh and others do not gets weight 1
// for the latter (the same sum and the same mean).
//
// Memory: at most max_queued requests wait (one more is answered kBusy at once). Each worker
// keeps its merge buffers and PredictorWorkspace across batches.
//
// Thread-safety: submit and stats from any thread; stop from one (idempotent, also by the
// destructor): requests still queued are answered kShuttingDown.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sparsecore/serving/predict_protocol.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

class Subscriber;

struct BatcherOptions {
  int max_batch = 256;    // samples per batch
  int max_wait_us = 200;  // how long the oldest request may wait for companions
  int threads = 2;        // worker threads
  int max_queued = 4096;  // requests waiting at most
};

struct BatcherStats {
  uint64_t requests = 0;           // submitted
  uint64_t samples = 0;            // of the requests predicted
  uint64_t batches = 0;            // Predictor::predict calls
  uint64_t rejected = 0;           // refused at submit (malformed, queue full, stopped)
  uint64_t deadline_exceeded = 0;  // dropped past their deadline
  uint64_t failed = 0;             // predictions that threw
  uint64_t queued = 0;             // gauge
};

class PredictBatcher {
 public:
  // `predictor` and `subscriber` (for the version answered; may be null) outlive the batcher.
  PredictBatcher(const Predictor& predictor, const Subscriber* subscriber, BatcherOptions options);
  ~PredictBatcher();
  PredictBatcher(const PredictBatcher&) = delete;
  PredictBatcher& operator=(const PredictBatcher&) = delete;

  // Queues `request` (its `done` is called exactly once: on a worker thread, or here when it
  // is refused: kInvalidArgument when malformed, kBusy when the queue is full, kShuttingDown
  // after stop).
  void submit(std::unique_ptr<OwnedPredictRequest> request);
  void stop();
  BatcherStats stats() const;
  const BatcherOptions& options() const { return options_; }

 private:
  struct Worker;
  void run(Worker& w);
  void predict_batch(Worker& w, std::vector<std::unique_ptr<OwnedPredictRequest>>& batch);
  void predict_merged(Worker& w, std::vector<std::unique_ptr<OwnedPredictRequest>>& batch, size_t begin, size_t end);
  int64_t version() const;

  const Predictor& predictor_;
  const Subscriber* subscriber_;
  BatcherOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<OwnedPredictRequest>> queue_;
  int64_t queued_samples_ = 0;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> requests_{0}, samples_{0}, batches_{0}, rejected_{0}, deadline_exceeded_{0}, failed_{0};
};

}  // namespace sparsecore::serving
