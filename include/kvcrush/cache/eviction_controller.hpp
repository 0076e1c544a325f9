// Decode-time eviction: one controller per sequence keeps the scores a
// policy needs up to date as tokens are generated, and evicts whenever a
// layer's cache would exceed budget + slack, down to the budget.
//
// Per decode step and layer the engine calls
//   make_room(layer, 1, ws)   before appending the new token's K/V: evicts
//                             if the cache would otherwise exceed the limit
//   ...append K/V, compute attention...
//   observe(layer, probs)     the new query's attention (Hq, cache length)
// so the cache never holds more than budget + slack tokens, and a selection
// runs once per `slack` new tokens (amortised: with slack 0 every step
// evicts one token, which is classic H2O). Prefill-time compression (SnapKV
// from window attention over the prompt, or any policy_config) goes through
// compress(), which updates the tracked scores the same way.
//
// The choice is kvcrush::select(policy_config, ...) (policy/runtime.hpp), so
// every base policy and composition works (h2o+kvcrush, tova, streaming,
// snapkv from the last `window` decode queries, block mode...). Tracked
// inputs: an h2o_accumulator per layer for H2O (GQA reduction from
// policy.window.gqa), and the last `window` attention rows per layer for
// SnapKV/PyramidKV (window attention) and TOVA (the newest row). Key-norm
// and SnapKV-from-queries read the keys when the cache exposes contiguous
// keys(layer) (contiguous_cache); the paged cache does not.
//
// Layout: shared keep sets and per-head ones with a uniform budget work
// with both caches. Head-wise ragged budgets (AdaKV) are refused at
// construction and in compress(): after a ragged eviction heads would hold
// different numbers of tokens, which neither the H2O scores (select() needs
// every head at the layer's length) nor the paged layout (heads share token
// slots) can follow. One-shot AdaKV compression is still available with
// select() and compact() on per-head views (ragged keep sets).
//
// Block mode (policy.layout.block_size = b > 1, SPEC 4.4): budget and
// protected regions are multiples of b; the paged cache evicts whole blocks
// (its block size must equal b), a contiguous cache compacts them. The
// partial last block is always kept, so slack must be >= b.
//
// The Cache interface (contiguous_cache<T> and paged_sequence<T> have it):
//   index_t layers() const, kv_heads() const, block_size() const;
//   index_t length(index_t layer) const;
//   void evict_tokens(index_t layer, const keep_view&);
//   void evict_blocks(index_t layer, vector_view<const index_t>, index_t block_size);
//   optional: kv_view<const T> keys(index_t layer) const.
//
// Threads: different layers of one controller may be driven concurrently
// (all state is per layer); batch.hpp runs many controllers in parallel.
// No call allocates after construction (the workspace must have served the
// largest call once, or be reserved).
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/policy/policies.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct eviction_settings {
  policy_config policy = policy_config::parse("h2o");  // the decode-time policy
  std::vector<layer_budget> budgets;  // one per layer, or one for every layer
  index_t slack = 32;                 // tokens allowed above the budget between selections
  index_t query_heads = 0;            // Hq of the attention handed to observe(); 0: the cache's KV heads
  index_t window = 0;                 // attention rows kept; 0: 32 for snapkv/pyramidkv, 1 for tova, else none
  index_t max_tokens = 0;             // longest layer the controller sees (prompt included); 0: budget + slack
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class C, class = void>
struct has_key_view : std::false_type {};
template <class C>
struct has_key_view<C, std::void_t<decltype(std::declval<const C&>().keys(index_t{}))>> : std::true_type {};

template <class Keys>
void set_key_cache(key_cache& out, const Keys& keys) {
  using element = std::remove_cv_t<typename Keys::element_type>;
  if constexpr (std::is_same_v<element, float>) {
    out.f32 = keys;
  } else if constexpr (std::is_same_v<element, float16>) {
    out.f16 = keys;
  } else {
    out.bf16 = keys;
  }
}

}  // namespace impl

