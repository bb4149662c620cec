#include "sparsecore/serving/predict_batcher.h"

#include <algorithm>
#include <exception>

#include "sparsecore/core/error.h"
#include "sparsecore/core/stat_counter.h"
#include "sparsecore/rpc/rpc_error.h"
#include "sparsecore/serving/subscriber.h"

namespace sparsecore::serving {

using Clock = std::chrono::steady_clock;
using rpc::Status;

// A worker's buffers, kept across batches so that steady state allocates only the answers.
struct PredictBatcher::Worker {
  PredictorWorkspace ws;
  std::vector<std::vector<int64_t>> ids, offsets;
  std::vector<std::vector<float>> weights;
  std::vector<float> dense, out;
  std::vector<FeatureBatch> features;
};

namespace {

// Hands `o` to the request's owner. A completion must not throw; should one, it must not
// make the batch answer that request twice.
void deliver(OwnedPredictRequest& r, PredictOutcome&& o) {
  try {
    r.done(std::move(o));
  } catch (...) {
  }
}

void finish(OwnedPredictRequest& r, Status status, std::string error) {
  PredictOutcome o;
  o.status = status;
  o.error = std::move(error);
  deliver(r, std::move(o));
}

}  // namespace

PredictBatcher::PredictBatcher(const Predictor& predictor, const Subscriber* subscriber, BatcherOptions options)
    : predictor_(predictor), subscriber_(subscriber), options_(options) {
  SC_CHECK_ARG(options_.max_batch >= 1, "max_batch must be >= 1, got ", options_.max_batch);
  SC_CHECK_ARG(options_.max_wait_us >= 0 && options_.max_wait_us <= 10'000'000,
               "max_wait_us must be in [0, 10000000], got ", options_.max_wait_us);
  SC_CHECK_ARG(options_.threads >= 1 && options_.threads <= 256, "threads must be in [1, 256], got ", options_.threads);
  SC_CHECK_ARG(options_.max_queued >= 1, "max_queued must be >= 1, got ", options_.max_queued);
  for (int t = 0; t < options_.threads; ++t) workers_.push_back(std::make_unique<Worker>());
  for (int t = 0; t < options_.threads; ++t) threads_.emplace_back([this, t] { run(*workers_[t]); });
}

PredictBatcher::~PredictBatcher() { stop(); }

void PredictBatcher::stop() {
  std::deque<std::unique_ptr<OwnedPredictRequest>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    left.swap(queue_);
    queued_samples_ = 0;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  for (auto& r : left) finish(*r, Status::kShuttingDown, "the prediction server is stopping");
}

BatcherStats PredictBatcher::stats() const {
  BatcherStats s;
  s.requests = stat_value(requests_);
  s.samples = stat_value(samples_);
  s.batches = stat_value(batches_);
  s.rejected = stat_value(rejected_);
  s.deadline_exceeded = stat_value(deadline_exceeded_);
  s.failed = stat_value(failed_);
  std::lock_guard<std::mutex> lock(mutex_);
  s.queued = queue_.size();
  return s;
}

int64_t PredictBatcher::version() const { return subscriber_ ? subscriber_->version() : -1; }

void PredictBatcher::submit(std::unique_ptr<OwnedPredictRequest> request) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  try {
    check_request(predictor_, *request);
  } catch (const InvalidArgument& e) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    finish(*request, Status::kInvalidArgument, e.what());
    return;
  }
  Status refused = Status::kOk;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      refused = Status::kShuttingDown;
    } else if (queue_.size() >= static_cast<size_t>(options_.max_queued)) {
      refused = Status::kBusy;
    } else {
      request->arrival = Clock::now();
      queued_samples_ += request->batch;
      queue_.push_back(std::move(request));
    }
  }
  if (refused == Status::kOk) {
    cv_.notify_all();
    return;
  }
  rejected_.fetch_add(1, std::memory_order_relaxed);
  finish(*request, refused,
         refused == Status::kBusy ? "too many queued predictions" : "the prediction server is stopping");
}

void PredictBatcher::run(Worker& w) {
  std::vector<std::unique_ptr<OwnedPredictRequest>> batch;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    // Wait for companions: until max_batch samples are queued or the oldest has waited long
    // enough (another worker may take the queue meanwhile). A queued request whose deadline
    // comes first closes the batch then, so that it is answered at its deadline.
    auto until = queue_.front()->arrival + std::chrono::microseconds(options_.max_wait_us);
    for (const auto& r : queue_) until = std::min(until, r->deadline);
    while (!stopping_ && !queue_.empty() && queued_samples_ < options_.max_batch && Clock::now() < until)
      cv_.wait_until(lock, until);
    if (stopping_) return;
    if (queue_.empty()) continue;
    int64_t samples = 0;
    while (!queue_.empty() && (batch.empty() || samples + queue_.front()->batch <= options_.max_batch)) {
      samples += queue_.front()->batch;
      queued_samples_ -= queue_.front()->batch;
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    lock.unlock();
    predict_batch(w, batch);
    batch.clear();
    lock.lock();
  }
}

