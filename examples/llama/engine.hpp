// Single-token Llama-2 inference over a model, with an evictable KV cache.
//
// forward(token) runs one token at the engine's next absolute position (like
// llama2.c's forward(token, pos)): RMSNorm, q/k/v projections, RoPE on q and
// k, the new row appended to each layer's cache, grouped-query attention over
// the rows the cache holds, the output projection, RMSNorm, SwiGLU FFN, and
// after the last layer the final RMSNorm and the classifier. Matrix-vector
// products use Eigen maps over the weights; everything else performs
// llama2.c's float operations in llama2.c's order (transformer_ops.hpp).
//
// Between forward() calls the caller may evict rows from any layer
// (cache().layer(l).keep_rows(...)); attention then covers fewer rows than
// the position, and the next token still takes the next position.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_observer.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "transformer_ops.hpp"

namespace kvcrush_llama {

using row_major_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// [rows][cols] row-major weights, as stored in the checkpoint.
inline Eigen::Map<const row_major_matrix> weight_matrix(const float* data, index_t rows, index_t cols) {
  return Eigen::Map<const row_major_matrix>(data, rows, cols);
}

class engine {
 public:
  // cache_capacity: rows each layer's cache can hold, 0 for the model's
  // seq_len. The model must outlive the engine.
  explicit engine(const model& weights, index_t cache_capacity = 0)
      : model_(&weights),
        capacity_(cache_capacity > 0 ? cache_capacity : weights.config().seq_len),
        cache_(weights.config().n_layers, weights.config().n_kv_heads, weights.config().head_dim(), capacity_),
        rope_(weights.config().head_dim()) {
    if (cache_capacity < 0) throw std::invalid_argument("kvcrush_llama::engine: negative cache capacity");
    const model_config& c = weights.config();
    x_.resize(c.dim);
    xb_.resize(c.dim);
    xb2_.resize(c.dim);
    q_.resize(c.dim);
    k_.resize(c.kv_dim());
    v_.resize(c.kv_dim());
    hb_.resize(c.hidden_dim);
    hb2_.resize(c.hidden_dim);
    logits_.setZero(c.vocab_size);
    attention_.assign(static_cast<std::size_t>(c.n_heads * capacity_), 0.0f);
  }
  engine(const model&&, index_t = 0) = delete;  // would dangle

  const model& weights() const noexcept { return *model_; }
  const model_config& config() const noexcept { return model_->config(); }

