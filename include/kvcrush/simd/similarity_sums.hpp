// Column sums of R-KV's similarity matrix for a block of tokens t at once
// (scores/redundancy.hpp, SPEC 11.3), one token per vector lane.
//
// Why lanes over t: the definition adds each token's similarities over the
// comparison tokens c in ascending order, in double. With t in the lanes,
// every lane's sum is that very chain, so the vector kernels are bit-exact
// with the scalar loop while doing a whole vector of pairs per step; the
// similarity itself is dot8<float> (fixed_order_dot.hpp) with each of its 8
// partial sums kept in its own vector.
//
// The block: lanes k = 0..valid-1 hold the tokens t_k = top - 1 - k (newest
// first, as last(c) is the first similar token met going down), their unit
// keys transposed into ut (d rows of `lanes` floats; lanes >= valid are
// ignored). units holds the m comparison tokens' unit keys (m x d), oldest
// first; comparison token i is the lane self_base - i of the block when that
// lane exists (its similarity to itself is not counted). found[i] != 0 once
// last(c_i) has been met. For each i ascending and each lane k: s = the
// similarity; if it is last(c_i) (the first lane over threshold, found[i]
// still 0), found[i] becomes 1 and s is not counted; otherwise acc[k] += s.
#pragma once

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// The scalar build has no block kernel (lanes = 0): redundancy.hpp's 4 x 4
// tiles are the reference loop. similarity_sums_avx2.hpp and
// similarity_sums_avx512.hpp specialise it.
template <class Isa>
struct similarity_sums_kernel {
  static constexpr index_t lanes = 0;
  static void block(const float*, index_t, index_t, const float*, index_t, index_t, float, float*, double*) noexcept {}
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/similarity_sums_avx2.hpp"
#include "kvcrush/simd/similarity_sums_avx512.hpp"
