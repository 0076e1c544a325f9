// KeyDiff scores (Park et al., 2025, arXiv 2504.15364; kvpress KeyDiffPress):
// a token whose key points away from the head's average key direction is
// distinctive and is kept; one that points along it is redundant. Needs the
// keys only, so engines whose attention kernel never materialises the
// probabilities (FlashAttention, llama.cpp) can use it. SPEC 11.1.
//
// Definition, as kvpress/presses/keydiff_press.py (score(), its last two
// lines) computes it: the anchor is the mean over the head's tokens of the
// *unit* keys (F.normalize before the mean), and the score is minus the
// cosine similarity of the key to that anchor:
//   u[t]  = K[h][t] / ||K[h][t]||            (0 when ||K[h][t]|| = 0)
//   a     = (u[0] + ... + u[N-1]) / N
//   S[h][t] = -(K[h][t] . a) / (||K[h][t]|| * ||a||)   (0 when either norm is 0)
//
// Arithmetic (fixed, so every ISA build gives the same bits): keys are
// widened to double; norms and dot products use the 8-lane fused
// multiply-add order of simd/fixed_order_dot.hpp; the anchor adds u[t] in token order
// and then divides by N; one rounding to float at the end. Zero-norm keys
// score exactly +0.0 (torch gives -0.0 there: its clamped norm makes the
// cosine 0), and so does every token when the anchor is the zero vector.
// Keys with a NaN or an infinite component are rejected before any output
// is written (an infinite key has no direction).
#pragma once

#include <cmath>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/scores/attention_scratch.hpp"
#include "kvcrush/simd/fixed_order_dot.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// One head's scores. norms and anchor: scratch of N and d doubles.
template <class KeyT>
void keydiff_head(kv_view<const KeyT> keys, index_t h, double* norms, double* anchor,
                  float* out, index_t out_stride) noexcept {
  const index_t n = keys.tokens(), d = keys.head_dim();
  for (index_t j = 0; j < d; ++j) anchor[j] = 0.0;
  for (index_t t = 0; t < n; ++t) {
    const KeyT* row = keys.row(h, t);
    const double norm = std::sqrt(sum_squares8<double>(row, d));
    norms[t] = norm;
    if (norm > 0.0) {
      for (index_t j = 0; j < d; ++j) anchor[j] += static_cast<double>(to_acc(row[j])) / norm;
    }
  }
  const double count = static_cast<double>(n);
  for (index_t j = 0; j < d; ++j) anchor[j] /= count;
  const double anchor_norm = std::sqrt(sum_squares8<double>(anchor, d));
  for (index_t t = 0; t < n; ++t) {
    float score = 0.0f;
    if (norms[t] > 0.0 && anchor_norm > 0.0) {
      const double cosine = dot8<double>(keys.row(h, t), anchor, d) / (norms[t] * anchor_norm);
      score = static_cast<float>(-cosine);
    }
    out[t * out_stride] = score;
  }
}

}  // namespace impl

// Doubles of scratch keydiff_scores needs: the norms of N tokens and the anchor (d).
inline std::size_t keydiff_scratch_doubles(index_t tokens, index_t head_dim) noexcept {
  return static_cast<std::size_t>(tokens + head_dim) + 1;
}

// out (H, N) = KeyDiff scores of keys (H, N, d), float, float16 or bfloat16,
// with the caller's scratch (no allocation once it has grown).
template <class Isa = isa::active, class KeyT>
void keydiff_scores(kv_view<const KeyT> keys, matrix_view<float> out, attention_scratch& scratch) {
  using kvcrush::detail::require;
  const index_t h = keys.heads(), n = keys.tokens(), d = keys.head_dim();
  require(out.extent(0) == h && out.extent(1) == n, "keydiff: output must be (", h, ", ", n, "), got (",
          out.extent(0), ", ", out.extent(1), ")");
  index_t bad_head = 0, bad_token = 0;
  float bad_value = 0.0f;
  const bool bad = impl::find_non_finite(keys, 0, n, bad_head, bad_token, bad_value);
  require(!bad, "keydiff: key of head ", bad_head, ", token ", bad_token, " has a non-finite component (",
          bad_value, "); keys must be finite");
  if (n == 0) return;
  if (d == 0) {
    for (index_t k = 0; k < h; ++k)
      for (index_t t = 0; t < n; ++t) out(k, t) = 0.0f;
    return;
  }
  double* rows = scratch.wide(keydiff_scratch_doubles(n, d));
  for (index_t k = 0; k < h; ++k) {
    impl::keydiff_head(keys, k, rows, rows + n, &out(k, 0), out.stride(1));
  }
}

// The same with scratch of its own (allocates N + d doubles per call).
template <class Isa = isa::active, class KeyT>
void keydiff_scores(kv_view<const KeyT> keys, matrix_view<float> out) {
  attention_scratch scratch;
  keydiff_scores<Isa>(keys, out, scratch);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