template <class Cache>
class eviction_controller {
 public:
  eviction_controller(Cache& cache, eviction_settings settings) : cache_(&cache), settings_(std::move(settings)) {
    using kvcrush::detail::require;
    const index_t layers = cache.layers();
    heads_ = cache.kv_heads();
    const policy_config& p = settings_.policy;
    query_heads_ = settings_.query_heads > 0 ? settings_.query_heads : heads_;
    require(query_heads_ % heads_ == 0, "eviction_controller: ", query_heads_, " query heads do not split evenly over ",
            heads_, " KV heads");
    require(!p.adakv, "eviction_controller: AdaKV head-wise budgets leave KV heads with different lengths, which "
            "decode-time eviction cannot follow; use select() and compact() with ragged keep sets for one-shot AdaKV");
    require(settings_.budgets.size() == 1 || static_cast<index_t>(settings_.budgets.size()) == layers,
            "eviction_controller: ", settings_.budgets.size(), " budgets for ", layers,
            " layers (give one per layer, or one for all)");
    require(settings_.slack >= 0, "eviction_controller: slack must be >= 0 (got ", settings_.slack, ")");
    const index_t b = p.layout.block_size;
    require(b >= 1, "eviction_controller: block size must be >= 1");
    if (b > 1) {
      require(!p.layout.per_head, "eviction_controller: block eviction keeps whole blocks for every head; per-head "
              "keep sets need token granularity");
      require(settings_.slack >= b, "eviction_controller: block mode keeps the partial last block, so slack (",
              settings_.slack, ") must be >= the block size (", b, ")");
      require(cache.block_size() == 1 || cache.block_size() == b, "eviction_controller: selection block size ", b,
              " differs from the cache's block size ", cache.block_size());
    }
    index_t widest = 0;
    for (const auto& lb : settings_.budgets) {
      require(lb.budget >= 0 && lb.sink >= 0 && lb.recent >= 0 && lb.budget >= lb.sink + lb.recent,
              "eviction_controller: budget ", lb.budget, " must be >= sink + recent (", lb.sink, " + ", lb.recent, ")");
      widest = std::max(widest, lb.budget);
    }
    max_tokens_ = settings_.max_tokens > 0 ? settings_.max_tokens : widest + settings_.slack;
    const bool window_policy = p.base == base_policy::snapkv || p.base == base_policy::pyramidkv;
    window_ = settings_.window > 0 ? settings_.window : window_policy ? 32 : p.base == base_policy::tova ? 1 : 0;
    tracks_h2o_ = p.base == base_policy::h2o;
    layers_.resize(static_cast<std::size_t>(layers));
    for (index_t l = 0; l < layers; ++l) {
      layer_state& s = layers_[static_cast<std::size_t>(l)];
      s.budget = settings_.budgets.size() == 1 ? settings_.budgets[0] : settings_.budgets[static_cast<std::size_t>(l)];
      if (tracks_h2o_) s.h2o = h2o_accumulator(heads_, query_heads_, max_tokens_, p.window.gqa);
      s.rows.assign(static_cast<std::size_t>(window_ * query_heads_ * max_tokens_), 0.0f);
      s.row_width.assign(static_cast<std::size_t>(window_), 0);
      s.keep.assign(static_cast<std::size_t>(heads_ * (max_tokens_ + 1)), 0);
      s.counts.assign(static_cast<std::size_t>(heads_), 0);
      s.tokens.assign(static_cast<std::size_t>(max_tokens_ + 1), 0);
    }
  }

