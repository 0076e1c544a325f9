// Links a scalar-built and an AVX-512-built translation unit and calls both:
// kernels are templates on the ISA tag, so the two never share a symbol and
// the scalar path keeps running baseline code. Exit 77 (skip) without AVX-512.
#include <cstdio>
#include <random>

#include "kvcrush/isa.hpp"
#include "mixed_isa.hpp"

int main() {
  const int heads = 70, tokens = 1031;
  std::vector<float> scores(static_cast<std::size_t>(heads) * tokens);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);  // float16 range and beyond
  for (auto& s : scores) s = dist(rng);

  const auto scalar = run_scalar_unit(scores, heads, tokens);
  std::printf("scalar unit ran with ISA %s\n", scalar.isa.c_str());
  if (scalar.isa != "scalar") return 1;
  if (!kvcrush::isa::cpu_supports<kvcrush::isa::avx512>()) {
    std::printf("SKIPPED: this CPU lacks AVX-512; only the scalar unit ran\n");
    return 77;
  }
  const auto wide = run_avx512_unit(scores, heads, tokens);
  std::printf("avx512 unit ran with ISA %s\n", wide.isa.c_str());
  if (wide.isa != "avx512") return 1;
  if (scalar.halves != wide.halves || scalar.signatures != wide.signatures ||
      scalar.distances != wide.distances) {
    std::printf("FAILED: the two units disagree\n");
    return 1;
  }
  std::printf("both units agree on %zu conversions, %zu signature words, %zu distances\n",
              scalar.halves.size(), scalar.signatures.size(), scalar.distances.size());
  return 0;
}
