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
// SnapKV/PyramidKV (window attention), R-KV (window attention for its
// importance; its redundancy compares the cached keys of the evictable
// region) and TOVA (the newest row); the last `window` queries per layer
// for Expected Attention (observe_queries(), with the values from the cache). Key-norm, KeyDiff, R-KV
// and SnapKV-from-queries read the keys when the cache exposes contiguous
// keys(layer) (contiguous_cache); the paged cache does not.
//
// Layout: shared keep sets and per-head ones with a uniform budget work
// with both caches.
//
// AdaKV (settings.policy with +adakv): head-wise budgets leave the KV heads
// of a layer with different lengths, so the cache must hold ragged heads
// (per_head_cache; see "Cache interface" below), and every KV head is
// tracked and evicted on its own: its own H2O sums and window rows (over its
// group of query heads), its own budget and its own selections with the
// base policy (the policy without +adakv, one shared keep set per head, so
// +kvcrush signatures come from that head alone). A layer's budget is
// shared out across its heads once (AdaKV is a prompt-compression method):
// SnapKV scores of the last `window` tracked attention rows (the policy's
// window options) go to allocate_head_budgets (policy/adakv.hpp, alpha =
// policy.adakv_alpha); each head then compresses to sink + recent + its
// share and keeps to share + slack while decoding. When that happens:
//   adakv_allocation::first_eviction  at compress() of a layer longer than
//                                     the budget, or else the first time the
//                                     layer would exceed budget + slack;
//   adakv_allocation::compress_only   only at compress() of a layer longer
//                                     than the budget; a layer that never was
//                                     keeps the uniform budget per head.
// This is exactly one controller per KV head over single-head caches, with
// the allocation done by hand (tests/test_cache_adakv.cpp checks it token
// for token). plan()/apply() and choose() are refused with AdaKV (use
// make_room); last_keep, h2o and budgets are asked per head.
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
// With AdaKV it also needs, per KV head h (per_head_cache has them):
//   index_t length(index_t layer, index_t h) const;
//   void evict_tokens(index_t layer, index_t h, const keep_view&);  (one row)
//   optional: kv_view<const T> keys(index_t layer, index_t h) const.
//
// Threads: different layers of one controller may be driven concurrently
// (all state is per layer); batch.hpp runs many controllers in parallel.
// No call allocates after construction (the workspace must have served the
// largest call once, or be reserved).
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/policy/policies.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// AdaKV: when a layer's budget is shared out across its KV heads (see the
// header comment).
enum class adakv_allocation { first_eviction, compress_only };

