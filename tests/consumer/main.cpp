// Built against the installed sparsecore package by tests/consumer/run_consumer_check.cmake:
// a stand-in for a C++ serving process that links the library.
#include <cstdio>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"

int main(int argc, char** argv) {
  sparsecore::TableConfig config;
  config.name = "user";
  config.dim = 4;
  sparsecore::EmbeddingCollection emb({config}, 7);
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<int64_t> offsets = {0, 1, 3};
  auto batch = emb.prepare({{0, ids.data(), 3, offsets.data(), 2, nullptr}}, /*train=*/true);
  std::vector<float> out(2 * 4);
  emb.forward(*batch, {out.data()});
  std::printf("sparsecore consumer: %zu rows, out[0] = %f\n", emb.table(0).size(), out[0]);
  if (argc > 1) emb.save(argv[1]);  // a checkpoint for examples/cpp_serving to load
  return emb.table(0).size() == 3 ? 0 : 1;
}
