// Built against the installed sparsecore package by tests/consumer/run_consumer_check.cmake.
#include <cstdio>

#include "sparsecore/core/thread_pool.h"

int main() {
  std::printf("sparsecore consumer: %d threads\n", sparsecore::ThreadPool::global().num_threads());
  return 0;
}