  Cache& cache() const noexcept { return *cache_; }
  const eviction_settings& settings() const noexcept { return settings_; }
  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  index_t max_tokens() const noexcept { return max_tokens_; }
  const layer_budget& budget(index_t layer) const { return state(layer).budget; }
  // The most tokens a layer holds between selections: budget + slack.
  index_t limit(index_t layer) const { return state(layer).budget.budget + settings_.slack; }
  // Evictions done on a layer so far.
  index_t selections(index_t layer) const { return state(layer).selections; }
  // The H2O scores of a layer (null when the policy is not H2O).
  const h2o_accumulator* h2o(index_t layer) const { return tracks_h2o_ ? &state(layer).h2o : nullptr; }

  // The keep set of the latest selection of a layer, as select() wrote it
  // (token indices, or block indices in block mode).
  keep_view last_keep(index_t layer) const {
    const layer_state& s = state(layer);
    return keep_view(make_matrix_view<const index_t>(s.keep.data(), s.keep_rows, max_tokens_ + 1),
                     make_vector_view<const index_t>(s.counts.data(), s.keep_rows));
  }

  // Changes a layer's budget from now on (e.g. once a head-wise allocation
  // over the prompt has given this cache its share). The next make_room()
  // holds the layer to the new budget + slack.
  void set_budget(index_t layer, const layer_budget& budget) {
    using kvcrush::detail::require;
    require(budget.budget >= 0 && budget.sink >= 0 && budget.recent >= 0 && budget.budget >= budget.sink + budget.recent,
            "eviction_controller::set_budget: budget ", budget.budget, " is below sink + recent (",
            budget.sink + budget.recent, ")");
    require(budget.budget + settings_.slack <= max_tokens_, "eviction_controller::set_budget: budget + slack exceeds "
            "the controller's capacity of ", max_tokens_, " tokens");
    state(layer).budget = budget;
  }

  // True when appending new_tokens would take the layer above its limit.
  bool needs_eviction(index_t layer, index_t new_tokens = 1) const {
    return cache_->length(layer) + new_tokens > limit(layer);
  }

  // Evicts (select, then compaction of the cache and of the tracked scores)
  // if appending new_tokens would exceed budget + slack. Returns whether it
  // evicted. Throws before changing anything when the policy cannot make
  // enough room (e.g. new_tokens > slack in block mode).
  bool make_room(index_t layer, index_t new_tokens, workspace& ws) {
    if (!plan(layer, new_tokens, ws)) return false;
    apply(layer);
    return true;
  }

  // make_room in two steps, for engines that select and compact in separate
  // passes. plan() runs the selection (it reads the cache and updates only
  // this controller's tracking of the layer); apply() compacts. The cache's
  // layer must not change in between.
  bool plan(index_t layer, index_t new_tokens, workspace& ws) {
    using kvcrush::detail::require;
    layer_state& s = state(layer);
    require(new_tokens >= 0, "eviction_controller: negative token count");
    const index_t n = cache_->length(layer);
    const index_t lim = limit(layer);
    if (n + new_tokens <= lim) return false;
    const index_t b = settings_.policy.layout.block_size;
    layer_budget target = s.budget;
    if (b == 1) target.budget = std::min(s.budget.budget, lim - new_tokens);
    // StreamingLLM's recent window is everything after the sink, whatever
    // room the step needs (SPEC 3: its budget is sink + recent).
    if (settings_.policy.base == base_policy::streaming && !settings_.policy.kvcrush) {
      target.recent = std::max<index_t>(target.budget - target.sink, 0);
    }
    require(target.budget >= target.sink + target.recent, "eviction_controller: appending ", new_tokens,
            " tokens at once leaves room for ", target.budget, " cached tokens, below sink + recent (",
            target.sink + target.recent, "); append at most slack (", settings_.slack, ") tokens per step");
    layer_inputs in;
    in.kv_heads = heads_;
    in.tokens = n;
    fill_tracked(layer, in);
    select_into(layer, settings_.policy, in, target, ws);
    check_room(layer, n, new_tokens, lim);
    return true;
  }

