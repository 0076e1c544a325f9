// The library's one softmax, shared by window attention (scores/) and
// attention over quantized layers (quant/). Its arithmetic order is part of
// the contract (every ISA build returns the same bits), so it is plain C++
// written once:
//   l_t = s_t * scale; m = max_t l_t; e_t = exp(l_t - m);
//   total = e_0 + e_1 + ... in token order; p_t = e_t * (1 / total).
#pragma once

#include <cmath>
#include <limits>

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// In place: s[0..n) -> softmax(s * scale). An empty row is left alone.
inline void softmax_in_place(float* s, index_t n, float scale) noexcept {
  if (n == 0) return;
  float peak = -std::numeric_limits<float>::infinity();
  for (index_t t = 0; t < n; ++t) {
    s[t] = s[t] * scale;
    peak = s[t] > peak ? s[t] : peak;
  }
  float total = 0.0f;
  for (index_t t = 0; t < n; ++t) {
    s[t] = std::exp(s[t] - peak);
    total += s[t];
  }
  const float inverse = 1.0f / total;
  for (index_t t = 0; t < n; ++t) s[t] = s[t] * inverse;
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
