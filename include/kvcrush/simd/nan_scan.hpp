// The library's scans for values it refuses. any_nan is the one NaN scan of
// score rows; every score entry point refuses NaN. The scan reads the whole
// range without an early exit, so its cost does not depend on the data, and
// its loop vectorises in every SIMD build.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kvcrush/float16.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

inline bool any_nan(const float* v, index_t n) noexcept {
  // NaN is the only float whose magnitude bits exceed +inf's: an integer
  // max over them, which compilers vectorise (an OR of unordered compares
  // they leave scalar, at a few cycles per value).
  std::uint32_t largest = 0;
  for (index_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, v + i, sizeof bits);
    bits &= 0x7fffffffu;
    largest = bits > largest ? bits : largest;
  }
  return largest > 0x7f800000u;
}

}  // namespace simd

namespace impl {

// The first non-finite element (NaN or +-inf) of a kv_view's tokens
// [begin, end), searched head by head, token by token, dim by dim. Returns
// false when every element is finite; otherwise sets head, token and value.
template <class T>
inline bool find_non_finite(kv_view<const T> v, index_t begin, index_t end, index_t& head, index_t& token,
                            float& value) noexcept {
  if (v.head_dim() == 0) return false;
  for (index_t h = 0; h < v.heads(); ++h) {
    for (index_t t = begin; t < end; ++t) {
      const T* row = v.row(h, t);
      for (index_t j = 0; j < v.head_dim(); ++j) {
        const float x = to_float(row[j]);
        if (!std::isfinite(x)) {
          head = h;
          token = t;
          value = x;
          return true;
        }
      }
    }
  }
  return false;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