  void apply(index_t layer) {
    using kvcrush::detail::require;
    layer_state& s = state(layer);
    if (!s.pending) return;
    require(cache_->length(layer) == s.planned_length, "eviction_controller::apply: the layer changed (",
            s.planned_length, " -> ", cache_->length(layer), " tokens) since plan()");
    const keep_view chosen = last_keep(layer);
    keep_view tokens = chosen;
    if (s.block_size > 1) {
      const auto blocks = make_vector_view<const index_t>(s.keep.data(), s.counts[0]);
      cache_->evict_blocks(layer, blocks, s.block_size);
      // The tracked scores follow token by token.
      index_t count = 0;
      for (index_t i = 0; i < s.counts[0]; ++i) {
        const index_t first = blocks[i] * s.block_size;
        const index_t end = std::min(first + s.block_size, s.planned_length);
        for (index_t t = first; t < end; ++t) s.tokens[static_cast<std::size_t>(count++)] = t;
      }
      tokens = keep_view::shared(s.tokens.data(), count);
    } else {
      cache_->evict_tokens(layer, chosen);
    }
    compact_tracked(s, tokens);
    s.pending = false;
    ++s.selections;
  }

  // The attention of the newest query of `layer`: probabilities (Hq, w) over
  // the layer's first w cached tokens (w <= length; normally w = length).
  void observe(index_t layer, matrix_view<const float> probabilities) {
    using kvcrush::detail::require;
    layer_state& s = state(layer);
    const index_t w = probabilities.extent(1);
    require(probabilities.extent(0) == query_heads_, "eviction_controller::observe: attention has ",
            probabilities.extent(0), " rows for ", query_heads_, " query heads");
    require(w <= cache_->length(layer) && w <= max_tokens_, "eviction_controller::observe: attention covers ", w,
            " tokens, the layer holds ", cache_->length(layer), " (controller capacity ", max_tokens_, ")");
    require(w <= 1 || probabilities.stride(1) == 1, "eviction_controller::observe: attention rows must be contiguous");
    if (tracks_h2o_) {
      const index_t len = s.h2o.length(0);
      require(w >= len, "eviction_controller::observe: attention covers ", w, " tokens, fewer than the ", len,
              " the H2O scores follow");
      if (w > len) s.h2o.append(w - len);
      s.h2o.accumulate(probabilities);
    }
    if (window_ > 0) {
      index_t slot;
      if (s.ring_count < window_) {
        slot = (s.ring_start + s.ring_count++) % window_;
      } else {
        slot = s.ring_start;
        s.ring_start = (s.ring_start + 1) % window_;
      }
      float* row = ring_row(s, slot);
      for (index_t q = 0; q < query_heads_; ++q) {
        const float* src = probabilities.data() + q * probabilities.stride(0);
        std::copy(src, src + w, row + q * max_tokens_);
      }
      s.row_width[static_cast<std::size_t>(slot)] = w;
    }
  }

  // What `policy` would keep of the layer at `budget`, from the scores the
  // controller tracks, written to out; nothing is evicted and a pending
  // plan() is left alone. For engines that act on a ranking in other ways
  // than eviction: which tokens stay at full precision in a mixed-precision
  // cache, which go to host memory, ...
  void choose(index_t layer, const policy_config& policy, const layer_budget& budget, keep_sets out, workspace& ws) {
    state(layer);
    layer_inputs in;
    in.kv_heads = heads_;
    in.tokens = cache_->length(layer);
    fill_tracked(layer, in);
    kvcrush::select(policy, in, budget, out, ws);
  }

