#include "unit.inc"

static_assert(std::is_same_v<kvcrush::isa::active, kvcrush::isa::scalar>,
              "this unit must be compiled for baseline x86-64");

mixed_isa_result run_scalar_unit(const std::vector<float>& scores, int heads, int tokens) {
  return run_unit(scores, heads, tokens);
}