  // Runs token at position() and returns the logits for the next token
  // (valid until the next call). Throws std::out_of_range for a token
  // outside the vocabulary and std::length_error when a layer's cache is full;
  // in both cases nothing changes.
  const Eigen::VectorXf& forward(int token) {
    const model_config& c = config();
    if (token < 0 || token >= c.vocab_size) {
      throw std::out_of_range("kvcrush_llama::engine: token " + std::to_string(token) + " outside [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
    for (index_t l = 0; l < c.n_layers; ++l) {
      if (cache_.layer(l).full()) {
        throw std::length_error("kvcrush_llama::engine: the cache of layer " + std::to_string(l) +
                                " is full (capacity " + std::to_string(capacity_) + ") at position " +
                                std::to_string(position_) + "; evict rows before the next token");
      }
    }
    const index_t dim = c.dim;
    const index_t kv_dim = c.kv_dim();
    const index_t hidden = c.hidden_dim;

    x_ = Eigen::Map<const Eigen::VectorXf>(model_->token_embedding() + static_cast<std::ptrdiff_t>(token) * dim, dim);
    rope_.set_position(position_);
    for (index_t l = 0; l < c.n_layers; ++l) {
      const layer_weights w = model_->layer(l);
      rms_norm(xb_.data(), x_.data(), w.attention_norm, dim);
      q_.noalias() = weight_matrix(w.wq, dim, dim) * xb_;
      k_.noalias() = weight_matrix(w.wk, kv_dim, dim) * xb_;
      v_.noalias() = weight_matrix(w.wv, kv_dim, dim) * xb_;
      rope_.apply(q_.data(), dim);
      rope_.apply(k_.data(), kv_dim);

      layer_cache& cache = cache_.layer(l);
      cache.append(k_.data(), v_.data(), position_);
      attend(l, cache);  // writes the heads' outputs into xb_

      xb2_.noalias() = weight_matrix(w.wo, dim, dim) * xb_;
      x_ += xb2_;

      rms_norm(xb_.data(), x_.data(), w.ffn_norm, dim);
      hb_.noalias() = weight_matrix(w.w1, hidden, dim) * xb_;
      hb2_.noalias() = weight_matrix(w.w3, hidden, dim) * xb_;
      swiglu_in_place(hb_.data(), hb2_.data(), hidden);
      xb_.noalias() = weight_matrix(w.w2, dim, hidden) * hb_;
      x_ += xb_;
    }
    rms_norm(x_.data(), x_.data(), model_->final_norm(), dim);
    logits_.noalias() = weight_matrix(model_->classifier(), c.vocab_size, dim) * x_;
    ++position_;
    return logits_;
  }

  const Eigen::VectorXf& logits() const noexcept { return logits_; }

  // Absolute position the next token will take (tokens processed so far).
  index_t position() const noexcept { return position_; }

  kv_cache& cache() noexcept { return cache_; }
  const kv_cache& cache() const noexcept { return cache_; }
  index_t cache_capacity() const noexcept { return capacity_; }

  // nullptr disables observation. The observer must outlive its use.
  void set_observer(attention_observer* observer) noexcept { observer_ = observer; }
  attention_observer* observer() const noexcept { return observer_; }

  // Back to position 0 with empty caches (a new sequence).
  void reset() noexcept {
    cache_.clear();
    position_ = 0;
  }

 private:
  // Multi-head attention of the current token (q_) over the rows of one
  // layer's cache, the heads' outputs concatenated into xb_.
  void attend(index_t layer, const layer_cache& cache) {
    const model_config& c = config();
    const index_t head_dim = c.head_dim();
    const index_t group = c.kv_group();
    // One length for all heads of the layer (see kv_cache.hpp).
    const index_t rows = cache.length();
    const kvcrush::kv_view<const float> keys = cache.keys();
    const kvcrush::kv_view<const float> values = cache.values();
    const index_t row_stride = keys.token_stride();
    const float score_divisor = std::sqrt(static_cast<float>(head_dim));

    for (index_t h = 0; h < c.n_heads; ++h) {
      const float* q = q_.data() + h * head_dim;
      float* probabilities = attention_.data() + h * capacity_;
      const float* k = keys.row(h / group, 0);
      for (index_t t = 0; t < rows; ++t, k += row_stride) {
        float score = 0.0f;
        for (index_t i = 0; i < head_dim; ++i) score += q[i] * k[i];
        probabilities[t] = score / score_divisor;
      }
      softmax_in_place(probabilities, rows);

      float* out = xb_.data() + h * head_dim;
      std::fill(out, out + head_dim, 0.0f);
      const float* v = values.row(h / group, 0);
      for (index_t t = 0; t < rows; ++t, v += row_stride) {
        const float a = probabilities[t];
        for (index_t i = 0; i < head_dim; ++i) out[i] += a * v[i];
      }
    }

    if (observer_ != nullptr) {
      attention_event event;
      event.layer = layer;
      event.position = position_;
      event.probabilities = kvcrush::make_matrix_view<const float>(attention_.data(), c.n_heads, rows, capacity_);
      event.queries = kvcrush::make_matrix_view<const float>(q_.data(), c.n_heads, head_dim);
      event.keys = keys;
      event.values = values;
      event.positions = cache.positions();
      observer_->on_attention(event);
    }
  }

  const model* model_;
  index_t capacity_;
  kv_cache cache_;
  rope_rotation rope_;
  index_t position_ = 0;
  attention_observer* observer_ = nullptr;

  // Activations of the current token, named as in llama2.c.
  Eigen::VectorXf x_;         // residual stream [dim]
  Eigen::VectorXf xb_, xb2_;  // branch buffers [dim]
  Eigen::VectorXf q_, k_, v_; // [dim], [kv_dim], [kv_dim]
  Eigen::VectorXf hb_, hb2_;  // FFN [hidden]
  Eigen::VectorXf logits_;    // [vocab]
  std::vector<float> attention_;  // probabilities [n_heads][capacity]
};

}  // namespace kvcrush_llama
