// Two translation units built with different ISA flags, linked into one
// binary. Each reports what it computed and which ISA it used.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct mixed_isa_result {
  std::string isa;
  std::vector<std::uint16_t> halves;  // float -> float16 conversion
  std::vector<std::uint64_t> signatures;
  std::vector<std::uint32_t> distances;
};

mixed_isa_result run_scalar_unit(const std::vector<float>& scores, int heads, int tokens);
mixed_isa_result run_avx512_unit(const std::vector<float>& scores, int heads, int tokens);
