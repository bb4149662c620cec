// The command line every fuzz driver takes: --seconds S (default 5) and --seed N (default
// random), so a failure printed with its seed can be replayed.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>

struct FuzzArgs {
  double seconds = 5;
  uint64_t seed = std::random_device{}();
};

inline FuzzArgs parse_fuzz_args(int argc, char** argv) {
  FuzzArgs a;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seconds") == 0) a.seconds = std::atof(argv[i + 1]);
    if (std::strcmp(argv[i], "--seed") == 0) a.seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  return a;
}
