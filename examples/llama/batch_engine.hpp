// Batched decoding: one step advances many sequences by one token each.
//
// The sequences (sequence.hpp) are independent: each has its own KV store
// (contiguous, per-head, paged, quantized or tiered), its own position (the
// batch may be ragged), and its own observer, so that runs of different
// policies and budgets share a batch. What they share is the model: the
// step's activations are matrices with one row per sequence, and every
// weight matrix is read once per step for all of them (a matrix-matrix
// product, where the single-sequence engine does one matrix-vector product
// per token and reads all the weights again for each).
//
// Work runs on a kvcrush::executor: the products are cut into slices of
// `slice_rows` output features, and attention runs one task per sequence.
// Every dot product sums in one fixed order (16 partial sums), so a
// sequence's numbers do not depend on the batch it is in or on the number
// of threads. The elementwise operations are engine.hpp's, in the same
// order; the products sum in another order than the single-sequence
// engine's Eigen matrix-vector products, so logits agree with it to float
// rounding, not bit for bit (tests/test_batch_engine.cpp bounds the
// difference).
#pragma once

#include <Eigen/Core>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.hpp"
#include "kvcrush/cache/executor.hpp"
#include "model.hpp"
#include "sequence.hpp"
#include "transformer_ops.hpp"

namespace kvcrush_llama {

class batch_engine {
 public:
  // Output features per product task.
  static constexpr index_t slice_rows = 64;

  // The model and the executor must outlive the engine.
  batch_engine(const model& weights, kvcrush::executor& ex) : model_(&weights), executor_(&ex) {}
  batch_engine(const model&&, kvcrush::executor&) = delete;  // would dangle

  const model_config& config() const noexcept { return model_->config(); }

  // Runs tokens[i] on *lanes[i], at that sequence's own position, for every
  // i. Afterwards logits(i) holds lane i's logits for its next token. The
  // lanes must be distinct sequences of this model's shape. Throws before
  // anything changes: std::invalid_argument for mismatched sizes, a null,
  // repeated or mis-shaped lane; std::out_of_range for a token outside the
  // vocabulary; std::length_error when a lane's cache is full. An exception
  // from an observer leaves the batch's lanes at different layers of the
  // step (as the single-sequence engine does for its one lane).
  void forward(const std::vector<sequence*>& lanes, const std::vector<int>& tokens) {
    const model_config& c = config();
    check(lanes, tokens);
    const auto batch = static_cast<index_t>(lanes.size());
    resize(batch);
    const index_t dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim;

    for (index_t i = 0; i < batch; ++i) {
      x_.row(i) = Eigen::Map<const Eigen::RowVectorXf>(
          model_->token_embedding() + static_cast<std::ptrdiff_t>(tokens[static_cast<std::size_t>(i)]) * dim, dim);
      lanes[static_cast<std::size_t>(i)]->set_rope_position();
    }
    for_each_lane(batch, [&](index_t i) {
      rms_norm(xb_.row(i).data(), x_.row(i).data(), model_->layer(0).attention_norm, dim);
    });
    for (index_t l = 0; l < c.n_layers; ++l) {
      const layer_weights w = model_->layer(l);
      multiply({{w.wq, dim, dim, &xb_, &q_}, {w.wk, kv_dim, dim, &xb_, &k_}, {w.wv, kv_dim, dim, &xb_, &v_}});
      for_each_lane(batch, [&](index_t i) {
        sequence& s = *lanes[static_cast<std::size_t>(i)];
        s.rope().apply(q_.row(i).data(), dim);
        s.rope().apply(k_.row(i).data(), kv_dim);
        s.append_and_attend(l, q_.row(i).data(), k_.row(i).data(), v_.row(i).data(), xb_.row(i).data());
      });
      multiply({{w.wo, dim, dim, &xb_, &xb2_}});
      for_each_lane(batch, [&](index_t i) {
        x_.row(i) += xb2_.row(i);
        rms_norm(xb_.row(i).data(), x_.row(i).data(), w.ffn_norm, dim);
      });
      multiply({{w.w1, hidden, dim, &xb_, &hb_}, {w.w3, hidden, dim, &xb_, &hb2_}});
      for_each_lane(batch, [&](index_t i) { swiglu_in_place(hb_.row(i).data(), hb2_.row(i).data(), hidden); });
      multiply({{w.w2, dim, hidden, &hb_, &xb_}});
      const float* next_norm = l + 1 < c.n_layers ? model_->layer(l + 1).attention_norm : model_->final_norm();
      for_each_lane(batch, [&](index_t i) {
        x_.row(i) += xb_.row(i);
        // The next layer's attention norm, or after the last layer the
        // final norm in place (as the engine does).
        if (l + 1 < c.n_layers) {
          rms_norm(xb_.row(i).data(), x_.row(i).data(), next_norm, dim);
        } else {
          rms_norm(x_.row(i).data(), x_.row(i).data(), next_norm, dim);
        }
      });
    }
    multiply({{model_->classifier(), c.vocab_size, dim, &x_, &logits_}});
    for (sequence* s : lanes) s->advance();
  }

