// The caller-owned workspace of a whole eviction pipeline: one scratch per
// stage (scores, selection, quantized storage) plus the score rows a policy
// hands to the selection.
//
// Every stage's functions take only their own scratch type, which a
// workspace converts to, so a stage cannot reach another stage's buffers.
// Buffers grow on demand and never shrink: once a workspace has served the
// largest call (or reserve() was called with the largest shapes) no later
// call allocates. One workspace per thread: it is not synchronised.
#pragma once

#include <cstddef>

#include "kvcrush/quant/quant_scratch.hpp"
#include "kvcrush/scores/attention_scratch.hpp"
#include "kvcrush/scratch.hpp"
#include "kvcrush/select/selection_scratch.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

class workspace : public selection_scratch, public attention_scratch, public quant_scratch {
 public:
  workspace() = default;
  workspace(const workspace&) = delete;
  workspace& operator=(const workspace&) = delete;
  workspace(workspace&&) noexcept = default;
  workspace& operator=(workspace&&) noexcept = default;

  // Grows every buffer for selections over up to `heads` KV heads, `tokens`
  // tokens, `signature_heads` signature rows (0: same as heads; the query
  // heads when signatures or window attention use them) and blocks of up to
  // `block_size` tokens. Window attention recomputed from W queries may still
  // grow attention_scratch once; reserve it directly for that.
  void reserve(index_t heads, index_t tokens, index_t signature_heads = 0, index_t block_size = 1) {
    selection_scratch::reserve(heads, tokens, signature_heads, block_size);
    const index_t h = heads > 0 ? heads : 1;
    const index_t hs = signature_heads > h ? signature_heads : h;
    const auto n = static_cast<std::size_t>(tokens > 0 ? tokens : 1);
    attention_scratch::reserve(hs, 1, tokens, 0);
    quant_scratch::reserve(tokens);
    scores(n * static_cast<std::size_t>(h + 1));
    query_scores(n * static_cast<std::size_t>(hs));
    positions(n);
    head_budgets(static_cast<std::size_t>(h) + 1);
  }

  std::size_t allocations() const noexcept {
    return selection_scratch::allocations() + attention_scratch::allocations() + quant_scratch::allocations() +
           allocations_;
  }

  std::size_t bytes_reserved() const noexcept {
    return selection_scratch::bytes_reserved() + attention_scratch::bytes_reserved() +
           quant_scratch::bytes_reserved() + scores_.capacity() * 4 + query_scores_.capacity() * 4 +
           positions_.capacity() * 8 + head_budgets_.capacity() * 8;
  }

  // Score rows a policy produces for the selection that follows (the views
  // of a policy's score_set point here: valid until the next policy runs on
  // this workspace).
  float* scores(std::size_t n) { return scores_.ensure(n, allocations_); }
  float* query_scores(std::size_t n) { return query_scores_.ensure(n, allocations_); }
  // Joined keep sets (mixed precision).
  index_t* positions(std::size_t n) { return positions_.ensure(n, allocations_); }
  // Per-head unprotected budgets (AdaKV).
  index_t* head_budgets(std::size_t n) { return head_budgets_.ensure(n, allocations_); }

  selection_scratch& selection() noexcept { return *this; }
  attention_scratch& attention() noexcept { return *this; }
  quant_scratch& quant() noexcept { return *this; }

 private:
  std::size_t allocations_ = 0;
  detail::scratch<float> scores_, query_scores_;
  detail::scratch<index_t> positions_, head_budgets_;
};

}  // namespace kvcrush
