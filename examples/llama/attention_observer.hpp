// What the engine shows of each attention step, for kvcrush's score sources
// (H2O accumulates the probabilities, SnapKV needs the recent queries).
//
// The engine calls on_attention once per layer for every token it processes
// (prompt or generated), after the token's key/value row was appended and
// its attention computed. All views are valid only during the call. An
// observer must not modify the cache from inside the call; evict between
// engine.forward() calls. With no observer set the engine does no extra work.
#pragma once

#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

struct attention_event {
  index_t layer = 0;
  index_t position = 0;  // absolute position of the token being processed
  // [n_heads][cache_length] float32 softmax over the cached rows, the new
  // token's own row (the last one) included; row r of the cache is column r.
  // Rows are padded: use the view's row stride.
  kvcrush::matrix_view<const float> probabilities;
  // [n_heads][head_dim] queries of the token, RoPE-rotated at position.
  kvcrush::matrix_view<const float> queries;
  // The layer's cache as attended: [kv_head][cache_length][head_dim], and
  // the absolute position of each row ([kv_head][cache_length]). Query head
  // q reads KV head q / (n_heads / n_kv_heads). Empty for a store whose
  // heads hold different numbers of rows (per_head_store); head_lengths
  // gives every KV head's row count in all cases (row h of probabilities
  // is valid up to head_lengths[h / group]).
  kvcrush::kv_view<const float> keys;
  kvcrush::kv_view<const float> values;
  kvcrush::matrix_view<const index_t> positions;
  kvcrush::vector_view<const index_t> head_lengths;
};

class attention_observer {
 public:
  virtual ~attention_observer() = default;
  virtual void on_attention(const attention_event& event) = 0;

 protected:
  attention_observer() = default;
  attention_observer(const attention_observer&) = default;
  attention_observer& operator=(const attention_observer&) = default;
};

}  // namespace kvcrush_llama