  // Lane i's logits after the last forward() (valid until the next one).
  Eigen::Map<const Eigen::VectorXf> logits(index_t lane) const {
    return Eigen::Map<const Eigen::VectorXf>(logits_.row(lane).data(), logits_.cols());
  }

 private:
  using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  // y (batch x out) = x (batch x in) * W^T, W row-major [out][in].
  struct product {
    const float* weights;
    index_t out, in;
    const row_matrix* x;
    row_matrix* y;
  };
  struct slice {
    const product* p;
    index_t first, rows;
  };

  void check(const std::vector<sequence*>& lanes, const std::vector<int>& tokens) const {
    const model_config& c = config();
    if (lanes.size() != tokens.size()) {
      throw std::invalid_argument("kvcrush_llama::batch_engine: " + std::to_string(lanes.size()) + " lanes, " +
                                  std::to_string(tokens.size()) + " tokens");
    }
    std::vector<const sequence*> seen(lanes.begin(), lanes.end());
    std::sort(seen.begin(), seen.end());
    if (!seen.empty() && seen.front() == nullptr) throw std::invalid_argument("kvcrush_llama::batch_engine: null lane");
    if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) {
      throw std::invalid_argument("kvcrush_llama::batch_engine: a sequence appears twice in one step");
    }
    for (std::size_t i = 0; i < lanes.size(); ++i) {
      const kv_store& store = lanes[i]->cache();
      if (store.layers() != c.n_layers || store.kv_heads() != c.n_kv_heads || store.head_dim() != c.head_dim()) {
        throw std::invalid_argument("kvcrush_llama::batch_engine: lane " + std::to_string(i) +
                                    "'s cache does not match the model's layers, KV heads and head_dim");
      }
      engine::require_token(c, tokens[i]);
      lanes[i]->require_room();
    }
  }

  void resize(index_t batch) {
    const model_config& c = config();
    x_.resize(batch, c.dim);
    xb_.resize(batch, c.dim);
    xb2_.resize(batch, c.dim);
    q_.resize(batch, c.dim);
    k_.resize(batch, c.kv_dim());
    v_.resize(batch, c.kv_dim());
    hb_.resize(batch, c.hidden_dim);
    hb2_.resize(batch, c.hidden_dim);
    logits_.resize(batch, c.vocab_size);
  }

  template <class F>
  void for_each_lane(index_t batch, F&& f) {
    kvcrush::parallel_for(*executor_, batch, f);
  }

  void multiply(std::initializer_list<product> products) {
    slices_.clear();
    for (const product& p : products) {
      for (index_t first = 0; first < p.out; first += slice_rows) {
        slices_.push_back({&p, first, std::min(slice_rows, p.out - first)});
      }
    }
    kvcrush::parallel_for(*executor_, static_cast<index_t>(slices_.size()), [&](index_t s) {
      const slice& piece = slices_[static_cast<std::size_t>(s)];
      const product& p = *piece.p;
      const index_t lanes = p.x->rows();
      index_t b = 0;
      for (; b + 4 <= lanes; b += 4) rows_times_lanes<4>(p, piece, b);
      for (; b < lanes; ++b) rows_times_lanes<1>(p, piece, b);
    });
  }

