// serve_embeddings: load a checkpoint written by training (Python `EmbeddingCollection.save`
// or C++ `EmbeddingCollection::save`) and answer pooled-embedding requests, one per line:
//
//   <table name> <id> <id> ...        ->  <table name> <dim floats of the pooled bag>
//
// Lookups never insert: ids the model has not seen read as zeros, as in any evaluation.
// Consecutive requests are batched (up to --batch lines) into one prepare/forward call per
// table, the way a serving process amortises the dedup and the hash probes.
//
// Every non-blank request line gets exactly one answer line, in request order. A line that cannot be
// served (unknown table, an id that is not a 64-bit integer) is answered with
// `error line <n>: <why>` and the lines before and after it are answered as usual; the exit
// status is then 1 (0 when every line was served).
#include <cerrno>
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

// One request line: a bag to pool, or the reason the line cannot be served.
struct Bag {
  int table = -1;
  std::vector<int64_t> ids;
  std::string error;  // non-empty: answered with this message instead of a row
};

// Pools every bag of `bags` (in input order) with one forward call per table.
void answer(sparsecore::EmbeddingCollection& model, const std::vector<Bag>& bags) {
  std::map<int, std::vector<size_t>> by_table;  // table -> indices into bags
  for (size_t i = 0; i < bags.size(); ++i)
    if (bags[i].error.empty()) by_table[bags[i].table].push_back(i);
  std::vector<std::vector<float>> results(bags.size());
  for (const auto& [table, members] : by_table) {
    std::vector<int64_t> ids, offsets{0};
    for (size_t i : members) {
      ids.insert(ids.end(), bags[i].ids.begin(), bags[i].ids.end());
      offsets.push_back(static_cast<int64_t>(ids.size()));
    }
    sparsecore::GroupInput input{
        table,  ids.data(), static_cast<int64_t>(ids.size()), offsets.data(), static_cast<int64_t>(members.size()),
        nullptr};
    auto prepared = model.prepare({input}, /*train=*/false);
    std::vector<float> out(prepared->groups[0].output_size());
    model.forward(*prepared, {out.data()});
    const size_t per_bag = out.size() / members.size();
    for (size_t k = 0; k < members.size(); ++k) {
      results[members[k]].assign(out.begin() + k * per_bag, out.begin() + (k + 1) * per_bag);
    }
  }
  for (size_t i = 0; i < bags.size(); ++i) {
    if (!bags[i].error.empty()) {
      std::printf("%s\n", bags[i].error.c_str());
      continue;
    }
    std::printf("%s", model.table(bags[i].table).name().c_str());
    for (float v : results[i]) std::printf(" %.6g", v);
    std::printf("\n");
  }
}

// Parses one request line; a line that cannot be served comes back with its error set.
Bag parse_request(const sparsecore::EmbeddingCollection& model, const std::string& name, std::istringstream& fields,
                  int64_t line_no) {
  Bag bag;
  const std::string where = "error line " + std::to_string(line_no) + ": ";
  try {
    bag.table = model.table_index(name);
  } catch (const std::exception& e) {
    bag.error = where + e.what();
    return bag;
  }
  std::string token;
  while (fields >> token) {
    char* end = nullptr;
    errno = 0;
    const long long id = std::strtoll(token.c_str(), &end, 10);
    if (*end != '\0' || errno == ERANGE) {
      bag.error = where + "id '" + token + "' is not a 64-bit integer";
      bag.ids.clear();
      return bag;
    }
    bag.ids.push_back(id);
  }
  return bag;
}

void usage(std::FILE* to, const char* program) {
  std::fprintf(to,
               "usage: %s CHECKPOINT_DIR [--batch N] < requests\n"
               "\n"
               "Answers pooled-embedding requests read from stdin, one per line:\n"
               "  <table name> <id> <id> ...   ->   <table name> <dim floats of the pooled bag>\n"
               "Unknown ids read as zeros. A line that cannot be served is answered with\n"
               "'error line <n>: <why>'; the exit status is then 1.\n"
               "\n"
               "  --batch N   request lines pooled per forward call (default 256)\n"
               "  -h, --help  print this message\n",
               program);
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint;
  size_t max_batch = 256;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout, argv[0]);
      return 0;
    }
    if (arg == "--batch") {
      char* end = nullptr;
      const long long n = i + 1 < argc ? std::strtoll(argv[i + 1], &end, 10) : 0;
      if (i + 1 >= argc || *end != '\0' || n < 1) {
        std::fprintf(stderr, "%s: --batch needs a positive integer\n", argv[0]);
        return 2;
      }
      max_batch = static_cast<size_t>(n);
      ++i;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "%s: unknown option '%s'\n", argv[0], arg.c_str());
      usage(stderr, argv[0]);
      return 2;
    } else if (checkpoint.empty()) {
      checkpoint = arg;
    } else {
      std::fprintf(stderr, "%s: more than one checkpoint directory given ('%s')\n", argv[0], arg.c_str());
      return 2;
    }
  }
  if (checkpoint.empty()) {
    usage(stderr, argv[0]);
    return 2;
  }
  bool any_error = false;
  try {
    auto model = sparsecore::EmbeddingCollection::load(checkpoint);
    std::vector<Bag> pending;
    std::string line;
    int64_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      std::istringstream fields(line);
      std::string name;
      if (!(fields >> name)) continue;  // blank line
      pending.push_back(parse_request(*model, name, fields, line_no));
      if (!pending.back().error.empty()) {
        any_error = true;
        std::fprintf(stderr, "serve_embeddings: %s\n", pending.back().error.c_str());
      }
      if (pending.size() >= max_batch) {
        answer(*model, pending);
        pending.clear();
      }
    }
    if (!pending.empty()) answer(*model, pending);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "serve_embeddings: %s\n", e.what());
    return 1;
  }
  return any_error ? 1 : 0;
}