struct eviction_settings {
  policy_config policy = policy_config::parse("h2o");  // the decode-time policy
  std::vector<layer_budget> budgets;  // one per layer, or one for every layer
  index_t slack = 32;                 // tokens allowed above the budget between selections
  index_t query_heads = 0;            // Hq of the attention handed to observe(); 0: the cache's KV heads
  index_t window = 0;                 // attention rows kept; 0: 32 for snapkv/pyramidkv/rkv/+adakv, 1 for tova,
                                      // else none
  index_t max_tokens = 0;             // longest layer the controller sees (prompt included); 0: budget + slack
                                      // (+adakv: budget + 2 slack, a head's share may reach budget + slack)
  adakv_allocation allocation = adakv_allocation::first_eviction;  // +adakv only
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class C, class = void>
struct has_key_view : std::false_type {};
template <class C>
struct has_key_view<C, std::void_t<decltype(std::declval<const C&>().keys(index_t{}))>> : std::true_type {};

// Caches whose KV heads have lengths of their own (per_head_cache).
template <class C, class = void>
struct has_head_lengths : std::false_type {};
template <class C>
struct has_head_lengths<C, std::void_t<decltype(std::declval<const C&>().length(index_t{}, index_t{})),
                                       decltype(std::declval<C&>().evict_tokens(index_t{}, index_t{},
                                                                                std::declval<const keep_view&>()))>>
    : std::true_type {};
template <class C, class = void>
struct has_head_key_view : std::false_type {};
template <class C>
struct has_head_key_view<C, std::void_t<decltype(std::declval<const C&>().keys(index_t{}, index_t{}))>>
    : std::true_type {};

template <class C, class = void>
struct has_value_view : std::false_type {};
template <class C>
struct has_value_view<C, std::void_t<decltype(std::declval<const C&>().values(index_t{}))>> : std::true_type {};
template <class C, class = void>
struct has_head_value_view : std::false_type {};
template <class C>
struct has_head_value_view<C, std::void_t<decltype(std::declval<const C&>().values(index_t{}, index_t{}))>>
    : std::true_type {};
template <class C, class = void>
struct has_head_dim : std::false_type {};
template <class C>
struct has_head_dim<C, std::void_t<decltype(std::declval<const C&>().head_dim())>> : std::true_type {};

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
    ragged_ = p.adakv;
    if (ragged_) {
      require(impl::has_head_lengths<Cache>::value, "eviction_controller: AdaKV head-wise budgets leave KV heads "
              "with different lengths, which this cache cannot hold; use per_head_cache (cache/per_head_cache.hpp)");
      require(p.layout.block_size == 1, "eviction_controller: AdaKV head-wise budgets need token granularity "
              "(block size ", p.layout.block_size, ")");
    }
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
    max_tokens_ = settings_.max_tokens > 0 ? settings_.max_tokens : widest + (ragged_ ? 2 : 1) * settings_.slack;
    const bool window_policy =
        p.base == base_policy::snapkv || p.base == base_policy::pyramidkv || p.base == base_policy::rkv || p.adakv;
    window_ = settings_.window > 0 ? settings_.window : window_policy ? 32 : p.base == base_policy::tova ? 1 : 0;
    // Expected Attention reads the last queries, not attention rows.
    tracks_queries_ = p.base == base_policy::expected_attention;
    if (tracks_queries_) {
      if constexpr (impl::has_head_dim<Cache>::value) head_dim_ = cache.head_dim();
      require(head_dim_ >= 1, "eviction_controller: expected_attention tracks the last queries, which needs a cache "
              "with head_dim()");
      query_window_ = settings_.window > 0 ? settings_.window : 32;
      if (!p.adakv) window_ = 0;
    }
    tracks_h2o_ = p.base == base_policy::h2o;
    // The unit of tracking and eviction: the whole layer, or with AdaKV one
    // KV head and its group of query heads.
    units_ = ragged_ ? heads_ : 1;
    unit_heads_ = ragged_ ? 1 : heads_;
    unit_query_heads_ = ragged_ ? query_heads_ / heads_ : query_heads_;
    unit_policy_ = head_policy(p);
    layers_.resize(static_cast<std::size_t>(layers * units_));
    for (index_t l = 0; l < layers; ++l) {
      const layer_budget& lb =
          settings_.budgets.size() == 1 ? settings_.budgets[0] : settings_.budgets[static_cast<std::size_t>(l)];
      for (index_t u = 0; u < units_; ++u) {
        layer_state& s = layers_[static_cast<std::size_t>(l * units_ + u)];
        s.budget = lb;
        if (tracks_h2o_) {
          // Query-head KVCrush signatures need the per-query-head sums.
          const bool query_rows = p.kvcrush && p.crush.heads == signature_heads::query;
          s.h2o = h2o_accumulator(unit_heads_, unit_query_heads_, max_tokens_, p.window.gqa, query_rows);
        }
        s.rows.assign(static_cast<std::size_t>(window_ * unit_query_heads_ * max_tokens_), 0.0f);
        s.spare_row.assign(window_ > 0 ? static_cast<std::size_t>(unit_query_heads_ * max_tokens_) : 0, 0.0f);
        s.row_width.assign(static_cast<std::size_t>(window_), 0);
        s.runs.assign(window_ > 0 ? static_cast<std::size_t>(2 * (max_tokens_ + 1)) : 0, 0);
        s.queries.assign(static_cast<std::size_t>(query_window_ * unit_query_heads_ * head_dim_), 0.0f);
        s.keep.assign(static_cast<std::size_t>(unit_heads_ * (max_tokens_ + 1)), 0);
        s.counts.assign(static_cast<std::size_t>(unit_heads_), 0);
        s.tokens.assign(static_cast<std::size_t>(max_tokens_ + 1), 0);
      }
    }
    if (ragged_) {
      shares_.resize(static_cast<std::size_t>(layers));
      for (index_t l = 0; l < layers; ++l) {
        head_shares& sh = shares_[static_cast<std::size_t>(l)];
        sh.budget = layers_[static_cast<std::size_t>(l * units_)].budget;
        sh.window.assign(static_cast<std::size_t>(query_heads_ * window_ * max_tokens_), 0.0f);
        sh.scores.assign(static_cast<std::size_t>(heads_ * max_tokens_), 0.0f);
        sh.rest.assign(static_cast<std::size_t>(heads_), 0);
      }
    }
  }

  Cache& cache() const noexcept { return *cache_; }
  const eviction_settings& settings() const noexcept { return settings_; }
  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()) / units_; }
  index_t max_tokens() const noexcept { return max_tokens_; }
  // Whether KV heads are tracked and evicted one by one (AdaKV).
  bool head_wise() const noexcept { return ragged_; }
  // The layer's budget (with AdaKV: the one shared out across its heads).
  const layer_budget& budget(index_t layer) const {
    return ragged_ ? shares_[static_cast<std::size_t>(check_layer(layer))].budget : state(layer).budget;
  }
  // The budget KV head h keeps to (with AdaKV its share once the layer's
  // budget was shared out; else the layer's).
  const layer_budget& head_budget(index_t layer, index_t head) const { return state(layer, unit_of(head)).budget; }
  // Whether AdaKV shared out the layer's budget across its heads.
  bool shared_out(index_t layer) const {
    return ragged_ && shares_[static_cast<std::size_t>(check_layer(layer))].done;
  }
  // The most tokens a layer holds between selections: budget + slack (with
  // AdaKV, head h holds at most head_budget(layer, h).budget + slack).
  index_t limit(index_t layer) const { return budget(layer).budget + settings_.slack; }
  // Evictions done on a layer so far (with AdaKV: summed over its heads).
  index_t selections(index_t layer) const {
    index_t total = 0;
    for (index_t u = 0; u < units_; ++u) total += state(layer, u).selections;
    return total;
  }
  // The H2O scores of a layer (null when the policy is not H2O); with
  // AdaKV, of KV head h (one head, its query group).
  const h2o_accumulator* h2o(index_t layer) const {
    kvcrush::detail::require(!ragged_, "eviction_controller::h2o: AdaKV tracks every KV head apart; ask h2o(layer, head)");
    return tracks_h2o_ ? &state(layer).h2o : nullptr;
  }
  const h2o_accumulator* h2o(index_t layer, index_t head) const {
    return tracks_h2o_ ? &state(layer, unit_of(head)).h2o : nullptr;
  }

  // The keep set of the latest selection of a layer, as select() wrote it
  // (token indices, or block indices in block mode). With AdaKV: of KV head
  // h, one row over that head's tokens.
  keep_view last_keep(index_t layer) const {
    kvcrush::detail::require(!ragged_, "eviction_controller::last_keep: AdaKV selects every KV head apart; ask "
                             "last_keep(layer, head)");
    return keep_of(state(layer));
  }
  keep_view last_keep(index_t layer, index_t head) const { return keep_of(state(layer, unit_of(head))); }

  // Changes a layer's budget from now on (e.g. once a head-wise allocation
  // over the prompt has given this cache its share). The next make_room()
  // holds the layer to the new budget + slack. With AdaKV, before the
  // layer's budget is shared out: the budget to share out, and meanwhile
  // every head's.
  void set_budget(index_t layer, const layer_budget& budget) {
    using kvcrush::detail::require;
    require(budget.budget >= 0 && budget.sink >= 0 && budget.recent >= 0 && budget.budget >= budget.sink + budget.recent,
            "eviction_controller::set_budget: budget ", budget.budget, " is below sink + recent (",
            budget.sink + budget.recent, ")");
    require(budget.budget + settings_.slack <= max_tokens_, "eviction_controller::set_budget: budget + slack exceeds "
            "the controller's capacity of ", max_tokens_, " tokens");
    require(!shared_out(layer), "eviction_controller::set_budget: AdaKV already shared out layer ", layer,
            "'s budget across its heads");
    for (index_t u = 0; u < units_; ++u) state(layer, u).budget = budget;
    if (ragged_) shares_[static_cast<std::size_t>(layer)].budget = budget;
  }

  // True when appending new_tokens would take the layer (with AdaKV: any of
  // its heads) above its limit.
  bool needs_eviction(index_t layer, index_t new_tokens = 1) const {
    for (index_t u = 0; u < units_; ++u) {
      if (unit_length(layer, u) + new_tokens > state(layer, u).budget.budget + settings_.slack) return true;
    }
    return false;
  }

  // Evicts (select, then compaction of the cache and of the tracked scores)
  // if appending new_tokens would exceed budget + slack. Returns whether it
  // evicted. Throws before changing anything when the policy cannot make
  // enough room (e.g. new_tokens > slack in block mode). With AdaKV, every
  // head that needs room evicts (after the layer's budget is shared out,
  // the first time it fills, with adakv_allocation::first_eviction); all
  // heads are selected before any is evicted.
  bool make_room(index_t layer, index_t new_tokens, workspace& ws) {
    if (!ragged_) {
      if (!plan(layer, new_tokens, ws)) return false;
      apply(layer);
      return true;
    }
    kvcrush::detail::require(new_tokens >= 0, "eviction_controller: negative token count");
    bool evicted = false;
    head_shares& sh = shares_[static_cast<std::size_t>(check_layer(layer))];
    if (!sh.done && settings_.allocation == adakv_allocation::first_eviction && needs_eviction(layer, new_tokens)) {
      share_out(layer, settings_.policy, sh.budget, ws);
      evicted = true;
    }
    index_t planned = 0;
    try {
      for (index_t u = 0; u < units_; ++u) planned += plan_unit(layer, u, new_tokens, ws);
    } catch (...) {
      drop_pending(layer);
      throw;
    }
    if (planned > 0) {
      apply_units(layer);
      evicted = true;
    }
    return evicted;
  }

  // make_room in two steps, for engines that select and compact in separate
  // passes. plan() runs the selection (it reads the cache and updates only
  // this controller's tracking of the layer); apply() compacts. The cache's
  // layer must not change in between. Not with AdaKV (make_room).
  bool plan(index_t layer, index_t new_tokens, workspace& ws) {
    kvcrush::detail::require(!ragged_, "eviction_controller::plan: AdaKV evicts head by head; use make_room");
    return plan_unit(layer, 0, new_tokens, ws);
  }

  void apply(index_t layer) {
    check_layer(layer);
    apply_units(layer);
  }

  // The attention of the newest query of `layer`: probabilities (Hq, w) over
  // the layer's first w cached tokens (w <= length; normally w = length).
  // With AdaKV, w <= the longest head's length, and KV head h reads its
  // query heads' rows over its first min(w, length(layer, h)) tokens
  // (columns beyond are ignored).
  void observe(index_t layer, matrix_view<const float> probabilities) {
    using kvcrush::detail::require;
    check_layer(layer);
    const index_t w = probabilities.extent(1);
    require(probabilities.extent(0) == query_heads_, "eviction_controller::observe: attention has ",
            probabilities.extent(0), " rows for ", query_heads_, " query heads");
    require(w <= 1 || probabilities.stride(1) == 1, "eviction_controller::observe: attention rows must be contiguous");
    if (!ragged_) {
      observe_unit(layer, 0, probabilities);
      return;
    }
    index_t widest = 0;
    for (index_t u = 0; u < units_; ++u) widest = std::max(widest, unit_length(layer, u));
    require(w <= widest && w <= max_tokens_, "eviction_controller::observe: attention covers ", w,
            " tokens, the layer's longest head holds ", widest, " (controller capacity ", max_tokens_, ")");
    if (tracks_h2o_) {
      // Checked for every head before any head's scores change.
      for (index_t u = 0; u < units_; ++u) {
        const index_t len = state(layer, u).h2o.length(0);
        require(std::min(w, unit_length(layer, u)) >= len, "eviction_controller::observe: attention covers ",
                std::min(w, unit_length(layer, u)), " tokens of KV head ", u, ", fewer than the ", len,
                " its H2O scores follow");
      }
    }
    const index_t group = unit_query_heads_, stride = probabilities.stride(0);
    for (index_t u = 0; u < units_; ++u) {
      const index_t width = std::min(w, unit_length(layer, u));
      observe_unit(layer, u,
                   matrix_view<const float>(probabilities.data() + u * group * stride, {group, width}, {stride, 1}));
    }
  }

  // The queries of the newest token of `layer`, (Hq, head_dim), and its
  // absolute position: the last `window` of them are Expected Attention's
  // statistics (window_queries), and position + 1 its first future
  // position. With future_positions > 0 they must be the queries before
  // RoPE. Ignored when the policy does not read queries, so engines may
  // always call it.
  void observe_queries(index_t layer, matrix_view<const float> queries, index_t position) {
    using kvcrush::detail::require;
    check_layer(layer);
    if (!tracks_queries_) return;
    require(queries.extent(0) == query_heads_ && queries.extent(1) == head_dim_,
            "eviction_controller::observe_queries: queries are (", queries.extent(0), ", ", queries.extent(1),
            "), the controller expects (", query_heads_, ", ", head_dim_, ")");
    require(head_dim_ <= 1 || queries.stride(1) == 1, "eviction_controller::observe_queries: query rows must be "
            "contiguous");
    require(position >= 0, "eviction_controller::observe_queries: position must be >= 0 (got ", position, ")");
    const index_t group = unit_query_heads_;
    for (index_t u = 0; u < units_; ++u) {
      layer_state& s = state(layer, u);
      index_t slot;
      if (s.query_count < query_window_) {
        slot = (s.query_start + s.query_count++) % query_window_;
      } else {
        slot = s.query_start;
        s.query_start = (s.query_start + 1) % query_window_;
      }
      float* dst = s.queries.data() + slot * group * head_dim_;
      for (index_t q = 0; q < group; ++q) {
        const float* src = queries.data() + (u * group + q) * queries.stride(0);
        std::copy(src, src + head_dim_, dst + q * head_dim_);
      }
      s.next_position = position + 1;
    }
  }

  // What `policy` would keep of the layer at `budget`, from the scores the
  // controller tracks, written to out; nothing is evicted and a pending
  // plan() is left alone. For engines that act on a ranking in other ways
  // than eviction: which tokens stay at full precision in a mixed-precision
  // cache, which go to host memory, ... Not with AdaKV.
  void choose(index_t layer, const policy_config& policy, const layer_budget& budget, keep_sets out, workspace& ws) {
    kvcrush::detail::require(!ragged_, "eviction_controller::choose: AdaKV tracks every KV head apart");
    state(layer);
    layer_inputs in;
    in.kv_heads = heads_;
    in.tokens = cache_->length(layer);
    fill_tracked(layer, 0, in);
    kvcrush::select(policy, in, budget, out, ws);
  }

  // One-shot compression of a layer with any policy (e.g. SnapKV over the
  // prompt's window attention at prefill), down to `budget`. Fields of `in`
  // left empty are filled from what the controller tracks (kv_heads, tokens,
  // H2O scores, window rows, contiguous keys). The tracked scores follow the
  // eviction.
  //
  // With AdaKV (the controller's policy has +adakv), `policy` must have
  // +adakv too and `in` must be empty (every input comes from what the
  // controller tracks): if the layer holds more than budget.budget tokens,
  // its budget is shared out across the heads (policy's window options and
  // alpha) and each head compresses to its share with policy's base; a layer
  // within budget is left alone.
  void compress(index_t layer, const policy_config& policy, layer_inputs in, const layer_budget& budget,
                workspace& ws) {
    using kvcrush::detail::require;
    state(layer);
    if (ragged_) {
      require(policy.adakv, "eviction_controller::compress: the controller tracks KV heads apart for AdaKV; "
              "compress with an +adakv policy");
      require(in.kv_heads == 0 && in.tokens == 0 && in.scores.data() == nullptr &&
                  in.window_attention.data() == nullptr && in.window_queries.data() == nullptr && in.keys.empty() &&
                  in.last_attention.data() == nullptr && in.h2o == nullptr,
              "eviction_controller::compress: with AdaKV every input comes from what the controller tracks; pass "
              "empty layer_inputs");
      require(budget.budget >= 0 && budget.sink >= 0 && budget.recent >= 0 &&
                  budget.budget >= budget.sink + budget.recent,
              "eviction_controller::compress: budget ", budget.budget, " is below sink + recent (",
              budget.sink + budget.recent, ")");
      require(!shared_out(layer), "eviction_controller::compress: AdaKV already shared out layer ", layer,
              "'s budget across its heads");
      if (unit_length(layer, 0) <= budget.budget) return;
      share_out(layer, policy, budget, ws);
      return;
    }
    require(!policy.adakv, "eviction_controller::compress: AdaKV head-wise budgets leave KV heads with different "
            "lengths; construct the controller with the +adakv policy over a per_head_cache");
    const index_t b = policy.layout.block_size;
    require(b == 1 || cache_->block_size() == 1 || cache_->block_size() == b,
            "eviction_controller::compress: selection block size ", b, " differs from the cache's block size ",
            cache_->block_size());
    const index_t n = cache_->length(layer);
    if (in.kv_heads == 0) in.kv_heads = heads_;
    if (in.tokens == 0) in.tokens = n;
    require(in.kv_heads == heads_ && in.tokens == n, "eviction_controller::compress: layer_inputs describe (",
            in.kv_heads, " heads, ", in.tokens, " tokens), the layer holds (", heads_, ", ", n, ")");
    fill_tracked(layer, 0, in);
    select_into(layer, 0, policy, in, budget, ws);
    apply_units(layer);
  }

 private:
  struct layer_state {
    layer_budget budget;
    h2o_accumulator h2o;
    std::vector<float> rows;          // ring of attention rows: [window][Hq][max_tokens]
    std::vector<index_t> row_width;   // columns observe() wrote in each ring slot
    std::vector<float> spare_row;     // [Hq][max_tokens]: one slot, for putting the ring in order
    index_t ring_start = 0, ring_count = 0;
    index_t observed = 0;             // rows observe() added since the last compaction
    index_t observed_before = 0;      // and between the two compactions before that
    std::vector<index_t> runs;        // (max_tokens + 1) x 2: runs of consecutive kept columns
    std::vector<float> queries;       // ring of queries: [query_window][Hq][head_dim]
    index_t query_start = 0, query_count = 0;
    index_t next_position = -1;       // after the newest observed query
    std::vector<index_t> keep;        // (rows, max_tokens + 1): the latest selection
    std::vector<index_t> counts;      // entries per keep row
    std::vector<index_t> tokens;      // block selections expanded to tokens
    index_t keep_rows = 1;
    index_t block_size = 1;
    index_t planned_length = 0;
    bool pending = false;
    index_t selections = 0;
  };

  // AdaKV, per layer: the budget shared out and the allocation's scratch.
  struct head_shares {
    layer_budget budget;
    bool done = false;
    std::vector<float> window;   // (Hq, W, tokens): the tracked rows of every head
    std::vector<float> scores;   // (H, tokens): their SnapKV scores
    std::vector<index_t> rest;   // (H): each head's unprotected share
  };

  static policy_config head_policy(policy_config p) {
    if (p.adakv) {
      p.adakv = false;
      p.layout.per_head = false;  // one keep set for the one KV head
    }
    return p;
  }

  index_t check_layer(index_t layer) const {
    kvcrush::detail::require(layer >= 0 && layer < layers(), "eviction_controller: layer ", layer,
                             " out of range [0, ", layers(), ")");
    return layer;
  }
  index_t unit_of(index_t head) const {
    kvcrush::detail::require(head >= 0 && head < heads_, "eviction_controller: KV head ", head, " out of range [0, ",
                             heads_, ")");
    return ragged_ ? head : 0;
  }
  layer_state& state(index_t layer, index_t unit = 0) {
    return layers_[static_cast<std::size_t>(check_layer(layer) * units_ + unit)];
  }
  const layer_state& state(index_t layer, index_t unit = 0) const {
    return const_cast<eviction_controller*>(this)->state(layer, unit);
  }

  index_t unit_length(index_t layer, index_t unit) const {
    if constexpr (impl::has_head_lengths<Cache>::value) {
      if (ragged_) return cache_->length(layer, unit);
    }
    return cache_->length(layer);
  }
  void evict_unit(index_t layer, index_t unit, const keep_view& keep) {
    if constexpr (impl::has_head_lengths<Cache>::value) {
      if (ragged_) {
        cache_->evict_tokens(layer, unit, keep);
        return;
      }
    }
    cache_->evict_tokens(layer, keep);
  }

  // Forgets the selections of a layer's heads after one of them failed.
  void drop_pending(index_t layer) {
    for (index_t u = 0; u < units_; ++u) state(layer, u).pending = false;
  }

  keep_view keep_of(const layer_state& s) const {
    return keep_view(make_matrix_view<const index_t>(s.keep.data(), s.keep_rows, max_tokens_ + 1),
                     make_vector_view<const index_t>(s.counts.data(), s.keep_rows));
  }

  float* ring_row(layer_state& s, index_t slot) const noexcept {
    return s.rows.data() + static_cast<std::size_t>(slot * unit_query_heads_ * max_tokens_);
  }

  bool plan_unit(index_t layer, index_t unit, index_t new_tokens, workspace& ws) {
    using kvcrush::detail::require;
    layer_state& s = state(layer, unit);
    require(new_tokens >= 0, "eviction_controller: negative token count");
    const index_t n = unit_length(layer, unit);
    const index_t lim = s.budget.budget + settings_.slack;
    if (n + new_tokens <= lim) return false;
    const policy_config& policy = unit_policy_;
    const index_t b = policy.layout.block_size;
    layer_budget target = s.budget;
    if (b == 1) target.budget = std::min(s.budget.budget, lim - new_tokens);
    // StreamingLLM's recent window is everything after the sink, whatever
    // room the step needs (SPEC 3: its budget is sink + recent).
    if (policy.base == base_policy::streaming && !policy.kvcrush) {
      target.recent = std::max<index_t>(target.budget - target.sink, 0);
    }
    require(target.budget >= target.sink + target.recent, "eviction_controller: appending ", new_tokens,
            " tokens at once leaves room for ", target.budget, " cached tokens, below sink + recent (",
            target.sink + target.recent, "); append at most slack (", settings_.slack, ") tokens per step");
    layer_inputs in;
    in.kv_heads = unit_heads_;
    in.tokens = n;
    fill_tracked(layer, unit, in);
    select_into(layer, unit, policy, in, target, ws);
    check_room(layer, unit, n, new_tokens, lim);
    return true;
  }

  // Evicts every unit of the layer with a pending selection.
  void apply_units(index_t layer) {
    using kvcrush::detail::require;
    for (index_t u = 0; u < units_; ++u) {
      layer_state& s = state(layer, u);
      if (s.pending) {
        require(unit_length(layer, u) == s.planned_length, "eviction_controller::apply: the layer changed (",
                s.planned_length, " -> ", unit_length(layer, u), " tokens) since plan()");
      }
    }
    for (index_t u = 0; u < units_; ++u) {
      layer_state& s = state(layer, u);
      if (!s.pending) continue;
      const keep_view chosen = keep_of(s);
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
        evict_unit(layer, u, chosen);
      }
      compact_tracked(s, tokens);
      s.pending = false;
      ++s.selections;
    }
  }

  void observe_unit(index_t layer, index_t unit, matrix_view<const float> probabilities) {
    using kvcrush::detail::require;
    layer_state& s = state(layer, unit);
    const index_t w = probabilities.extent(1);
    require(w <= unit_length(layer, unit) && w <= max_tokens_, "eviction_controller::observe: attention covers ", w,
            " tokens, the layer holds ", unit_length(layer, unit), " (controller capacity ", max_tokens_, ")");
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
      ++s.observed;
      float* row = ring_row(s, slot);
      for (index_t q = 0; q < unit_query_heads_; ++q) {
        const float* src = probabilities.data() + q * probabilities.stride(0);
        std::copy(src, src + w, row + q * max_tokens_);
      }
      s.row_width[static_cast<std::size_t>(slot)] = w;
    }
  }

  // AdaKV: shares the layer's budget out across its heads from the SnapKV
  // scores of the tracked window rows, then compresses every head to its
  // share (all heads selected before any is evicted) and holds it there.
  void share_out(index_t layer, const policy_config& policy, const layer_budget& b, workspace& ws) {
    using kvcrush::detail::require;
    head_shares& sh = shares_[static_cast<std::size_t>(layer)];
    const index_t n = unit_length(layer, 0);
    for (index_t u = 1; u < units_; ++u) {
      require(unit_length(layer, u) == n, "eviction_controller: AdaKV shares out a layer whose heads hold the same "
              "tokens; head ", u, " holds ", unit_length(layer, u), ", head 0 ", n);
    }
    require(n <= max_tokens_, "eviction_controller: the layer holds ", n, " tokens, more than max_tokens (",
            max_tokens_, ")");
    // Every head's window rows, oldest first, zero beyond what a row's query
    // saw (fill_tracked brings each head's ring to that order).
    index_t w = 0;
    for (index_t u = 0; u < units_; ++u) {
      layer_inputs in;
      in.kv_heads = unit_heads_;
      in.tokens = n;
      fill_tracked(layer, u, in);
      w = state(layer, u).ring_count;
    }
    require(w > 0, "eviction_controller: AdaKV shares a layer's budget out by the attention of its last queries; "
            "observe() the layer first");
    const index_t group = unit_query_heads_;
    for (index_t u = 0; u < units_; ++u) {
      layer_state& s = state(layer, u);
      for (index_t q = 0; q < group; ++q)
        for (index_t r = 0; r < w; ++r) {
          const float* src = ring_row(s, r) + q * max_tokens_;
          std::copy(src, src + n, sh.window.data() + ((u * group + q) * w + r) * n);
        }
    }
    kvcrush::window_scores(strided_view<const float, 3>(sh.window.data(), {query_heads_, w, n}), policy.window,
                           make_matrix_view(sh.scores.data(), heads_, n), ws);
    const index_t rest = b.budget - b.sink - b.recent;
    allocate_head_budgets(make_matrix_view<const float>(sh.scores.data(), heads_, n), b.sink, n - b.recent, rest,
                          policy.adakv_alpha, make_vector_view(sh.rest.data(), heads_), ws);
    for (index_t u = 0; u < units_; ++u) {
      const index_t share = b.sink + b.recent + sh.rest[static_cast<std::size_t>(u)];
      require(share + settings_.slack <= max_tokens_, "eviction_controller: head ", u, "'s share of ", share,
              " tokens + slack exceeds the controller's capacity of ", max_tokens_, " tokens");
    }
    const policy_config per_head = head_policy(policy);
    try {
      for (index_t u = 0; u < units_; ++u) {
        const layer_budget share{b.sink + b.recent + sh.rest[static_cast<std::size_t>(u)], b.sink, b.recent};
        layer_inputs in;
        in.kv_heads = unit_heads_;
        in.tokens = n;
        fill_tracked(layer, u, in);
        select_into(layer, u, per_head, in, share, ws);
      }
    } catch (...) {
      drop_pending(layer);
      throw;
    }
    apply_units(layer);
    for (index_t u = 0; u < units_; ++u) {
      state(layer, u).budget = {b.sink + b.recent + sh.rest[static_cast<std::size_t>(u)], b.sink, b.recent};
    }
    sh.budget = b;
    sh.done = true;
  }

  // Brings the tracked scores to the unit's n tokens and hands them to
  // the policy (without overriding inputs the caller gave).
  void fill_tracked(index_t layer, index_t unit, layer_inputs& in) {
    using kvcrush::detail::require;
    layer_state& s = state(layer, unit);
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
      if (s.ring_start != 0) order_ring(s);
      for (index_t r = 0; r < s.ring_count; ++r) {
        const index_t w = s.row_width[static_cast<std::size_t>(r)];
        require(w <= n, "eviction_controller: an attention row covers ", w, " tokens, the layer holds only ", n);
        for (index_t q = 0; q < unit_query_heads_; ++q) {
          float* row = ring_row(s, r) + q * max_tokens_;
          std::fill(row + w, row + n, 0.0f);
        }
        s.row_width[static_cast<std::size_t>(r)] = n;
      }
      if (in.window_attention.data() == nullptr && s.ring_count <= n) {
        in.window_attention = strided_view<const float, 3>(s.rows.data(), {unit_query_heads_, s.ring_count, n},
                                                           {max_tokens_, unit_query_heads_ * max_tokens_, 1});
      }
      if (in.last_attention.data() == nullptr) {
        in.last_attention =
            matrix_view<const float>(ring_row(s, s.ring_count - 1), {unit_query_heads_, n}, {max_tokens_, 1});
      }
    }
    if (tracks_queries_ && s.query_count > 0 && in.window_queries.data() == nullptr) {
      // Oldest query first, as the statistics add them in order.
      if (s.query_start != 0) {
        const auto size = static_cast<std::ptrdiff_t>(unit_query_heads_ * head_dim_);
        std::rotate(s.queries.begin(), s.queries.begin() + s.query_start * size,
                    s.queries.begin() + s.query_count * size);
        s.query_start = 0;
      }
      in.window_queries = strided_view<const float, 3>(s.queries.data(), {unit_query_heads_, s.query_count, head_dim_},
                                                       {head_dim_, unit_query_heads_ * head_dim_, 1});
      if (in.position < 0) in.position = s.next_position;
    }
    if (ragged_) {
      if constexpr (impl::has_head_key_view<Cache>::value) {
        if (in.keys.empty()) impl::set_key_cache(in.keys, cache_->keys(layer, unit));
      }
      if constexpr (impl::has_head_value_view<Cache>::value) {
        if (in.values.empty()) impl::set_key_cache(in.values, cache_->values(layer, unit));
      }
    } else {
      if constexpr (impl::has_key_view<Cache>::value) {
        if (in.keys.empty()) impl::set_key_cache(in.keys, cache_->keys(layer));
      }
      if constexpr (impl::has_value_view<Cache>::value) {
        if (in.values.empty()) impl::set_key_cache(in.values, cache_->values(layer));
      }
    }
  }

  void select_into(index_t layer, index_t unit, const policy_config& policy, const layer_inputs& in,
                   const layer_budget& budget, workspace& ws) {
    using kvcrush::detail::require;
    layer_state& s = state(layer, unit);
    const index_t rows = policy.layout.per_head ? unit_heads_ : 1;
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
  void check_room(index_t layer, index_t unit, index_t n, index_t new_tokens, index_t lim) {
    layer_state& s = state(layer, unit);
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

  // Moves the ring's oldest row to slot 0 (the ring is full whenever it
  // has wrapped). Slots move along the cycles of the rotation, one spare
  // slot per cycle, each copying only the columns its row holds: the
  // columns beyond a row's width are never read before they are zeroed.
  void order_ring(layer_state& s) {
    const index_t n = s.ring_count, shift = s.ring_start;
    auto copy_slot = [&](float* to, const float* from, index_t width) {
      for (index_t q = 0; q < unit_query_heads_; ++q) std::copy(from + q * max_tokens_, from + q * max_tokens_ + width, to + q * max_tokens_);
    };
    index_t a = n, b = shift;  // gcd(n, shift) cycles
    while (b != 0) {
      const index_t t = a % b;
      a = b;
      b = t;
    }
    for (index_t first = 0; first < a; ++first) {
      const index_t first_width = s.row_width[static_cast<std::size_t>(first)];
      copy_slot(s.spare_row.data(), ring_row(s, first), first_width);
      index_t to = first;
      for (;;) {
        const index_t from = (to + shift) % n;
        if (from == first) break;
        const index_t width = s.row_width[static_cast<std::size_t>(from)];
        copy_slot(ring_row(s, to), ring_row(s, from), width);
        s.row_width[static_cast<std::size_t>(to)] = width;
        to = from;
      }
      copy_slot(ring_row(s, to), s.spare_row.data(), first_width);
      s.row_width[static_cast<std::size_t>(to)] = first_width;
    }
    s.ring_start = 0;
  }

  void compact_tracked(layer_state& s, const keep_view& keep) {
    if (tracks_h2o_) {
      for (index_t h = 0; h < unit_heads_; ++h) {
        const index_t r = keep.row_of_head(h);
        s.h2o.compact(h, keep.rows.data() + r * keep.rows.stride(0), keep.count(r));
      }
    }
    if (window_ > 0 && s.ring_count > 0) compact_ring(s, keep);
  }

  // Compacts every ring row to the kept columns, one pass over the ring.
  // The columns move as runs of consecutive kept positions (a decode-time
  // eviction of one token leaves two runs), so a row costs a memmove or two.
  // A full ring is also turned: a fill_tracked() would have to put it in
  // order (a copy of the whole ring) after each new row, so the rows land
  // where, after as many observe() calls as came between the last two
  // compactions, the oldest row is in slot 0. When that guess is wrong,
  // fill_tracked() still orders the ring; only the copy is not saved.
  void compact_ring(layer_state& s, const keep_view& keep) {
    const index_t group = unit_query_heads_ / unit_heads_;
    const index_t slots = window_, rows = s.ring_count;
    s.observed_before = s.observed;
    s.observed = 0;
    index_t to_start = s.ring_start;
    if (rows == slots) to_start = (slots - s.observed_before % slots) % slots;
    const index_t shift = (to_start - s.ring_start + slots) % slots;  // a row moves from slot i to i + shift
    index_t cycles = slots, b = shift;  // gcd(slots, shift) cycles
    while (b != 0) {
      const index_t t = cycles % b;
      cycles = b;
      b = t;
    }
    index_t* run = s.runs.data();
    for (index_t r = 0; r < (keep.is_shared() ? 1 : unit_heads_); ++r) {
      const index_t count = keep.count(r);
      // Runs as (first kept position, length), in keep order.
      index_t run_count = 0;
      for (index_t i = 0; i < count;) {
        const index_t first = keep.at(r, i);
        index_t j = i + 1;
        while (j < count && keep.at(r, j) == first + (j - i)) ++j;
        run[2 * run_count] = first;
        run[2 * run_count + 1] = j - i;
        ++run_count;
        i = j;
      }
      // to and from may be the same row: every run moves down or stays.
      auto gather = [&](float* to, const float* from) {
        index_t at = 0;
        for (index_t k = 0; k < run_count; ++k) {
          const index_t length = run[2 * k + 1];
          if (to + at != from + run[2 * k]) {
            std::memmove(to + at, from + run[2 * k], static_cast<std::size_t>(length) * sizeof(float));
          }
          at += length;
        }
      };
      const index_t q_begin = keep.is_shared() ? 0 : r * group;
      const index_t q_end = keep.is_shared() ? unit_query_heads_ : (r + 1) * group;
      for (index_t q = q_begin; q < q_end; ++q) {
        auto column = [&](index_t slot) { return ring_row(s, slot) + q * max_tokens_; };
        if (shift == 0) {
          for (index_t i = 0; i < rows; ++i) {
            float* row = column((s.ring_start + i) % slots);
            gather(row, row);
          }
          continue;
        }
        float* spare = s.spare_row.data() + q * max_tokens_;
        for (index_t first = 0; first < cycles; ++first) {
          gather(spare, column(first));  // the first slot's row goes last
          index_t to = first;
          for (;;) {
            const index_t from = (to - shift + slots) % slots;
            if (from == first) break;
            gather(column(to), column(from));
            to = from;
          }
          std::copy(spare, spare + count, column(to));
        }
      }
    }
    for (index_t i = 0; i < rows; ++i) s.row_width[static_cast<std::size_t>(i)] = keep.count(0);
    s.ring_start = to_start;
  }

  Cache* cache_;
  eviction_settings settings_;
  index_t heads_ = 0, query_heads_ = 0, window_ = 0, max_tokens_ = 0;
  index_t query_window_ = 0, head_dim_ = 0;
  bool tracks_queries_ = false;
  index_t units_ = 1, unit_heads_ = 0, unit_query_heads_ = 0;
  bool tracks_h2o_ = false, ragged_ = false;
  policy_config unit_policy_;
  std::vector<layer_state> layers_;   // (layers, units)
  std::vector<head_shares> shares_;   // AdaKV: per layer
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
