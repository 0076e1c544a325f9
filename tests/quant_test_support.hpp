// Helpers shared by the quantization tests (tests/test_quant_*.cpp): K/V
// data shaped like a model's (keys with outlier channels, values without),
// and a plain double-precision attention to compare against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace quant_test {

using kvcrush::index_t;

// One layer's K or V rows in [head][token][dim] order.
struct kv_rows {
  index_t heads = 0, tokens = 0, dim = 0;
  std::vector<float> data;

  kv_rows() = default;
  kv_rows(index_t h, index_t n, index_t d) : heads(h), tokens(n), dim(d), data(static_cast<std::size_t>(h * n * d)) {}
  float* row(index_t h, index_t t) { return data.data() + (h * tokens + t) * dim; }
  const float* row(index_t h, index_t t) const { return data.data() + (h * tokens + t) * dim; }
  kvcrush::kv_view<const float> view() const {
    return kvcrush::make_head_token_dim<const float>(data.data(), heads, tokens, dim);
  }
  // Tokens [begin, begin + count) only.
  kvcrush::kv_view<const float> slice(index_t begin, index_t count) const {
    return kvcrush::kv_view<const float>(view().view().slice(1, begin, count), kvcrush::kv_layout::head_token_dim);
  }
};

// Keys: per-channel offsets and a few outlier channels with large
// magnitudes (the reason KIVI quantizes keys per channel).
inline kv_rows model_like_keys(index_t heads, index_t tokens, index_t dim, std::uint32_t seed) {
  kv_rows k(heads, tokens, dim);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (index_t h = 0; h < heads; ++h) {
    std::vector<float> offset(static_cast<std::size_t>(dim)), spread(static_cast<std::size_t>(dim));
    for (index_t c = 0; c < dim; ++c) {
      offset[static_cast<std::size_t>(c)] = 0.5f * normal(rng);
      spread[static_cast<std::size_t>(c)] = (c % 17 == 3) ? 8.0f : 1.0f;
    }
    for (index_t t = 0; t < tokens; ++t)
      for (index_t c = 0; c < dim; ++c)
        k.row(h, t)[c] = offset[static_cast<std::size_t>(c)] + spread[static_cast<std::size_t>(c)] * normal(rng);
  }
  return k;
}

inline kv_rows model_like_values(index_t heads, index_t tokens, index_t dim, std::uint32_t seed) {
  kv_rows v(heads, tokens, dim);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : v.data) x = normal(rng);
  return v;
}

inline std::vector<float> random_queries(index_t heads, index_t dim, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> q(static_cast<std::size_t>(heads * dim));
  for (auto& x : q) x = normal(rng);
  return q;
}

// softmax(q . k_t * scale) weighted sum of v_t, in double, over the given
// tokens of one head.
inline std::vector<double> reference_attention(const float* q, const kv_rows& k, const kv_rows& v, index_t head,
                                               const std::vector<index_t>& tokens, double scale) {
  const index_t d = k.dim;
  std::vector<double> logits(tokens.size());
  double peak = -INFINITY;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    double s = 0.0;
    for (index_t c = 0; c < d; ++c) s += static_cast<double>(q[c]) * k.row(head, tokens[i])[c];
    logits[i] = s * scale;
    peak = std::max(peak, logits[i]);
  }
  double total = 0.0;
  for (auto& l : logits) {
    l = std::exp(l - peak);
    total += l;
  }
  std::vector<double> out(static_cast<std::size_t>(d), 0.0);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    for (index_t c = 0; c < d; ++c) out[static_cast<std::size_t>(c)] += logits[i] / total * v.row(head, tokens[i])[c];
  return out;
}

inline std::vector<index_t> iota(index_t n) {
  std::vector<index_t> out(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = i;
  return out;
}

// ||a - b|| / ||b||
inline double relative_error(const float* a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace quant_test
