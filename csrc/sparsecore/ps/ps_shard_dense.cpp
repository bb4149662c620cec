// PsShard's dense variables with an optimizer (ps_shard.h): the whole variable is one row of
// the update rules of optim/update_rules.h, so a dense variable on a server follows the same
// rule as a table row.
#include <cmath>
#include <cstring>

#include <filesystem>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/optim/update_rules.h"
#include "sparsecore/ps/ps_shard.h"

namespace sparsecore::ps {
namespace {

constexpr int64_t kMaxDenseRuleSize = int64_t{1} << 28;  // floats, as dense()

void check_finite(const float* v, int64_t n, const std::string& name, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    SC_CHECK_ARG(std::isfinite(v[i]), what, " of dense variable '", name, "' contain NaN or Inf; nothing changed");
}

}  // namespace

void PsShard::dense_create(const std::string& name, const float* values, int64_t size, const OptimizerConfig& config) {
  SC_CHECK_ARG(size >= 1 && size <= kMaxDenseRuleSize, "dense variable '", name, "' needs a size in [1, 2^28], got ",
               size);
  config.validate();
  auto rule = dense_rules_.find(name);
  auto existing = dense_.find(name);
  if (rule != dense_rules_.end()) {
    SC_CHECK_ARG(static_cast<int64_t>(existing->second.size()) == size &&
                     rule->second.config.to_json().dump() == config.to_json().dump(),
                 "dense variable '", name, "' exists with size ", existing->second.size(), " and optimizer ",
                 rule->second.config.to_json().dump(), "; it was created again with size ", size, " and optimizer ",
                 config.to_json().dump());
    return;
  }
  // A variable without a rule (a plain one, or restored from a snapshot of format 1, which
  // kept values only) keeps its values and takes the rule with a fresh state.
  if (existing != dense_.end())
    SC_CHECK_ARG(static_cast<int64_t>(existing->second.size()) == size, "dense variable '", name, "' has size ",
                 existing->second.size(), ", not ", size);
  else
    check_finite(values, size, name, "initial values");
  DenseRule r;
  r.config = config;
  r.state.resize(static_cast<size_t>(config.state_dim(static_cast<int>(size))));
  rules::init_state(config, r.state.data(), static_cast<int>(size));
  if (existing == dense_.end()) dense_.emplace(name, std::vector<float>(values, values + size));
  dense_rules_.emplace(name, std::move(r));
}

PsShard::PushOutcome PsShard::dense_step(const std::string& name, const float* grads, int64_t size, int64_t step,
                                         uint32_t worker, uint32_t num_workers) {
  auto rule = dense_rules_.find(name);
  if (rule == dense_rules_.end())
    throw NotFound("no dense variable '" + name + "' with an optimizer (create it with dense_create)");
  std::vector<float>& w = dense_.at(name);
  SC_CHECK_ARG(static_cast<int64_t>(w.size()) == size, "gradient of dense variable '", name, "' has ", size,
               " values, expected ", w.size());
  check_finite(grads, size, name, "gradients");
  DenseRule& r = rule->second;
  PushOutcome out;
  std::vector<float> sum;
  if (num_workers > 0) {
    SC_CHECK_ARG(worker < num_workers, "worker ", worker, " out of range for ", num_workers, " workers");
    if (!r.pending.empty() && (r.sync_step != step || r.pending.count(worker) > 0)) {
      out.aborted_step = r.sync_step;
      r.pending.clear();
    }
    r.sync_step = step;
    r.pending[worker].assign(grads, grads + size);
    if (r.pending.size() < num_workers) return out;
    sum = std::move(r.pending.begin()->second);  // worker order: the map is ordered by rank
    for (auto it = std::next(r.pending.begin()); it != r.pending.end(); ++it)
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += it->second[i];
    r.pending.clear();
    grads = sum.data();
  }
  // Applied to copies first: an update that overflows changes nothing.
  std::vector<float> next_w = w, next_state = r.state;
  const uint32_t count = r.count + 1;
  rules::apply(r.config, next_w.data(), next_state.data(), grads, static_cast<int>(size), count, count);
  check_finite(next_w.data(), size, name, "updated values");
  check_finite(next_state.data(), static_cast<int64_t>(next_state.size()), name, "updated optimizer state");
  w = std::move(next_w);
  r.state = std::move(next_state);
  r.count = count;
  out.complete = true;
  return out;
}

std::vector<std::pair<std::string, int64_t>> PsShard::abort_dense_steps() {
  std::vector<std::pair<std::string, int64_t>> aborted;
  for (auto& [name, r] : dense_rules_)
    if (!r.pending.empty()) {
      aborted.emplace_back(name, r.sync_step);
      r.pending.clear();
    }
  return aborted;
}

Json PsShard::encode_dense(std::vector<float>& file) const {
  Json entries = Json::array();
  for (const auto& [name, values] : dense_) {
    const size_t begin = file.size();
    file.insert(file.end(), values.begin(), values.end());
    Json e = Json::object();
    e["name"] = name;
    e["size"] = static_cast<int64_t>(values.size());
    auto rule = dense_rules_.find(name);
    if (rule != dense_rules_.end()) {
      file.insert(file.end(), rule->second.state.begin(), rule->second.state.end());
      e["optimizer"] = rule->second.config.to_json();
      e["state_size"] = static_cast<int64_t>(rule->second.state.size());
      e["count"] = static_cast<int64_t>(rule->second.count);
    } else {
      e["optimizer"] = Json(nullptr);
      e["state_size"] = 0;
      e["count"] = 0;
    }
    e["checksum"] = checksum_hex(checksum64(file.data() + begin, (file.size() - begin) * sizeof(float)));
    entries.push_back(std::move(e));
  }
  return entries;
}

void PsShard::read_dense(const std::string& shard_dir, int64_t total_floats,
                         const std::vector<const DenseEntry*>& wanted, std::map<std::string, std::vector<float>>& dense,
                         std::map<std::string, DenseRule>& rules) {
  if (wanted.empty()) return;
  SC_CHECK(is_real_directory(shard_dir), CorruptData, "shard directory '", shard_dir, "' is missing or a symlink");
  const std::string path = (std::filesystem::path(shard_dir) / kDenseFileName).string();
  File f = File::open_regular(path);  // a symlink, FIFO or device: CorruptData
  const uint64_t bytes = f.size();
  SC_CHECK(bytes == static_cast<uint64_t>(total_floats) * sizeof(float), CorruptData, "'", path, "' holds ", bytes,
           " bytes, its marker lists ", total_floats, " floats");
  for (const DenseEntry* e : wanted) {
    std::vector<float> floats(static_cast<size_t>(e->size + e->state_size));
    const size_t n = floats.size() * sizeof(float);
    SC_CHECK(f.read_at(floats.data(), n, static_cast<uint64_t>(e->offset) * sizeof(float)) == n, CorruptData, "'", path,
             "' is truncated");
    SC_CHECK(checksum64(floats.data(), n) == e->checksum, CorruptData, "dense variable '", e->name, "' in '", path,
             "' does not match its checksum");
    if (e->has_optimizer) {
      DenseRule r;
      r.config = e->optimizer;
      r.state.assign(floats.begin() + e->size, floats.end());
      r.count = e->count;
      rules[e->name] = std::move(r);
    } else {
      rules.erase(e->name);
    }
    floats.resize(static_cast<size_t>(e->size));
    dense[e->name] = std::move(floats);
  }
}

}  // namespace sparsecore::ps
