// SnapKV-style scores from window attention (SPEC 5): the attention of the
// last W queries, summed over the window, pooled along tokens per query
// head, then reduced over each GQA group.
//
// Two entry points: window_scores() for engines that have the probabilities
// (Hq, W, N), and window_scores_from_queries() for engines whose attention
// kernel never materialises them: it recomputes softmax(Q K^T / sqrt(d))
// with the causal mask from the last W query vectors and the key cache,
// one query head at a time, without ever holding (Hq, W, N).
//
// Tokens inside the window ([N - W, N), the recent region SnapKV always
// keeps) get their summed attention unpooled, so that the result is a
// complete (H, N) score matrix even when a caller protects fewer than W.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <vector>

#include "kvcrush/eigen_interop.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/scores/attention_scratch.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/simd/softmax.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct window_options {
  pooling_mode pooling = pooling_mode::avg;
  index_t kernel = 7;  // odd
  gqa_reduction gqa = gqa_reduction::mean;
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

inline void check_window_outputs(index_t hq, index_t n, const window_options& opt, matrix_view<float> kv_out,
                                 matrix_view<float> query_out) {
  using kvcrush::detail::require;
  require(opt.kernel >= 1 && opt.kernel % 2 == 1, "window scores: pooling kernel must be odd and >= 1 (got ",
          opt.kernel, ")");
  const index_t h = kv_out.extent(0);
  require(h >= 1 && hq % h == 0, "window scores: ", hq, " query heads do not split evenly over ", h, " KV heads");
  require(kv_out.extent(1) == n, "window scores: output covers ", kv_out.extent(1), " tokens, attention ", n);
  require(n <= 1 || kv_out.stride(1) == 1, "window scores: output rows must be contiguous");
  if (query_out.data() != nullptr) {
    require(query_out.extent(0) == hq && query_out.extent(1) == n, "window scores: per-query-head output must be (",
            hq, ", ", n, ")");
    require(n <= 1 || query_out.stride(1) == 1, "window scores: per-query-head rows must be contiguous");
  }
}

// raw (one query head, N tokens) -> pooled row: the first N - W tokens are
// pooled among themselves, the window's tokens are copied.
inline void pool_outside_window(const float* raw, index_t n, index_t window, const window_options& opt,
                                float* out) noexcept {
  const index_t outside = n - window;
  pool_row(raw, outside, opt.kernel, opt.pooling, out);
  for (index_t t = outside; t < n; ++t) out[t] = raw[t];
}

}  // namespace impl

// attention: (Hq, W, N) float32 probabilities of the last W queries.
// kv_out: (H, N) per-KV-head scores S. query_out (optional, (Hq, N)): the
// pooled per-query-head scores, the rows of query-head signatures.
template <class Isa = isa::active>
void window_scores(strided_view<const float, 3> attention, const window_options& opt, matrix_view<float> kv_out,
                   attention_scratch& ws, matrix_view<float> query_out = {}) {
  using kvcrush::detail::require;
  const index_t hq = attention.extent(0), window = attention.extent(1), n = attention.extent(2);
  require(hq >= 1, "window scores: attention needs at least one query head");
  require(window >= 1 && window <= n, "window scores: window ", window, " must be in [1, ", n, "]");
  require(n <= 1 || attention.stride(2) == 1, "window scores: attention rows must be contiguous along tokens");
  impl::check_window_outputs(hq, n, opt, kv_out, query_out);
  const index_t h = kv_out.extent(0);
  const index_t group = hq / h;
  float* raw = ws.row(static_cast<std::size_t>(n) + 64);
  float* pooled = query_out.data() ? nullptr : ws.keys(static_cast<std::size_t>(hq * n));
  bool nan = false;
  for (index_t q = 0; q < hq; ++q) {
    // Sum over the window in w order.
    const float* first = attention.data() + q * attention.stride(0);
    for (index_t t = 0; t < n; ++t) raw[t] = first[t];
    for (index_t w = 1; w < window; ++w) {
      const float* row = first + w * attention.stride(1);
      for (index_t t = 0; t < n; ++t) raw[t] += row[t];
    }
    nan |= simd::any_nan(raw, n);
    float* out = query_out.data() ? query_out.data() + q * query_out.stride(0) : pooled + q * n;
    impl::pool_outside_window(raw, n, window, opt, out);
  }
  require(!nan, "window scores: attention contains NaN");
  const float* rows = query_out.data() ? query_out.data() : pooled;
  const index_t row_stride = query_out.data() ? query_out.stride(0) : n;
  for (index_t k = 0; k < h; ++k) {
    impl::reduce_group(rows + k * group * row_stride, row_stride, group, n, opt.gqa, kv_out.data() + k * kv_out.stride(0));
  }
}

