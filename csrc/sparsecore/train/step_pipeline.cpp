#include "sparsecore/train/step_pipeline.h"

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore::train {

StepPipeline::StepPipeline(EmbeddingCollection* collection, std::shared_ptr<BatchSource> source,
                           StepPipelineOptions options)
    : collection_(collection), source_(std::move(source)), options_(std::move(options)) {
  SC_CHECK_ARG(source_ != nullptr, "StepPipeline: source must not be null");
  SC_CHECK_ARG(options_.prefetch >= 1, "StepPipeline: prefetch must be >= 1, got ", options_.prefetch);
  SC_CHECK_ARG(collection_ != nullptr || !options_.pull_rows, "StepPipeline: pull_rows needs a collection");
  if (collection_ != nullptr) {
    groups_ = options_.groups;
    if (groups_.empty())
      for (int t = 0; t < collection_->num_tables(); ++t) groups_.push_back(collection_->table_name(t));
    for (const std::string& name : groups_) tables_.push_back(collection_->table_index(name));
  }
  thread_ = std::thread([this] { produce(); });
}

StepPipeline::~StepPipeline() { close(); }

std::vector<GroupInput> StepPipeline::inputs_of(const SourceBatch& batch) const {
  std::vector<GroupInput> inputs;
  inputs.reserve(groups_.size());
  for (size_t i = 0; i < groups_.size(); ++i) {
    const GroupView* g = batch.group(groups_[i]);
    if (g == nullptr) {
      std::string have;
      for (const GroupView& v : batch.groups) have += (have.empty() ? "" : ", ") + v.name;
      throw InvalidArgument("StepPipeline: the batch has no group '" + groups_[i] +
                            "' named by the feature spec (it has: " + have + ")");
    }
    inputs.push_back({tables_[i], g->ids, g->num_ids, g->offsets, g->num_bags, g->weights});
  }
  return inputs;
}

void StepPipeline::produce() {
  try {
    for (int64_t produced = 0; options_.max_steps < 0 || produced < options_.max_steps; ++produced) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) break;
      }
      std::optional<SourceBatch> batch = source_->next_batch();
      if (!batch) break;
      PipelineStep step;
      step.index = produced;
      step.source_state = source_->state();
      if (collection_ != nullptr) {
        bool starved;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          starved = consumer_waiting_;
        }
        std::optional<InlineParallelScope> own_thread;
        if (!options_.prepare_on_pool && !starved) own_thread.emplace();
        step.prepared = collection_->prepare(inputs_of(*batch), /*train=*/true);
        collection_->plan_backward(*step.prepared);
        if (options_.pull_rows) {
          std::vector<float*> outs;
          for (const PreparedGroup& g : step.prepared->groups) {
            step.pulled.emplace_back(static_cast<size_t>(g.output_size()));
            outs.push_back(step.pulled.back().data());
          }
          collection_->forward(*step.prepared, outs);
        }
      }
      step.batch = std::move(*batch);
      std::unique_lock<std::mutex> lock(mutex_);
      not_full_.wait(lock, [this] { return stop_ || queue_.size() < static_cast<size_t>(options_.prefetch); });
      if (stop_) break;
      queue_.push_back(std::move(step));
      not_empty_.notify_one();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  finished_ = true;
  not_empty_.notify_all();
}

std::optional<PipelineStep> StepPipeline::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  consumer_waiting_ = true;
  not_empty_.wait(lock, [this] { return stop_ || finished_ || !queue_.empty(); });
  consumer_waiting_ = false;
  if (!queue_.empty()) {
    PipelineStep step = std::move(queue_.front());
    queue_.pop_front();
    not_full_.notify_one();
    ++taken_;
    return step;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

bool StepPipeline::wait_ready(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  consumer_waiting_ = true;
  const bool ready = not_empty_.wait_for(lock, timeout, [this] { return stop_ || finished_ || !queue_.empty(); });
  consumer_waiting_ = false;
  return ready;
}

void StepPipeline::check_collection(const char* what) const {
  SC_CHECK_ARG(collection_ != nullptr, "StepPipeline::", what, ": the pipeline has no collection");
}

std::vector<std::vector<float>> StepPipeline::forward(const PipelineStep& step) const {
  check_collection("forward");
  SC_CHECK_ARG(step.prepared != nullptr, "StepPipeline::forward: the step was not prepared");
  if (!step.pulled.empty()) return step.pulled;
  std::vector<std::vector<float>> out;
  std::vector<float*> ptrs;
  for (const PreparedGroup& g : step.prepared->groups) {
    out.emplace_back(static_cast<size_t>(g.output_size()));
    ptrs.push_back(out.back().data());
  }
  collection_->forward(*step.prepared, ptrs);
  return out;
}

int64_t StepPipeline::backward(const PipelineStep& step, const std::vector<const float*>& grads) {
  check_collection("backward");
  SC_CHECK_ARG(step.prepared != nullptr, "StepPipeline::backward: the step was not prepared");
  SC_CHECK_ARG(grads.size() == step.prepared->groups.size(), "StepPipeline::backward: got ", grads.size(),
               " gradients for ", step.prepared->groups.size(), " groups");
  return collection_->backward(*step.prepared, grads);
}

void StepPipeline::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  std::deque<PipelineStep> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dropped.swap(queue_);
  }
}

}  // namespace sparsecore::train
