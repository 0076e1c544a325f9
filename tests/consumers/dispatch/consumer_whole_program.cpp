// One copy per ISA level (kvcrush_add_dispatched_executable): each copy
// computes Hamming distances with its own level's compile-time kernels and
// must match the scalar kernel. argv[1] is the level the test expects to run;
// it prints "SKIPPED:" when another level runs (not built here). The
// namespace-scope string checks that the copy's static constructors ran
// before its entry.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "kvcrush/select/hamming.hpp"

namespace {

const std::string level_in_use(kvcrush::isa::name());  // dynamic initialisation

std::vector<std::uint32_t> distances(bool scalar) {
  const kvcrush::index_t rows = 999, words = 3;
  std::vector<std::uint64_t> signatures(static_cast<std::size_t>(rows * words)), anchor(words);
  std::uint64_t x = 88172645463325252ull;
  for (auto& w : signatures) w = (x ^= x << 13, x ^= x >> 7, x ^= x << 17);
  for (auto& w : anchor) w = (x ^= x << 13, x ^= x >> 7, x ^= x << 17);
  std::vector<std::uint32_t> out(static_cast<std::size_t>(rows));
  const auto s = kvcrush::make_matrix_view<const std::uint64_t>(signatures.data(), rows, words);
  const auto a = kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), words);
  const auto o = kvcrush::make_vector_view(out.data(), rows);
  if (scalar) {
    kvcrush::hamming_distances<kvcrush::isa::scalar>(s, a, o);
  } else {
    kvcrush::hamming_distances<kvcrush::isa::active>(s, a, o);
  }
  return out;
}

}  // namespace

int KVCRUSH_TOOL_ENTRY(int argc, char** argv) {
  const std::string_view expected = argc > 1 ? argv[1] : "";
  if (level_in_use != kvcrush::isa::name()) {
    std::printf("static constructors did not run before the entry\n");
    return 1;
  }
  if (level_in_use != expected) {
    std::printf("SKIPPED: running %s, not %s\n", level_in_use.c_str(), argc > 1 ? argv[1] : "");
    return 0;
  }
  const bool same = distances(false) == distances(true);
  std::printf("%s: %s\n", level_in_use.c_str(), same ? "same distances as scalar" : "DIFFERENT distances");
  return same ? 0 : 1;
}
