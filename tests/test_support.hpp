// Shared helpers for the test suite: the ISA check every test file makes,
// deterministic random inputs, and access to the shared model/data folder.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "kvcrush/simd/isa.hpp"

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
