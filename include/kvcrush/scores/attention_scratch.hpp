// Scratch memory of the score stage: what window attention needs while it
// turns queries and keys (or given probabilities) into scores.
//
// Separate from the selection's scratch, so the W x N logits and the dense
// key copy of a recomputation can never be overwritten by, or overwrite, a
// selection that runs on the resulting scores.
#pragma once

#include <cstddef>

#include "kvcrush/scratch.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

class attention_scratch {
 public:
  attention_scratch() = default;
  attention_scratch(const attention_scratch&) = delete;
  attention_scratch& operator=(const attention_scratch&) = delete;
  attention_scratch(attention_scratch&&) noexcept = default;
  attention_scratch& operator=(attention_scratch&&) noexcept = default;

  // Grows the buffers for window attention over `tokens` keys of width
  // `head_dim`, `window` queries and `query_heads` query heads.
  void reserve(index_t query_heads, index_t window, index_t tokens, index_t head_dim) {
    const auto hq = static_cast<std::size_t>(query_heads > 0 ? query_heads : 1);
    const auto w = static_cast<std::size_t>(window > 0 ? window : 1);
    const auto n = static_cast<std::size_t>(tokens > 0 ? tokens : 1);
    const auto d = static_cast<std::size_t>(head_dim > 0 ? head_dim : 0);
    row(n + 64);
    keys(n * d + hq * n);
    logits(w * n);
  }

  std::size_t allocations() const noexcept { return allocations_; }
  std::size_t bytes_reserved() const noexcept {
    return (row_.capacity() + keys_.capacity() + logits_.capacity() + unit_keys_.capacity()) * sizeof(float) +
           wide_.capacity() * sizeof(double);
  }

  // One query row's sums or pooled scores (N + 64 for the pooling halo).
  float* row(std::size_t n) { return row_.ensure(n, allocations_); }
  // One KV head's keys as dense floats, then the pooled per-query-head rows.
  float* keys(std::size_t n) { return keys_.ensure(n, allocations_); }
  // The W x N logits of a recomputation.
  float* logits(std::size_t n) { return logits_.ensure(n, allocations_); }
  // The unit keys and per-token values of R-KV's redundancy (rkv_scratch_floats).
  float* unit_keys(std::size_t n) { return unit_keys_.ensure(n, allocations_); }
  // Double-precision rows of the keys-only sources: KeyDiff's norms and
  // anchor, Expected Attention's statistics and logits.
  double* wide(std::size_t n) { return wide_.ensure(n, allocations_); }

 private:
  std::size_t allocations_ = 0;
  detail::scratch<float> row_, keys_, logits_, unit_keys_;
  detail::scratch<double> wide_;
};

}  // namespace kvcrush
