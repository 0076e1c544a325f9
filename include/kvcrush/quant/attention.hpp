// Attention over a quantized layer, reading the codes directly
// (dequantize-on-read): per KV head the scores q . k_t of every cached token
// and the weighted sum of the value rows, and full softmax attention for a
// set of query heads (GQA: query head i reads KV head i / (Hq / H)).
//
// Scores and sums follow the arithmetic order of simd/quant_dot.hpp over
// the quantized part, then the window: the same bits for every ISA. The
// softmax (attend) is plain C++ shared by all ISAs: l_t = score_t * scale,
// p_t = exp(l_t - max) / sum, the sum in token order.
#pragma once

#include <cmath>
#include <limits>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/quant/quant_scratch.hpp"
#include "kvcrush/simd/quant_dot.hpp"
#include "kvcrush/simd/softmax.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

inline void require_contiguous(const vector_view<const float>& v, index_t n, const char* what, const char* name) {
  kvcrush::detail::require(v.extent(0) >= n && (v.extent(0) <= 1 || v.stride(0) == 1), what, ": ", name, " holds ",
                           v.extent(0), " elements (stride ", v.stride(0), "), needs >= ", n, " contiguous");
}

// Scores of every cached token of one head (position order), behind checks.
template <class Isa, class P, class W>
void quant_key_scores(const quantized_layer<W>& layer, index_t head, const float* q, float* out) noexcept {
  const key_group_span<P> k = layer.template key_span<P>(head);
  simd::quant_dot_kernel<Isa>::key_scores(k, q, out);
  simd::quant_dot_kernel<Isa>::row_scores(layer.window_key_span(head), q, out + k.tokens());
}

template <class Isa, class P, class W>
void quant_value_sum(const quantized_layer<W>& layer, index_t head, const float* p, float* out) noexcept {
  const value_row_span<P> v = layer.template value_span<P>(head);
  simd::quant_dot_kernel<Isa>::value_sum(v, p, out);
  simd::quant_dot_kernel<Isa>::row_accumulate(layer.window_value_span(head), p + v.rows, out);
}

inline void require_attention_shapes(matrix_view<const float> queries, matrix_view<float> out, index_t kv_heads,
                                     index_t head_dim, const char* what) {
  using kvcrush::detail::require;
  const index_t hq = queries.extent(0);
  require(hq >= 1 && hq % kv_heads == 0, what, ": ", hq, " query heads do not split evenly over ", kv_heads,
          " KV heads");
  require(queries.extent(1) == head_dim && (head_dim <= 1 || queries.stride(1) == 1), what,
          ": queries must be (Hq, ", head_dim, ") with contiguous rows");
  require(out.extent(0) == hq && out.extent(1) == head_dim && (head_dim <= 1 || out.stride(1) == 1), what,
          ": output must be (", hq, ", ", head_dim, ") with contiguous rows");
}

}  // namespace impl

// out[t] = q . k_t for the layer's tokens of one KV head (t < length()).
template <class Isa = isa::active, class W>
void key_scores(const quantized_layer<W>& layer, index_t head, vector_view<const float> q, vector_view<float> out) {
  impl::require_contiguous(q, layer.head_dim(), "key_scores", "q");
  impl::require_contiguous(out, layer.length(), "key_scores", "out");
  kvcrush::detail::require(head >= 0 && head < layer.kv_heads(), "key_scores: head ", head, " out of range");
  if (layer.config().params == param_format::float16) {
    impl::quant_key_scores<Isa, float16>(layer, head, q.data(), out.data());
  } else {
    impl::quant_key_scores<Isa, float>(layer, head, q.data(), out.data());
  }
}

// out[c] = sum_t weights[t] * v_t[c] over the layer's tokens of one KV head.
template <class Isa = isa::active, class W>
void value_sum(const quantized_layer<W>& layer, index_t head, vector_view<const float> weights, vector_view<float> out) {
  impl::require_contiguous(weights, layer.length(), "value_sum", "weights");
  impl::require_contiguous(out, layer.head_dim(), "value_sum", "out");
  kvcrush::detail::require(head >= 0 && head < layer.kv_heads(), "value_sum: head ", head, " out of range");
  if (layer.config().params == param_format::float16) {
    impl::quant_value_sum<Isa, float16>(layer, head, weights.data(), out.data());
  } else {
    impl::quant_value_sum<Isa, float>(layer, head, weights.data(), out.data());
  }
}

// Softmax attention of Hq query heads (queries (Hq, head_dim)) over the
// layer: out (Hq, head_dim). scale defaults to 1 / sqrt(head_dim). Scratch
// comes from ws (length() floats): no allocation once ws has served it.
// An empty layer gives zero rows.
template <class Isa = isa::active, class W>
void attend(const quantized_layer<W>& layer, matrix_view<const float> queries, matrix_view<float> out,
            quant_scratch& ws, float scale = 0.0f) {
  impl::require_attention_shapes(queries, out, layer.kv_heads(), layer.head_dim(), "attend");
  const index_t hq = queries.extent(0), n = layer.length(), d = layer.head_dim();
  const index_t per_kv = hq / layer.kv_heads();
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d));
  float* probs = ws.probabilities(static_cast<std::size_t>(n) + 1);
  for (index_t i = 0; i < hq; ++i) {
    const index_t head = i / per_kv;
    float* row = &out(i, 0);
    if (n == 0) {
      for (index_t c = 0; c < d; ++c) row[c] = 0.0f;
      continue;
    }
    if (layer.config().params == param_format::float16) {
      impl::quant_key_scores<Isa, float16>(layer, head, &queries(i, 0), probs);
      simd::softmax_in_place(probs, n, scale);
      impl::quant_value_sum<Isa, float16>(layer, head, probs, row);
    } else {
      impl::quant_key_scores<Isa, float>(layer, head, &queries(i, 0), probs);
      simd::softmax_in_place(probs, n, scale);
      impl::quant_value_sum<Isa, float>(layer, head, probs, row);
    }
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
