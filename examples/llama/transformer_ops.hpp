// The elementwise building blocks of the Llama-2 forward pass: RMSNorm,
// softmax, RoPE, the SwiGLU gate and greedy argmax.
//
// Each one performs the float operations of llama2.c's run.c in the same
// order (sequential float sums, the same divisions and library calls), so
// that greedy decoding reproduces llama2.c's output token for token; where a
// simpler formula would round differently, the comment says so.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

inline constexpr float rms_norm_epsilon = 1e-5f;
inline constexpr float rope_base = 10000.0f;

// out[j] = weight[j] * (x[j] / sqrt(mean(x^2) + eps)). out may alias x.
// The scale is computed once as 1/sqrt and multiplied into x before the
// weight, as llama2.c does.
inline void rms_norm(float* out, const float* x, const float* weight, index_t n) noexcept {
  float sum_squares = 0.0f;
  for (index_t j = 0; j < n; ++j) sum_squares += x[j] * x[j];
  sum_squares /= static_cast<float>(n);
  sum_squares += rms_norm_epsilon;
  const float scale = 1.0f / std::sqrt(sum_squares);
  for (index_t j = 0; j < n; ++j) out[j] = weight[j] * (scale * x[j]);
}

// Numerically stable softmax in place over n >= 1 values; the normalisation
// divides by the sum (not a multiply by its inverse) like llama2.c.
inline void softmax_in_place(float* x, index_t n) noexcept {
  float max_value = x[0];
  for (index_t i = 1; i < n; ++i) {
    if (x[i] > max_value) max_value = x[i];
  }
  float sum = 0.0f;
  for (index_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_value);
    sum += x[i];
  }
  for (index_t i = 0; i < n; ++i) x[i] /= sum;
}

// The rotation RoPE applies at one absolute position: pair i of every head
// (elements 2i, 2i+1) turns by position * 10000^(-2i/head_dim). The angles
// depend only on the position, so they are computed once per token and
// shared by all layers and heads (llama2.c recomputes the same values).
class rope_rotation {
 public:
  explicit rope_rotation(index_t head_dim)
      : head_dim_(head_dim), cos_(static_cast<std::size_t>(head_dim / 2)), sin_(cos_.size()) {}

  void set_position(index_t position) noexcept {
    for (index_t i = 0; i < head_dim_ / 2; ++i) {
      // Same float expression as llama2.c: 1 / 10000^(2i / head_dim), then
      // position * frequency in float.
      const float frequency =
          1.0f / std::pow(rope_base, static_cast<float>(2 * i) / static_cast<float>(head_dim_));
      const float angle = static_cast<float>(position) * frequency;
      cos_[static_cast<std::size_t>(i)] = std::cos(angle);
      sin_[static_cast<std::size_t>(i)] = std::sin(angle);
    }
  }

  // Rotates every head of vec (size a multiple of head_dim) in place.
  void apply(float* vec, index_t size) const noexcept {
    for (index_t head = 0; head < size; head += head_dim_) {
      for (index_t i = 0; i < head_dim_ / 2; ++i) {
        const float c = cos_[static_cast<std::size_t>(i)];
        const float s = sin_[static_cast<std::size_t>(i)];
        float* pair = vec + head + 2 * i;
        const float v0 = pair[0];
        const float v1 = pair[1];
        pair[0] = v0 * c - v1 * s;
        pair[1] = v0 * s + v1 * c;
      }
    }
  }

  index_t head_dim() const noexcept { return head_dim_; }

 private:
  index_t head_dim_;
  std::vector<float> cos_, sin_;
};

// gate[i] = silu(gate[i]) * up[i], with silu(x) = x * (1 / (1 + e^-x)).
inline void swiglu_in_place(float* gate, const float* up, index_t n) noexcept {
  for (index_t i = 0; i < n; ++i) {
    float v = gate[i];
    v = v * (1.0f / (1.0f + std::exp(-v)));
    gate[i] = v * up[i];
  }
}

// Index of the largest value, the first one on ties (greedy decoding).
inline index_t argmax(const float* values, index_t n) noexcept {
  index_t best = 0;
  for (index_t i = 1; i < n; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

}  // namespace kvcrush_llama