  // y[b][i] = w_i . x_b for the slice's weight rows i and lanes b..b+L-1.
  // Each dot product runs in 16 partial sums (element j goes to sum j mod
  // 16), added up in a fixed order at the end: the same bits whatever the
  // batch, the lane's place in it and the number of threads. Four weight
  // rows and L lanes at a time reuse every load; the weights are read
  // straight from the checkpoint, with no packing (a general matrix
  // product would copy them into its own layout at every step).
  template <index_t L>
  static void rows_times_lanes(const product& p, const slice& piece, index_t b) {
    constexpr index_t width = 16;
    const index_t in = p.in, body = in / width * width;
    const float* x[L];
    for (index_t l = 0; l < L; ++l) x[l] = p.x->row(b + l).data();
    index_t i = piece.first;
    const index_t end = piece.first + piece.rows;
    auto finish = [&](const float (&acc)[width], index_t row, index_t lane) {
      float sum = acc[0];
      for (index_t k = 1; k < width; ++k) sum += acc[k];
      (*p.y)(b + lane, row) = sum;
    };
    for (; i + 4 <= end; i += 4) {
      const float* w[4];
      for (index_t r = 0; r < 4; ++r) w[r] = p.weights + static_cast<std::ptrdiff_t>(i + r) * in;
      float acc[4][L][width] = {};
#if defined(__AVX512F__)
      // The same sums, with the 16 partial sums in one register.
      __m512 vacc[4][L];
      for (index_t r = 0; r < 4; ++r)
        for (index_t l = 0; l < L; ++l) vacc[r][l] = _mm512_setzero_ps();
      for (index_t j = 0; j < body; j += width) {
        __m512 xv[L];
        for (index_t l = 0; l < L; ++l) xv[l] = _mm512_loadu_ps(x[l] + j);
        for (index_t r = 0; r < 4; ++r) {
          const __m512 wv = _mm512_loadu_ps(w[r] + j);
          for (index_t l = 0; l < L; ++l) vacc[r][l] = _mm512_fmadd_ps(wv, xv[l], vacc[r][l]);
        }
      }
      for (index_t r = 0; r < 4; ++r)
        for (index_t l = 0; l < L; ++l) _mm512_storeu_ps(acc[r][l], vacc[r][l]);
#else
      for (index_t j = 0; j < body; j += width) {
        for (index_t r = 0; r < 4; ++r)
          for (index_t l = 0; l < L; ++l)
            for (index_t k = 0; k < width; ++k) acc[r][l][k] += w[r][j + k] * x[l][j + k];
      }
#endif
      for (index_t r = 0; r < 4; ++r)
        for (index_t l = 0; l < L; ++l) {
          for (index_t j = body; j < in; ++j) acc[r][l][j - body] += w[r][j] * x[l][j];
          finish(acc[r][l], i + r, l);
        }
    }
    for (; i < end; ++i) {
      const float* w = p.weights + static_cast<std::ptrdiff_t>(i) * in;
      for (index_t l = 0; l < L; ++l) {
        float acc[width] = {};
        for (index_t j = 0; j < body; j += width)
          for (index_t k = 0; k < width; ++k) acc[k] += w[j + k] * x[l][j + k];
        for (index_t j = body; j < in; ++j) acc[j - body] += w[j] * x[l][j];
        finish(acc, i, l);
      }
    }
  }

  const model* model_;
  kvcrush::executor* executor_;
  std::vector<slice> slices_;
  // One row per lane, named as in engine.hpp.
  row_matrix x_, xb_, xb2_, q_, k_, v_, hb_, hb2_, logits_;
};

}  // namespace kvcrush_llama
