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
// (cache().evict(l, keep) or cache().keep_rows(l, rows)); attention then
// covers fewer rows than the position, and the next token still takes the
// next position. The cache is one of kvcrush's (kv_cache.hpp): contiguous by
// default, per-head (ragged) or paged when given, or a quantized or
// mixed-precision one (quantized_stores.hpp), whose rows the store reads.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_observer.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "sequence.hpp"
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
  // seq_len. The model must outlive the engine. The cache is a
  // contiguous_store.
  explicit engine(const model& weights, index_t cache_capacity = 0)
      : engine(weights, std::make_unique<contiguous_store>(weights.config().n_layers, weights.config().n_kv_heads,
                                                           weights.config().head_dim(),
                                                           checked_capacity(weights, cache_capacity))) {}

  // An engine over a given store (made for this model's layers, KV heads
  // and head_dim).
  engine(const model& weights, std::unique_ptr<kv_store> store)
      : model_(&weights), sequence_(weights.config(), std::move(store)) {
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
  }
  engine(const model&&, index_t = 0) = delete;  // would dangle
  engine(const model&&, std::unique_ptr<kv_store>) = delete;

  const model& weights() const noexcept { return *model_; }
  const model_config& config() const noexcept { return model_->config(); }

  // Runs token at position() and returns the logits for the next token
  // (valid until the next call). Throws std::out_of_range for a token
  // outside the vocabulary and std::length_error when a layer's cache is full;
  // in both cases nothing changes.
  const Eigen::VectorXf& forward(int token) {
    const model_config& c = config();
    require_token(c, token);
    sequence_.require_room();
    const index_t dim = c.dim;
    const index_t kv_dim = c.kv_dim();
    const index_t hidden = c.hidden_dim;

    x_ = Eigen::Map<const Eigen::VectorXf>(model_->token_embedding() + static_cast<std::ptrdiff_t>(token) * dim, dim);
    sequence_.set_rope_position();
    const rope_rotation& rope = sequence_.rope();
    for (index_t l = 0; l < c.n_layers; ++l) {
      const layer_weights w = model_->layer(l);
      rms_norm(xb_.data(), x_.data(), w.attention_norm, dim);
      q_.noalias() = weight_matrix(w.wq, dim, dim) * xb_;
      k_.noalias() = weight_matrix(w.wk, kv_dim, dim) * xb_;
      v_.noalias() = weight_matrix(w.wv, kv_dim, dim) * xb_;
      rope.apply(q_.data(), dim);
      rope.apply(k_.data(), kv_dim);

      sequence_.append_and_attend(l, q_.data(), k_.data(), v_.data(), xb_.data());

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
    sequence_.advance();
    return logits_;
  }

  const Eigen::VectorXf& logits() const noexcept { return logits_; }

  // Absolute position the next token will take (tokens processed so far).
  index_t position() const noexcept { return sequence_.position(); }

  kv_store& cache() noexcept { return sequence_.cache(); }
  const kv_store& cache() const noexcept { return sequence_.cache(); }
  index_t cache_capacity() const noexcept { return sequence_.capacity(); }

  // nullptr disables observation. The observer must outlive its use.
  void set_observer(attention_observer* observer) noexcept { sequence_.set_observer(observer); }
  attention_observer* observer() const noexcept { return sequence_.observer(); }

  // Back to position 0 with empty caches (a new sequence).
  void reset() { sequence_.reset(); }

  // Throws std::out_of_range for a token outside the model's vocabulary.
  static void require_token(const model_config& c, int token) {
    if (token < 0 || token >= c.vocab_size) {
      throw std::out_of_range("kvcrush_llama::engine: token " + std::to_string(token) + " outside [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
  }

 private:
  static index_t checked_capacity(const model& weights, index_t cache_capacity) {
    if (cache_capacity < 0) throw std::invalid_argument("kvcrush_llama::engine: negative cache capacity");
    return cache_capacity > 0 ? cache_capacity : weights.config().seq_len;
  }

  const model* model_;
  sequence sequence_;

  // Activations of the current token, named as in llama2.c.
  Eigen::VectorXf x_;         // residual stream [dim]
  Eigen::VectorXf xb_, xb2_;  // branch buffers [dim]
  Eigen::VectorXf q_, k_, v_; // [dim], [kv_dim], [kv_dim]
  Eigen::VectorXf hb_, hb2_;  // FFN [hidden]
  Eigen::VectorXf logits_;    // [vocab]
};

}  // namespace kvcrush_llama