  // One-shot compression of a layer with any policy (e.g. SnapKV over the
  // prompt's window attention at prefill), down to `budget`. Fields of `in`
  // left empty are filled from what the controller tracks (kv_heads, tokens,
  // H2O scores, window rows, contiguous keys). The tracked scores follow the
  // eviction.
  void compress(index_t layer, const policy_config& policy, layer_inputs in, const layer_budget& budget,
                workspace& ws) {
    using kvcrush::detail::require;
    state(layer);
    require(!policy.adakv, "eviction_controller::compress: AdaKV head-wise budgets leave KV heads with different "
            "lengths; use select() and compact() with ragged keep sets instead");
    const index_t b = policy.layout.block_size;
    require(b == 1 || cache_->block_size() == 1 || cache_->block_size() == b,
            "eviction_controller::compress: selection block size ", b, " differs from the cache's block size ",
            cache_->block_size());
    const index_t n = cache_->length(layer);
    if (in.kv_heads == 0) in.kv_heads = heads_;
    if (in.tokens == 0) in.tokens = n;
    require(in.kv_heads == heads_ && in.tokens == n, "eviction_controller::compress: layer_inputs describe (",
            in.kv_heads, " heads, ", in.tokens, " tokens), the layer holds (", heads_, ", ", n, ")");
    fill_tracked(layer, in);
    select_into(layer, policy, in, budget, ws);
    apply(layer);
  }

 private:
  struct layer_state {
    layer_budget budget;
    h2o_accumulator h2o;
    std::vector<float> rows;          // ring of attention rows: [window][Hq][max_tokens]
    std::vector<index_t> row_width;   // columns observe() wrote in each ring slot
    index_t ring_start = 0, ring_count = 0;
    std::vector<index_t> keep;        // (rows, max_tokens + 1): the latest selection
    std::vector<index_t> counts;      // entries per keep row
    std::vector<index_t> tokens;      // block selections expanded to tokens
    index_t keep_rows = 1;
    index_t block_size = 1;
    index_t planned_length = 0;
    bool pending = false;
    index_t selections = 0;
  };

  layer_state& state(index_t layer) {
    kvcrush::detail::require(layer >= 0 && layer < layers(), "eviction_controller: layer ", layer,
                             " out of range [0, ", layers(), ")");
    return layers_[static_cast<std::size_t>(layer)];
  }
  const layer_state& state(index_t layer) const { return const_cast<eviction_controller*>(this)->state(layer); }

  float* ring_row(layer_state& s, index_t slot) const noexcept {
    return s.rows.data() + static_cast<std::size_t>(slot * query_heads_ * max_tokens_);
  }

  // Brings the tracked scores to the layer's n tokens and hands them to
  // the policy (without overriding inputs the caller gave).
  void fill_tracked(index_t layer, layer_inputs& in) {
    using kvcrush::detail::require;
    layer_state& s = state(layer);
    const index_t n = in.tokens;
    require(n <= max_tokens_, "eviction_controller: the layer holds ", n, " tokens, more than max_tokens (",
            max_tokens_, ")");
    if (tracks_h2o_) {
      // Synced even when the caller brings its own scores: the eviction
      // compacts these too.
      const index_t len = s.h2o.length(0);
      require(len <= n, "eviction_controller: the H2O scores follow ", len, " tokens, the layer holds only ", n,
              " (was the cache evicted behind the controller's back?)");
      if (len < n) s.h2o.append(n - len);  // tokens never attended to yet: score 0
      if (in.h2o == nullptr) in.h2o = &s.h2o;
    }
    if (window_ > 0 && s.ring_count > 0) {
      // Oldest row first (the SPEC sums the window in query order), and
      // zeros where a row's query could not see later tokens.
      if (s.ring_start != 0) {
        const auto row_size = static_cast<std::ptrdiff_t>(query_heads_ * max_tokens_);
        std::rotate(s.rows.begin(), s.rows.begin() + s.ring_start * row_size, s.rows.begin() + s.ring_count * row_size);
        std::rotate(s.row_width.begin(), s.row_width.begin() + s.ring_start, s.row_width.begin() + s.ring_count);
        s.ring_start = 0;
      }
      for (index_t r = 0; r < s.ring_count; ++r) {
        const index_t w = s.row_width[static_cast<std::size_t>(r)];
        require(w <= n, "eviction_controller: an attention row covers ", w, " tokens, the layer holds only ", n);
        for (index_t q = 0; q < query_heads_; ++q) {
          float* row = ring_row(s, r) + q * max_tokens_;
          std::fill(row + w, row + n, 0.0f);
        }
        s.row_width[static_cast<std::size_t>(r)] = n;
      }
      if (in.window_attention.data() == nullptr && s.ring_count <= n) {
        in.window_attention = strided_view<const float, 3>(s.rows.data(), {query_heads_, s.ring_count, n},
                                                           {max_tokens_, query_heads_ * max_tokens_, 1});
      }
      if (in.last_attention.data() == nullptr) {
        in.last_attention = matrix_view<const float>(ring_row(s, s.ring_count - 1), {query_heads_, n}, {max_tokens_, 1});
      }
    }
    if constexpr (impl::has_key_view<Cache>::value) {
      if (in.keys.empty()) impl::set_key_cache(in.keys, cache_->keys(layer));
    }
  }

