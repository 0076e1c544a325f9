// Sums of products in one fixed order, for the score sources that read keys,
// queries or values directly (KeyDiff, Expected Attention, R-KV redundancy).
//
// Why: a dot product added up "naturally" is added in a different order by
// every SIMD width, and GCC contracts a * b + c into a fused multiply-add in
// builds with FMA enabled and not in the baseline build, so the scalar, AVX2
// and AVX-512 builds would disagree in the last bit and, through ties, in
// the keep sets. Here every product is added with an explicit std::fma into
// one of 8 lanes (element j into lane j mod 8, each lane starting from +0),
// and the lanes are combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
// That order is SPEC 7's order for mean thresholds; it is fixed whatever the
// ISA, and compilers may still vectorise the 8 independent lanes.
#pragma once

#include <cmath>

#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Element conversions for dot8: exact widening, nothing else.
inline double to_acc(double v) noexcept { return v; }
inline float to_acc(float v) noexcept { return v; }
inline float to_acc(float16 v) noexcept { return to_float(v); }
inline float to_acc(bfloat16 v) noexcept { return to_float(v); }

template <class Acc>
inline Acc combine_lanes8(const Acc* lane) noexcept {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// sum_j a[j] * b[j] in Acc (float or double), the order above. A and B may
// be float, float16, bfloat16 or double; they are converted to Acc exactly
// (every float is a double; float16 and bfloat16 go through to_float).
template <class Acc, class A, class B>
inline Acc dot8(const A* a, const B* b, index_t n) noexcept {
  Acc lane[8] = {Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
  index_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
    }
  }
  for (int l = 0; j + l < n; ++l) {
    lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
  }
  return combine_lanes8(lane);
}

// sum_j a[j]^2, the same order.
template <class Acc, class A>
inline Acc sum_squares8(const A* a, index_t n) noexcept {
  return dot8<Acc>(a, a, n);
}

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
