// The score sources that need no accumulation (SPEC 5): TOVA (the last
// query's attention), key norm, and seeded random scores (the baseline every
// eviction paper reports).
#pragma once

#include <cmath>
#include <cstdint>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/random.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

// TOVA: importance (1, N) = the last query's attention averaged over all
// query heads (added in head order, divided by Hq). kv_rows (optional,
// (H, N)): the same attention reduced per GQA group (mean), for signatures.
template <class Isa = isa::active>
void tova_scores(matrix_view<const float> last_attention, matrix_view<float> importance,
                 matrix_view<float> kv_rows = {}) {
  using kvcrush::detail::require;
  const index_t hq = last_attention.extent(0), n = last_attention.extent(1);
  require(hq >= 1, "tova: attention needs at least one head");
  require(importance.extent(0) == 1 && importance.extent(1) == n, "tova: importance must be (1, ", n, ")");
  require(n <= 1 || (last_attention.stride(1) == 1 && importance.stride(1) == 1), "tova: rows must be contiguous");
  impl::reduce_group(last_attention.data(), last_attention.stride(0), hq, n, gqa_reduction::mean, importance.data());
  if (kv_rows.data() != nullptr) reduce_query_heads<Isa>(last_attention, gqa_reduction::mean, kv_rows);
}

// Key norm: S[h][t] = -||K[h][t]||_2: small keys are deemed important
// (Devoto et al., 2024). The squares are accumulated in dim order with fused
// multiply-adds (std::fma): spelled out, because compilers otherwise contract
// x * x + acc into an FMA in some builds and not others, and the ISAs would
// disagree in the last bit.
template <class Isa = isa::active, class KeyT>
void key_norm_scores(kv_view<const KeyT> keys, matrix_view<float> out) {
  using kvcrush::detail::require;
  require(out.extent(0) == keys.heads() && out.extent(1) == keys.tokens(), "key norm: output must be (",
          keys.heads(), ", ", keys.tokens(), ")");
  for (index_t h = 0; h < keys.heads(); ++h) {
    for (index_t t = 0; t < keys.tokens(); ++t) {
      const KeyT* row = keys.row(h, t);
      float squares = 0.0f;
      for (index_t j = 0; j < keys.head_dim(); ++j) {
        const float x = to_float(row[j]);
        squares = std::fma(x, x, squares);
      }
      out(h, t) = -std::sqrt(squares);
    }
  }
}

// Uniform scores in [0, 1) from splitmix64: out[r][t] depends only on (seed,
// r, t), so a random policy is reproducible for a seed whatever the call
// pattern.
template <class Isa = isa::active>
void random_scores(std::uint64_t seed, matrix_view<float> out) {
  for (index_t r = 0; r < out.extent(0); ++r) {
    const std::uint64_t row_seed = splitmix64_at(seed, static_cast<std::uint64_t>(r));
    for (index_t t = 0; t < out.extent(1); ++t) {
      // 24 random bits -> an exact float in [0, 1).
      out(r, t) = static_cast<float>(splitmix64_at(row_seed, static_cast<std::uint64_t>(t)) >> 40) * 0x1.0p-24f;
    }
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
