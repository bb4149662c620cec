// serve_embeddings: load a checkpoint written by training (Python `EmbeddingCollection.save`
// or C++ `EmbeddingCollection::save`) and answer pooled-embedding requests, one per line:
//
//   <table name> <id> <id> ...        ->  <table name> <dim floats of the pooled bag>
//
// Lookups never insert: ids the model has not seen read as zeros, as in any evaluation.
// Consecutive requests are batched (up to --batch lines) into one prepare/forward call per
// table, the way a serving process amortises the dedup and the hash probes.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"

namespace {

struct Bag {
  int table;
  std::vector<int64_t> ids;
};

// Pools every bag of `bags` (in input order) with one forward call per table.
void answer(sparsecore::EmbeddingCollection& model, const std::vector<Bag>& bags) {
  std::map<int, std::vector<size_t>> by_table;  // table -> indices into bags
  for (size_t i = 0; i < bags.size(); ++i) by_table[bags[i].table].push_back(i);
  std::vector<std::vector<float>> results(bags.size());
  for (const auto& [table, members] : by_table) {
    std::vector<int64_t> ids, offsets{0};
    for (size_t i : members) {
      ids.insert(ids.end(), bags[i].ids.begin(), bags[i].ids.end());
      offsets.push_back(static_cast<int64_t>(ids.size()));
    }
    sparsecore::GroupInput input{table, ids.data(), static_cast<int64_t>(ids.size()),
                                 offsets.data(), static_cast<int64_t>(members.size()), nullptr};
    auto prepared = model.prepare({input}, /*train=*/false);
    std::vector<float> out(prepared->groups[0].output_size());
    model.forward(*prepared, {out.data()});
    const size_t per_bag = out.size() / members.size();
    for (size_t k = 0; k < members.size(); ++k) {
      results[members[k]].assign(out.begin() + k * per_bag, out.begin() + (k + 1) * per_bag);
    }
  }
  for (size_t i = 0; i < bags.size(); ++i) {
    std::printf("%s", model.table(bags[i].table).name().c_str());
    for (float v : results[i]) std::printf(" %.6g", v);
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [--batch N] < requests\n", argv[0]);
    return 2;
  }
  size_t max_batch = 256;
  if (argc >= 4 && std::string(argv[2]) == "--batch") max_batch = std::strtoul(argv[3], nullptr, 10);
  try {
    auto model = sparsecore::EmbeddingCollection::load(argv[1]);
    std::vector<Bag> pending;
    std::string line;
    int64_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      std::istringstream fields(line);
      std::string name;
      if (!(fields >> name)) continue;  // blank line
      Bag bag{model->table_index(name), {}};
      std::string token;
      while (fields >> token) {
        char* end = nullptr;
        long long id = std::strtoll(token.c_str(), &end, 10);
        if (*end != '\0') {
          std::fprintf(stderr, "line %lld: id '%s' is not an integer\n",
                       static_cast<long long>(line_no), token.c_str());
          return 1;
        }
        bag.ids.push_back(id);
      }
      pending.push_back(std::move(bag));
      if (pending.size() >= max_batch) {
        answer(*model, pending);
        pending.clear();
      }
    }
    if (!pending.empty()) answer(*model, pending);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve_embeddings: %s\n", e.what());
    return 1;
  }
  return 0;
}
