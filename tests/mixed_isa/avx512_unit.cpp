#include "unit.inc"

static_assert(std::is_same_v<kvcrush::isa::active, kvcrush::isa::avx512>,
              "this unit must be compiled with the AVX-512 flags");

mixed_isa_result run_avx512_unit(const std::vector<float>& scores, int heads, int tokens) {
  return run_unit(scores, heads, tokens);
}
