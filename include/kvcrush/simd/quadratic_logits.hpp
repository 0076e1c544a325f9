// Expected Attention's logits for a block of keys at once, one key per
// vector lane (scores/expected_attention.hpp, SPEC 11.2):
//   z = fma(s^2 / 2, k . (Sigma k), s * (mu . k))
// with every dot product dot8<double> (fixed_order_dot.hpp).
//
// Why lanes over keys: dot8 keeps 8 partial sums and combines them at the
// end; with one key per call that combine (and its horizontal adds) follows
// every dot of length d, d + 2 times per key, which at small head sizes
// costs more than the products. With keys in the lanes each partial sum is
// a whole vector, the combine is 7 vector adds for `lanes` keys, and each
// lane still adds exactly the products the scalar loop adds, in its order.
//
// The block: kt holds d rows of `lanes` doubles (key element j of lane k at
// kt[j * lanes + k]); mean has d doubles; sigma is d x d row-major, or null
// without the covariance term; work holds d * lanes doubles. z receives
// `lanes` logits (lanes past the block's keys are computed from whatever kt
// holds there and are ignored by the caller).
#pragma once

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// The scalar build has no block kernel (lanes = 0): the per-key loop is the
// reference. quadratic_logits_avx2.hpp and quadratic_logits_avx512.hpp
// specialise it.
template <class Isa>
struct quadratic_logits_kernel {
  static constexpr index_t lanes = 0;
  static void block(const double*, index_t, const double*, const double*, double, double, double*,
                    double*) noexcept {}
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/quadratic_logits_avx2.hpp"
#include "kvcrush/simd/quadratic_logits_avx512.hpp"
