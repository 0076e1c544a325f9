// dot8 (fixed_order_dot.hpp) of a whole vector of items at once, one item
// per lane: the kernel of the score sources that compare many keys with one
// vector (R-KV's similarity sums, Expected Attention's logits).
//
// Each lane computes sum_j coef_j * item_j exactly as dot8 does: element j
// goes into partial sum j mod 8, each partial sum starts from +0 (an FMA into
// +0, so a -0 product stays +0), and the sums are combined as
// ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)). The lanes never meet, so
// there is no horizontal combine per dot, and every lane is bit-identical to
// the scalar dot8 of its item.
//
// V adapts one vector type: V::type, V::scalar, V::lanes, zero(), load(),
// add(), fmadd(). The AVX2 and AVX-512 adapters are in lane_vectors_avx2.hpp
// (simd::impl::lanes_avx2) and lane_vectors_avx512.hpp (simd::impl::lanes_avx512).
#pragma once

#include "kvcrush/config.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::impl {

// items: d rows of V::lanes scalars (element j of every item in row j);
// coef(j): the vector multiplying row j (a broadcast, or a row of its own).
template <class V, class Coef>
inline typename V::type dot8_lanes(const typename V::scalar* items, index_t d, Coef coef) noexcept {
  using vec = typename V::type;
  // Named registers, not an array: GCC keeps an array indexed by j & 7 on
  // the stack.
  vec p0 = V::zero(), p1 = p0, p2 = p0, p3 = p0, p4 = p0, p5 = p0, p6 = p0, p7 = p0;
  auto add = [&](index_t j, vec& part) { part = V::fmadd(coef(j), V::load(items + j * V::lanes), part); };
  index_t j = 0;
  for (; j + 8 <= d; j += 8) {
    add(j, p0), add(j + 1, p1), add(j + 2, p2), add(j + 3, p3);
    add(j + 4, p4), add(j + 5, p5), add(j + 6, p6), add(j + 7, p7);
  }
  const index_t rest = d - j;
  if (rest > 0) add(j, p0);
  if (rest > 1) add(j + 1, p1);
  if (rest > 2) add(j + 2, p2);
  if (rest > 3) add(j + 3, p3);
  if (rest > 4) add(j + 4, p4);
  if (rest > 5) add(j + 5, p5);
  if (rest > 6) add(j + 6, p6);
  return V::add(V::add(V::add(p0, p1), V::add(p2, p3)), V::add(V::add(p4, p5), V::add(p6, p7)));
}

}  // namespace simd::impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
