// One sequence's decoding state, apart from the model and the activations:
// its KV store, the absolute position of its next token, its attention
// observer, and the scratch its attention needs.
//
// The single-sequence engine (engine.hpp) owns one; the batched engine
// (batch_engine.hpp) advances many at once, each at its own position and
// with its own store, so that ragged lengths, different stores and
// different policies share a batch. attend() is the part of a layer that
// reads the cache: it is per sequence, whatever runs the matrix products.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_observer.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "transformer_ops.hpp"

namespace kvcrush_llama {

class sequence {
 public:
  // A sequence over a store made for this model's layers, KV heads and
  // head_dim (std::invalid_argument otherwise).
  sequence(const model_config& c, std::unique_ptr<kv_store> store)
      : config_(c), cache_(std::move(store)), rope_(c.head_dim()) {
    if (!cache_ || cache_->layers() != c.n_layers || cache_->kv_heads() != c.n_kv_heads ||
        cache_->head_dim() != c.head_dim()) {
      throw std::invalid_argument("kvcrush_llama::sequence: the cache does not match the model's layers, KV heads "
                                  "and head_dim");
    }
    capacity_ = cache_->capacity();
    attention_.assign(static_cast<std::size_t>(c.n_heads * capacity_), 0.0f);
    head_lengths_.assign(static_cast<std::size_t>(c.n_kv_heads), 0);
  }

  // Absolute position the next token takes (tokens processed so far).
  index_t position() const noexcept { return position_; }
  kv_store& cache() noexcept { return *cache_; }
  const kv_store& cache() const noexcept { return *cache_; }
  index_t capacity() const noexcept { return capacity_; }

  // nullptr disables observation. The observer must outlive its use.
  void set_observer(attention_observer* observer) noexcept { observer_ = observer; }
  attention_observer* observer() const noexcept { return observer_; }

  // Throws std::length_error, naming the layer, when a layer's cache cannot
  // take one more row.
  void require_room() const {
    for (index_t l = 0; l < config_.n_layers; ++l) {
      if (cache_->full(l)) {
        throw std::length_error("kvcrush_llama::engine: the cache of layer " + std::to_string(l) +
                                " is full (capacity " + std::to_string(capacity_) + ") at position " +
                                std::to_string(position_) + "; evict rows before the next token");
      }
    }
  }

  // The RoPE rotation at position(): set_position() before a token's layers.
  rope_rotation& rope() noexcept { return rope_; }
  void set_rope_position() noexcept { rope_.set_position(position_); }

  // One layer of the current token: appends its key/value row (keys already
  // rotated, kv_dim floats each) at position(), then multi-head attention of
  // q (n_heads * head_dim, rotated) over the rows the layer's cache holds,
  // the heads' outputs concatenated into out (n_heads * head_dim), then the
  // observer's call.
  void append_and_attend(index_t layer, const float* q, const float* k, const float* v, float* out) {
    cache_->append(layer, k, v, position_);
    attend(layer, q, out);
  }

  // Appends a key/value row at position() without attending (a row
  // computed elsewhere, e.g. by a prefill shared with other sequences).
  void append(index_t layer, const float* k, const float* v) { cache_->append(layer, k, v, position_); }

  // The token is done: the next one takes the next position.
  void advance() noexcept { ++position_; }

  // Back to position 0 with empty caches (a new sequence).
  void reset() {
    cache_->clear();
    position_ = 0;
  }

 private:
  // KV head by KV head, run by run: a contiguous store has one run per
  // head, a paged one a run per block.
  void attend(index_t layer, const float* q_all, float* out_all) {
    const model_config& c = config_;
    const index_t head_dim = c.head_dim();
    const index_t group = c.kv_group();
    const float score_divisor = std::sqrt(static_cast<float>(head_dim));
    for (index_t g = 0; g < c.n_kv_heads; ++g) head_lengths_[static_cast<std::size_t>(g)] = cache_->length(layer, g);

    for (index_t h = 0; h < c.n_heads; ++h) {
      const float* q = q_all + h * head_dim;
      float* probabilities = attention_.data() + h * capacity_;
      const index_t rows = head_lengths_[static_cast<std::size_t>(h / group)];
      float* out = out_all + h * head_dim;
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
        // Each row's dot product sums j = 0, 1, ... in order (llama2.c's
        // rounding); blocks of rows run side by side so that the compiler
        // can vectorise across rows without reordering any row's sum.
        constexpr index_t block = 16;
        index_t i = 0;
        for (; i + block <= run.count; i += block, t += block) {
          float score[block] = {};
          const float* k = run.keys + i * run.stride;
          for (index_t j = 0; j < head_dim; ++j) {
            for (index_t r = 0; r < block; ++r) score[r] += q[j] * k[r * run.stride + j];
          }
          for (index_t r = 0; r < block; ++r) probabilities[t + r] = score[r] / score_divisor;
        }
        for (const float* k = run.keys + i * run.stride; i < run.count; ++i, ++t, k += run.stride) {
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
    if (observer_ != nullptr) notify(layer, q_all);
  }

  void notify(index_t layer, const float* q_all) {
    const model_config& c = config_;
    const index_t head_dim = c.head_dim();
    const index_t longest = *std::max_element(head_lengths_.begin(), head_lengths_.end());
    attention_event event;
    event.layer = layer;
    event.position = position_;
    event.probabilities = kvcrush::make_matrix_view<const float>(attention_.data(), c.n_heads, longest, capacity_);
    event.queries = kvcrush::make_matrix_view<const float>(q_all, c.n_heads, head_dim);
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

  model_config config_;
  index_t capacity_ = 0;
  std::unique_ptr<kv_store> cache_;
  rope_rotation rope_;
  index_t position_ = 0;
  attention_observer* observer_ = nullptr;
  std::vector<float> attention_;       // probabilities [n_heads][capacity]
  std::vector<index_t> head_lengths_;  // rows each KV head holds, this layer
  std::vector<float> observed_keys_, observed_values_;  // paged store: what observers see
  std::vector<index_t> observed_positions_;
};

}  // namespace kvcrush_llama