// The same scores from the last W query vectors (Hq, W, d) and the key
// cache (H, N, d): A = softmax(Q K^T * scale) with the causal mask (query w
// sits at position N - W + w), computed with Eigen one query head at a time.
// scale <= 0 means 1 / sqrt(d).
template <class Isa = isa::active, class KeyT>
void window_scores_from_queries(strided_view<const float, 3> queries, kv_view<const KeyT> keys,
                                const window_options& opt, matrix_view<float> kv_out, attention_scratch& ws,
                                matrix_view<float> query_out = {}, float scale = 0.0f) {
  using kvcrush::detail::require;
  const index_t hq = queries.extent(0), window = queries.extent(1), d = queries.extent(2);
  const index_t h = keys.heads(), n = keys.tokens();
  require(hq >= 1 && h >= 1 && hq % h == 0, "window scores: ", hq, " query heads do not split evenly over ", h,
          " KV heads");
  require(keys.head_dim() == d, "window scores: queries have head_dim ", d, ", keys ", keys.head_dim());
  require(window >= 1 && window <= n, "window scores: window ", window, " must be in [1, ", n, "]");
  require(d <= 1 || queries.stride(2) == 1, "window scores: query vectors must be contiguous");
  require(kv_out.extent(0) == h, "window scores: output has ", kv_out.extent(0), " rows for ", h, " KV heads");
  impl::check_window_outputs(hq, n, opt, kv_out, query_out);
  if (scale <= 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d));
  const index_t group = hq / h;

  using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  float* key_buffer = ws.keys(static_cast<std::size_t>(n * d) + (query_out.data() ? 0 : hq * n));
  float* pooled = query_out.data() ? nullptr : key_buffer + n * d;
  float* logits = ws.logits(static_cast<std::size_t>(window * n));
  float* raw = ws.row(static_cast<std::size_t>(n) + 64);
  bool nan = false;
  for (index_t k = 0; k < h; ++k) {
    // Keys of this KV head as a dense float (N, d) matrix.
    for (index_t t = 0; t < n; ++t) {
      const KeyT* row = keys.row(k, t);
      for (index_t j = 0; j < d; ++j) key_buffer[t * d + j] = to_float(row[j]);
    }
    Eigen::Map<const row_major> key_matrix(key_buffer, n, d);
    for (index_t g = 0; g < group; ++g) {
      const index_t q = k * group + g;
      Eigen::Map<const row_major, Eigen::Unaligned, Eigen::OuterStride<>> query_matrix(
          queries.data() + q * queries.stride(0), window, d, Eigen::OuterStride<>(queries.stride(1)));
      Eigen::Map<row_major> logit_matrix(logits, window, n);
      logit_matrix.noalias() = query_matrix * key_matrix.transpose();
      for (index_t w = 0; w < window; ++w) {
        float* row = logits + w * n;
        const index_t visible = n - window + w + 1;  // causal: keys 0..position
        simd::softmax_in_place(row, visible, scale);
        for (index_t t = visible; t < n; ++t) row[t] = 0.0f;
      }
      for (index_t t = 0; t < n; ++t) raw[t] = logits[t];
      for (index_t w = 1; w < window; ++w)
        for (index_t t = 0; t < n; ++t) raw[t] += logits[w * n + t];
      nan |= simd::any_nan(raw, n);
      float* out = query_out.data() ? query_out.data() + q * query_out.stride(0) : pooled + q * n;
      impl::pool_outside_window(raw, n, window, opt, out);
    }
  }
  require(!nan, "window scores: queries or keys contain NaN or infinity");
  const float* rows = query_out.data() ? query_out.data() : pooled;
  const index_t row_stride = query_out.data() ? query_out.stride(0) : n;
  for (index_t k = 0; k < h; ++k) {
    impl::reduce_group(rows + k * group * row_stride, row_stride, group, n, opt.gqa, kv_out.data() + k * kv_out.stride(0));
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
