// Shared helpers for the test suite: the ISA check every test file makes,
// deterministic random inputs, and access to the shared model/data folder.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"

#define KVCRUSH_TEST_STR_(x) #x
#define KVCRUSH_TEST_STR(x) KVCRUSH_TEST_STR_(x)

#if defined(KVCRUSH_EXPECTED_ISA)
static_assert(kvcrush::isa::active::name == KVCRUSH_TEST_STR(KVCRUSH_EXPECTED_ISA),
              "this test binary was built for a different ISA than the one in use");
#endif

namespace kvcrush_test {

// Folder with models/ and data/: $KVCRUSH_SHARED_DIR, else the CMake default.
inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("KVCRUSH_SHARED_DIR"); env && *env) return env;
#if defined(KVCRUSH_SHARED_DIR)
  return KVCRUSH_SHARED_DIR;
#else
  return "../shared";
#endif
}

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string_view(ci) == "true";
}

// Calls f(tag) for every SIMD ISA compiled into this binary that the CPU
// runs; returns how many there were (0 in the scalar build).
template <class F>
int for_each_simd_isa(F&& f) {
  int count = 0;
#if KVCRUSH_HAS_AVX2
  if (kvcrush::isa::cpu_supports<kvcrush::isa::avx2>()) {
    f(kvcrush::isa::avx2{});
    ++count;
  }
#endif
#if KVCRUSH_HAS_AVX512
  if (kvcrush::isa::cpu_supports<kvcrush::isa::avx512>()) {
    f(kvcrush::isa::avx512{});
    ++count;
  }
#endif
  (void)f;
  return count;
}

// Scores with the hard cases mixed in: many exact ties (values on a coarse
// grid), +inf and -inf, negative zeros.
inline std::vector<float> tricky_floats(std::size_t n, std::uint32_t seed, int levels = 7,
                                        double inf_rate = 0.02) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> level(0, levels - 1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> out(n);
  for (auto& v : out) {
    const double x = u(rng);
    if (x < inf_rate / 2) v = std::numeric_limits<float>::infinity();
    else if (x < inf_rate) v = -std::numeric_limits<float>::infinity();
    else if (x < inf_rate + 0.01) v = -0.0f;
    else v = static_cast<float>(level(rng)) * 0.25f - 0.5f;
  }
  return out;
}

// Sizes that hit every SIMD tail.
inline std::vector<long> tail_sizes() {
  std::vector<long> sizes;
  for (long n = 0; n <= 17; ++n) sizes.push_back(n);
  for (long n : {31L, 32L, 33L, 63L, 64L, 65L, 127L, 128L, 129L, 4097L}) sizes.push_back(n);
  return sizes;
}

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (auto& v : out) v = dist(rng);
  return out;
}

}  // namespace kvcrush_test

// Skips the current test with a visible message when a shared file is
// missing, except under CI=true where its absence fails the test.
#define KVCRUSH_REQUIRE_SHARED_FILE(path)                                                  \
  do {                                                                                     \
    if (!std::filesystem::exists(path)) {                                                  \
      if (kvcrush_test::running_in_ci()) {                                                 \
        FAIL() << "missing shared file " << (path) << " (CI=true requires it)";            \
      } else {                                                                             \
        GTEST_SKIP() << "missing shared file " << (path)                                   \
                     << "; set KVCRUSH_SHARED_DIR or -DKVCRUSH_SHARED_DIR to run this test"; \
      }                                                                                    \
    }                                                                                      \
  } while (0)