  void select_into(index_t layer, const policy_config& policy, const layer_inputs& in, const layer_budget& budget,
                   workspace& ws) {
    using kvcrush::detail::require;
    layer_state& s = state(layer);
    const index_t rows = policy.layout.per_head ? heads_ : 1;
    const keep_sets out{make_matrix_view(s.keep.data(), rows, max_tokens_ + 1),
                        make_vector_view(s.counts.data(), rows)};
    s.pending = false;
    kvcrush::select(policy, in, budget, out, ws);
    for (index_t r = 1; r < rows; ++r) {
      require(s.counts[static_cast<std::size_t>(r)] == s.counts[0], "eviction_controller: the policy chose ragged "
              "per-head keep sets; the controller needs one length per layer");
    }
    s.keep_rows = rows;
    s.block_size = policy.layout.block_size;
    s.planned_length = in.tokens;
    s.pending = true;
  }

  // After a selection: refuses (before anything changes) when the kept
  // tokens plus the new ones would still exceed the limit.
  void check_room(index_t layer, index_t n, index_t new_tokens, index_t lim) {
    layer_state& s = state(layer);
    index_t kept = s.counts[0];
    if (s.block_size > 1) {
      kept = 0;
      for (index_t i = 0; i < s.counts[0]; ++i) {
        const index_t first = s.keep[static_cast<std::size_t>(i)] * s.block_size;
        kept += std::min(first + s.block_size, n) - first;
      }
    }
    if (kept + new_tokens > lim) {
      s.pending = false;
      kvcrush::detail::throw_invalid("eviction_controller: the policy keeps ", kept, " of ", n, " tokens; with ",
                                     new_tokens, " new ones the layer would exceed its limit of ", lim);
    }
  }

  void compact_tracked(layer_state& s, const keep_view& keep) {
    if (tracks_h2o_) {
      for (index_t h = 0; h < heads_; ++h) {
        const index_t r = keep.row_of_head(h);
        s.h2o.compact(h, keep.rows.data() + r * keep.rows.stride(0), keep.count(r));
      }
    }
    if (window_ > 0) {
      const index_t group = query_heads_ / heads_;
      for (index_t slot = 0; slot < s.ring_count; ++slot) {
        const index_t ring_slot = (s.ring_start + slot) % window_;
        float* rows = ring_row(s, ring_slot);
        for (index_t q = 0; q < query_heads_; ++q) {
          float* row = rows + q * max_tokens_;
          const index_t r = keep.row_of_head(q / group);
          const index_t count = keep.count(r);
          for (index_t i = 0; i < count; ++i) row[i] = row[keep.at(r, i)];
        }
        s.row_width[static_cast<std::size_t>(ring_slot)] = keep.count(0);
      }
    }
  }

  Cache* cache_;
  eviction_settings settings_;
  index_t heads_ = 0, query_heads_ = 0, window_ = 0, max_tokens_ = 0;
  bool tracks_h2o_ = false;
  std::vector<layer_state> layers_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
