// The library's one NaN scan. Every score entry point refuses NaN; the scan
// reads the whole range without an early exit, so its cost does not depend
// on the data and the loop vectorises in every ISA build.
#pragma once

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

inline bool any_nan(const float* v, index_t n) noexcept {
  bool nan = false;
  for (index_t i = 0; i < n; ++i) nan |= v[i] != v[i];
  return nan;
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