void PredictBatcher::predict_batch(Worker& w, std::vector<std::unique_ptr<OwnedPredictRequest>>& batch) {
  const auto now = Clock::now();
  size_t live = 0;
  for (auto& r : batch) {
    if (r->deadline <= now) {
      deadline_exceeded_.fetch_add(1, std::memory_order_relaxed);
      finish(*r, Status::kDeadlineExceeded, "the request's deadline passed before it could be predicted");
    } else {
      batch[live++] = std::move(r);
    }
  }
  batch.resize(live);
  if (batch.empty()) return;
  try {
    predict_merged(w, batch, 0, batch.size());
  } catch (...) {
    if (batch.size() == 1) {
      failed_.fetch_add(1, std::memory_order_relaxed);
      std::string message;
      Status s = rpc::status_of_current_exception(&message);
      finish(*batch[0], s, message);
      return;
    }
    for (size_t i = 0; i < batch.size(); ++i) {  // each request its own answer
      try {
        predict_merged(w, batch, i, i + 1);
      } catch (...) {
        failed_.fetch_add(1, std::memory_order_relaxed);
        std::string message;
        Status s = rpc::status_of_current_exception(&message);
        finish(*batch[i], s, message);
      }
    }
  }
}

void PredictBatcher::predict_merged(Worker& w, std::vector<std::unique_ptr<OwnedPredictRequest>>& batch, size_t begin,
                                    size_t end) {
  const size_t nf = predictor_.features().size();
  const int64_t ow = predictor_.output_width();
  w.ids.resize(nf);
  w.offsets.resize(nf);
  w.weights.resize(nf);
  w.features.assign(nf, FeatureBatch{});
  int64_t total = 0;
  for (size_t i = begin; i < end; ++i) total += batch[i]->batch;
  for (size_t f = 0; f < nf; ++f) {
    auto& ids = w.ids[f];
    auto& off = w.offsets[f];
    auto& wt = w.weights[f];
    ids.clear();
    off.assign(1, 0);
    wt.clear();
    bool weighted = false;
    for (size_t i = begin; i < end; ++i) weighted = weighted || !batch[i]->weights[f].empty();
    for (size_t i = begin; i < end; ++i) {
      const OwnedPredictRequest& r = *batch[i];
      const int64_t base = static_cast<int64_t>(ids.size());
      ids.insert(ids.end(), r.ids[f].begin(), r.ids[f].end());
      for (int64_t b = 1; b <= r.batch; ++b) off.push_back(base + r.offsets[f][b]);
      if (weighted) {
        if (r.weights[f].empty())
          wt.insert(wt.end(), r.ids[f].size(), 1.0f);
        else
          wt.insert(wt.end(), r.weights[f].begin(), r.weights[f].end());
      }
    }
    w.features[f] =
        FeatureBatch{ids.data(), off.data(), weighted ? wt.data() : nullptr, static_cast<int64_t>(ids.size())};
  }
  w.dense.clear();
  if (predictor_.has_dense_input())
    for (size_t i = begin; i < end; ++i) w.dense.insert(w.dense.end(), batch[i]->dense.begin(), batch[i]->dense.end());
  w.out.resize(static_cast<size_t>(total * ow));
  const int64_t v = version();  // as the batch starts (a delta applied meanwhile may be newer)
  predictor_.predict(w.features.data(), predictor_.has_dense_input() ? w.dense.data() : nullptr, total, w.out.data(),
                     w.ws);
  batches_.fetch_add(1, std::memory_order_relaxed);
  samples_.fetch_add(static_cast<uint64_t>(total), std::memory_order_relaxed);
  int64_t row = 0;
  for (size_t i = begin; i < end; ++i) {
    OwnedPredictRequest& r = *batch[i];
    PredictOutcome o;
    o.output_width = ow;
    o.version = v;
    o.logits.assign(w.out.begin() + row * ow, w.out.begin() + (row + r.batch) * ow);
    row += r.batch;
    deliver(r, std::move(o));
  }
}

}  // namespace sparsecore::serving
