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
      : model_(&weights), cache_(std::move(store)), rope_(weights.config().head_dim()) {
    const model_config& c = weights.config();
    if (!cache_ || cache_->layers() != c.n_layers || cache_->kv_heads() != c.n_kv_heads ||
        cache_->head_dim() != c.head_dim()) {
      throw std::invalid_argument("kvcrush_llama::engine: the cache does not match the model's layers, KV heads and "
                                  "head_dim");
    }
    capacity_ = cache_->capacity();
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
    head_lengths_.assign(static_cast<std::size_t>(c.n_kv_heads), 0);
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
    if (token < 0 || token >= c.vocab_size) {
      throw std::out_of_range("kvcrush_llama::engine: token " + std::to_string(token) + " outside [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
    for (index_t l = 0; l < c.n_layers; ++l) {
      if (cache_->full(l)) {
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

      cache_->append(l, k_.data(), v_.data(), position_);
      attend(l);  // writes the heads' outputs into xb_

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

  kv_store& cache() noexcept { return *cache_; }
  const kv_store& cache() const noexcept { return *cache_; }
  index_t cache_capacity() const noexcept { return capacity_; }

  // nullptr disables observation. The observer must outlive its use.
  void set_observer(attention_observer* observer) noexcept { observer_ = observer; }
  attention_observer* observer() const noexcept { return observer_; }

  // Back to position 0 with empty caches (a new sequence).
  void reset() {
    cache_->clear();
    position_ = 0;
  }

 private:
  static index_t checked_capacity(const model& weights, index_t cache_capacity) {
    if (cache_capacity < 0) throw std::invalid_argument("kvcrush_llama::engine: negative cache capacity");
    return cache_capacity > 0 ? cache_capacity : weights.config().seq_len;
  }

  // Multi-head attention of the current token (q_) over the rows one
  // layer's cache holds (KV head by KV head, run by run: a contiguous
  // store has one run per head, a paged one a run per block), the heads'
  // outputs concatenated into xb_.
  void attend(index_t layer) {
    const model_config& c = config();
    const index_t head_dim = c.head_dim();
    const index_t group = c.kv_group();
    const float score_divisor = std::sqrt(static_cast<float>(head_dim));
    for (index_t g = 0; g < c.n_kv_heads; ++g) head_lengths_[static_cast<std::size_t>(g)] = cache_->length(layer, g);

    for (index_t h = 0; h < c.n_heads; ++h) {
      const float* q = q_.data() + h * head_dim;
      float* probabilities = attention_.data() + h * capacity_;
      const index_t rows = head_lengths_[static_cast<std::size_t>(h / group)];
      float* out = xb_.data() + h * head_dim;
      if (cache_->computes_attention()) {
        // Quantized or float16 rows: the store reads them.
        cache_->key_scores(layer, h / group, q, probabilities);
        for (index_t t = 0; t < rows; ++t) probabilities[t] /= score_divisor;
        softmax_in_place(probabilities, rows);
        cache_->value_sum(layer, h / group, probabilities, out);
        continue;
      }
      index_t t = 0;
      cache_->for_each_run(layer, h / group, [&](const row_run& run) {
        const float* k = run.keys;
        for (index_t i = 0; i < run.count; ++i, ++t, k += run.stride) {
          float score = 0.0f;
          for (index_t j = 0; j < head_dim; ++j) score += q[j] * k[j];
          probabilities[t] = score / score_divisor;
        }
      });
      softmax_in_place(probabilities, rows);

      std::fill(out, out + head_dim, 0.0f);
      t = 0;
      cache_->for_each_run(layer, h / group, [&](const row_run& run) {
        const float* v = run.values;
        for (index_t i = 0; i < run.count; ++i, ++t, v += run.stride) {
          const float a = probabilities[t];
          for (index_t j = 0; j < head_dim; ++j) out[j] += a * v[j];
        }
      });
    }

    if (observer_ != nullptr) {
      const index_t longest = *std::max_element(head_lengths_.begin(), head_lengths_.end());
      attention_event event;
      event.layer = layer;
      event.position = position_;
      event.probabilities = kvcrush::make_matrix_view<const float>(attention_.data(), c.n_heads, longest, capacity_);
      event.queries = kvcrush::make_matrix_view<const float>(q_.data(), c.n_heads, head_dim);
      event.head_lengths = kvcrush::make_vector_view<const index_t>(head_lengths_.data(), c.n_kv_heads);
      if (auto* contiguous = dynamic_cast<contiguous_store*>(cache_.get())) {
        event.keys = contiguous->cache().keys(layer);
        event.values = contiguous->cache().values(layer);
        event.positions = contiguous->cache().positions(layer);
      } else if (auto* paged = dynamic_cast<paged_store*>(cache_.get())) {
        // Observers read a contiguous copy; attention itself walked the blocks.
        const index_t heads = c.n_kv_heads;
        observed_keys_.resize(static_cast<std::size_t>(heads * capacity_ * head_dim));
        observed_values_.resize(observed_keys_.size());
        observed_positions_.resize(static_cast<std::size_t>(heads * capacity_));
        const auto k = kvcrush::make_head_token_dim(observed_keys_.data(), heads, longest, head_dim, capacity_);
        const auto v = kvcrush::make_head_token_dim(observed_values_.data(), heads, longest, head_dim, capacity_);
        const auto p = kvcrush::make_matrix_view(observed_positions_.data(), heads, longest, capacity_);
        paged->pool().gather(paged->sequence().id(), layer, k, v, p);
        event.keys = k;
        event.values = v;
        event.positions = p;
      }
      observer_->on_attention(event);
    }
  }

  const model* model_;
  index_t capacity_ = 0;
  std::unique_ptr<kv_store> cache_;
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
  std::vector<index_t> head_lengths_;  // rows each KV head holds, this layer
  std::vector<float> observed_keys_, observed_values_;  // paged store: what observers see
  std::vector<index_t> observed_positions_;
};

}  // namespace kvcrush_llama
