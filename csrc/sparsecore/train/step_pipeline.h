// StepPipeline: the pipelined training step on C++ threads (docs/architecture.md, "Threads").
//
//   producer thread:  source.next_batch() -> EmbeddingCollection::prepare(train = true)
//                     (validate, dedup, find-or-insert rows) [-> forward, with pull_rows]
//                     -> a bounded queue of `prefetch` prepared steps
//   consumer (the caller's thread):  next() -> forward(step) -> the dense side
//                     -> backward(step, pooled gradients) (the fused update)
//
// Row values are read when the consumer calls forward(), after the previous step's
// backward, so prefetching does not make training stale; pull_rows = true pools each step's
// rows on the producer instead (one step stale, more overlap). The producer also builds what
// the step's backward needs (EmbeddingCollection::plan_backward), off the consumer's path.
//
// Threads: the consumer's forward and backward run on the compute pool, and the dense step
// between them on the framework's own threads, one after the other, each with every core.
// With prepare_on_pool = false (the default) the producer prepares on its own thread only
// (InlineParallelScope), so while it works on step k+1 the process runs at most one thread
// more than there are cores, and the consumer's forward and backward never wait for a
// parallel region of the producer's; only while the consumer is waiting for a step (the
// producer is behind) does the producer take the pool. The prepared steps are the same
// either way (every op is deterministic for any thread count). Steps are prepared in source
// order on one thread and every op is deterministic for any thread count, so a run is
// reproducible and gives the same rows as any other driver of the same calls in the same order.
//
// Feature spec: options.groups names the source groups read, in order; group i feeds the
// table of the same name (empty: every table of the collection, in table order). Without a
// collection (nullptr) the pipeline only reads: steps carry the source's batch and state and
// `prepared` stays null (a source that plans by itself, e.g. a foreign backend's).
//
// Errors: an exception of the source or of prepare stops the producer; next() returns the
// steps produced before it, then rethrows it (the same type and message) on this and every
// later call. close() (also the destructor) stops and joins the producer whatever it is
// doing: waiting for room in a full queue, or reading (it finishes the current batch first,
// so a source that blocks forever blocks close()). Steps already handed out stay valid.
// A source must not close or destroy its own pipeline (the producer cannot join itself).
//
// Thread-safety: next(), forward(), backward() and close() are called by one consumer thread.
// Ownership: the pipeline shares the source; the collection must outlive the pipeline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/train/batch_source.h"
#include "sparsecore/train/pipeline_step.h"

namespace sparsecore::train {

struct StepPipelineOptions {
  int prefetch = 2;                 // prepared steps queued ahead of the consumer, >= 1
  int64_t max_steps = -1;           // batches read in all; < 0: until the source ends
  std::vector<std::string> groups;  // the feature spec (see above)
  bool pull_rows = false;           // pool rows on the producer (one step stale)
  bool prepare_on_pool = false;     // the producer always prepares on the compute pool
};

class StepPipeline {
 public:
  // Starts the producer thread. Throws InvalidArgument for prefetch < 1 or a null source,
  // NotFound for a feature-spec group that names no table.
  StepPipeline(EmbeddingCollection* collection, std::shared_ptr<BatchSource> source, StepPipelineOptions options);
  ~StepPipeline();
  StepPipeline(const StepPipeline&) = delete;
  StepPipeline& operator=(const StepPipeline&) = delete;

  // The next prepared step, blocking until there is one; nullopt once the source ended (or
  // max_steps were read, or after close()). Rethrows the producer's error (see above).
  std::optional<PipelineStep> next();
  // Waits up to `timeout` until next() would not block; true when it would not. Lets a
  // caller that must stay responsive (a Python thread handling signals) wait in slices.
  bool wait_ready(std::chrono::milliseconds timeout);

  // Pooled rows of each group of `step` (PreparedGroup::output_size() floats each): read
  // now, or the rows pulled by the producer when pull_rows.
  std::vector<std::vector<float>> forward(const PipelineStep& step) const;
  // Applies the gradients of forward's outputs (same shapes, host) with the fused update;
  // returns the new step count. NaN/Inf gradients throw InvalidArgument and change nothing.
  int64_t backward(const PipelineStep& step, const std::vector<const float*>& grads);

  // Stops and joins the producer; idempotent. Queued steps are dropped.
  void close();

  // Feature-spec group names, in the order of the prepared groups.
  const std::vector<std::string>& groups() const { return groups_; }
  int64_t steps_taken() const { return taken_; }

 private:
  void produce();
  std::vector<GroupInput> inputs_of(const SourceBatch& batch) const;
  void check_collection(const char* what) const;

  EmbeddingCollection* collection_;
  std::shared_ptr<BatchSource> source_;
  StepPipelineOptions options_;
  std::vector<std::string> groups_;
  std::vector<int> tables_;
  int64_t taken_ = 0;

  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<PipelineStep> queue_;
  bool consumer_waiting_ = false;  // next() or wait_ready() is blocked on an empty queue
  bool stop_ = false;
  bool finished_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace sparsecore::train
