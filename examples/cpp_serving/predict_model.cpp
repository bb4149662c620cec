// predict_model: serve a whole model (embeddings + dense network) written by training
// (Python `sparsecore.export_model`) from C++, no Python involved. Requests come one sample
// per line on stdin:
//
//   <feature>:<id>,<id>,... <feature>:<id>,... ...   ->  <logit> (or the outputs, space-separated)
//
// Every feature of the model must appear once per line (`user:` for an empty bag). Ids the
// model has not seen read as the table's default row. Consecutive lines are predicted
// together (up to --batch lines per Predictor::predict call); new exports and deltas of the
// model's stream are applied between batches when --poll is given.
//
// Every non-blank line gets exactly one answer line, in order; a line that cannot be served
// (an unknown or missing feature, an id that is not a 64-bit integer) is answered with
// `error line <n>: <why>`, the others as usual, and the exit status is then 1.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/serving/predictor.h"
#include "sparsecore/serving/subscriber.h"

namespace {

using sparsecore::serving::FeatureBatch;
using sparsecore::serving::LoadedModel;
using sparsecore::serving::Predictor;

struct Sample {
  std::vector<std::vector<int64_t>> bags;  // per feature, in the model's order
  std::string error;
  int64_t line = 0;
};

Sample parse_line(const Predictor& p, const std::string& line) {
  Sample s;
  s.bags.resize(p.features().size());
  std::vector<bool> seen(p.features().size(), false);
  std::istringstream in(line);
  std::string token;
  while (in >> token) {
    const size_t colon = token.find(':');
    if (colon == std::string::npos) return Sample{{}, "'" + token + "' is not <feature>:<ids>"};
    const std::string name = token.substr(0, colon);
    size_t f = 0;
    while (f < p.features().size() && p.features()[f].input != name) ++f;
    if (f == p.features().size()) return Sample{{}, "unknown feature '" + name + "'"};
    if (seen[f]) return Sample{{}, "feature '" + name + "' appears twice"};
    seen[f] = true;
    std::istringstream ids(token.substr(colon + 1));
    std::string id;
    while (std::getline(ids, id, ',')) {
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(id.c_str(), &end, 10);
      if (id.empty() || *end != '\0' || errno == ERANGE) return Sample{{}, "id '" + id + "' is not a 64-bit integer"};
      s.bags[f].push_back(v);
    }
  }
  for (size_t f = 0; f < seen.size(); ++f)
    if (!seen[f]) return Sample{{}, "feature '" + p.features()[f].input + "' is missing"};
  return s;
}

// Predicts the valid samples of `batch` in one call and prints one line per sample.
bool answer(const Predictor& p, sparsecore::serving::PredictorWorkspace& ws, const std::vector<Sample>& batch) {
  std::vector<size_t> valid;
  for (size_t i = 0; i < batch.size(); ++i)
    if (batch[i].error.empty()) valid.push_back(i);
  const size_t nf = p.features().size();
  std::vector<std::vector<int64_t>> ids(nf), offsets(nf, std::vector<int64_t>{0});
  for (size_t f = 0; f < nf; ++f)
    for (size_t i : valid) {
      ids[f].insert(ids[f].end(), batch[i].bags[f].begin(), batch[i].bags[f].end());
      offsets[f].push_back(static_cast<int64_t>(ids[f].size()));
    }
  std::vector<FeatureBatch> features(nf);
  for (size_t f = 0; f < nf; ++f)
    features[f] = {ids[f].data(), offsets[f].data(), nullptr, static_cast<int64_t>(ids[f].size())};
  const int64_t width = p.output_width();
  std::vector<float> out(valid.size() * static_cast<size_t>(width));
  std::string failure;
  try {
    p.predict(features.data(), nullptr, static_cast<int64_t>(valid.size()), out.data(), ws);
  } catch (const sparsecore::Error& e) {
    failure = e.what();
  }
  bool ok = failure.empty();
  size_t next = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].error.empty() || !failure.empty()) {
      std::printf("error line %lld: %s\n", static_cast<long long>(batch[i].line),
                  batch[i].error.empty() ? failure.c_str() : batch[i].error.c_str());
      ok = false;
      continue;
    }
    for (int64_t j = 0; j < width; ++j)
      std::printf(j ? " %.9g" : "%.9g", static_cast<double>(out[next * static_cast<size_t>(width) + j]));
    std::printf("\n");
    ++next;
  }
  return ok;
}

int usage(std::FILE* to, int code) {
  std::fprintf(to,
               "usage: predict_model MODEL_DIR [--batch N] [--poll]\n"
               "  reads one sample per line on stdin: <feature>:<id>,<id> ... (every feature of the model)\n"
               "  and prints its logits; --poll applies new exports of the model's stream between batches\n");
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int64_t max_batch = 64;
  bool poll = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return usage(stdout, 0);
    if (a == "--poll") {
      poll = true;
    } else if (a == "--batch" && i + 1 < argc) {
      max_batch = std::atoll(argv[++i]);
      if (max_batch < 1) return usage(stderr, 2);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "predict_model: unknown option '%s'\n", a.c_str());
      return usage(stderr, 2);
    } else if (dir.empty()) {
      dir = a;
    } else {
      return usage(stderr, 2);
    }
  }
  if (dir.empty()) return usage(stderr, 2);
  LoadedModel model;
  try {
    model = sparsecore::serving::load_model(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "predict_model: cannot load '%s': %s\n", dir.c_str(), e.what());
    return 2;
  }
  const Predictor& p = *model.predictor;
  sparsecore::serving::PredictorWorkspace ws;
  std::vector<Sample> batch;
  std::string line;
  int64_t line_no = 0;
  bool ok = true;
  while (std::getline(std::cin, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    batch.push_back(parse_line(p, line));
    batch.back().line = line_no;
    if (static_cast<int64_t>(batch.size()) == max_batch) {
      ok = answer(p, ws, batch) && ok;
      batch.clear();
      if (poll) model.subscriber->poll();
    }
  }
  if (!batch.empty()) ok = answer(p, ws, batch) && ok;
  std::fflush(stdout);
  return ok ? 0 : 1;
}
