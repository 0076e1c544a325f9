// Eviction policies as small value types, composed at compile time:
//
//   policy::snapkv{}                                  importance only
//   policy::with_kvcrush<policy::snapkv>{{}, crush}   + KVCrush representatives
//   policy::adakv<policy::snapkv>{}                   head-wise budgets
//   policy::with_kvcrush<policy::adakv<policy::h2o>>  both
//
// A base policy turns what the engine has (layer_inputs) into scores; the
// wrappers change how the keep set is drawn from them. kvcrush::select()
// (policy/select.hpp) runs the whole pipeline for one layer. An engine that
// picks its policy at compile time pays for nothing else; policy/runtime.hpp builds the same
// pipelines from a config for engines and tools that choose at run time.
#pragma once

#include <cstdint>

#include "kvcrush/error.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/scores/simple_sources.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// Where KVCrush signature bits come from (SPEC 4.1).
enum class signature_heads { kv, query };

inline signature_heads parse_signature_heads(std::string_view text) {
  static constexpr std::array<std::pair<std::string_view, signature_heads>, 2> names{{
      {"kv", signature_heads::kv},
      {"query", signature_heads::query},
  }};
  return detail::parse_enum(text, names, "signature heads");
}
inline std::string_view to_string(signature_heads h) { return h == signature_heads::kv ? "kv" : "query"; }

struct crush_options {
  double fraction = 0.5;  // share of the unprotected budget for representatives
  anchor_mode anchor = anchor_mode::mean;
  representative_rule representative = representative_rule::bucket_center;
  threshold_mode threshold = threshold_mode::median;
  std::uint64_t seed = 0;  // random anchor
  signature_heads heads = signature_heads::kv;
};

// Key cache of one layer in whichever storage the engine uses (set one).
struct key_cache {
  kv_view<const float> f32;
  kv_view<const float16> f16;
  kv_view<const bfloat16> bf16;
  bool empty() const noexcept { return !f32.view().data() && !f16.view().data() && !bf16.view().data(); }
};

// What an engine can hand a policy for one layer; each policy reads what it
// needs and names what is missing.
struct layer_inputs {
  index_t kv_heads = 0;  // H
  index_t tokens = 0;    // N
  matrix_view<const float> scores;                // precomputed S (H, N)
  strided_view<const float, 3> window_attention;  // (Hq, W, N) probabilities of the last W queries
  strided_view<const float, 3> window_queries;    // (Hq, W, d): recompute window attention from keys
  key_cache keys;                                 // (H, N, d)
  matrix_view<const float> last_attention;        // (Hq, N): the last query's probabilities (TOVA)
  const h2o_accumulator* h2o = nullptr;           // accumulated attention (H2O)
};

struct layer_budget {
  index_t budget = 0;  // tokens per KV head, protected ones included
  index_t sink = 0;
  index_t recent = 0;
};

struct selection_layout {
  bool per_head = false;
  index_t block_size = 1;
};

// Scores a base policy produced. The views point into the workspace the
// policy ran on (or into layer_inputs) and stay valid until the next policy
// runs on that workspace.
struct score_set {
  matrix_view<const float> importance;  // (H, N), or (1, N) for shared-only sources
  matrix_view<const float> kv_rows;     // (H, N): KV-head signature rows
  matrix_view<const float> query_rows;  // (Hq, N) or empty: query-head signature rows
  bool ranks = true;                    // false: nothing is ranked (StreamingLLM)
};

inline namespace KVCRUSH_TARGET_NS {
namespace policy {

namespace impl {

inline void require_tokens(const layer_inputs& in, index_t tokens, const char* what) {
  kvcrush::detail::require(in.tokens == tokens, what, " covers ", tokens, " tokens, layer_inputs.tokens is ",
                           in.tokens);
}

inline matrix_view<float> scratch_rows(workspace& ws, index_t rows, index_t tokens, bool query) {
  const auto n = static_cast<std::size_t>(rows * tokens) + 1;
  return make_matrix_view(query ? ws.query_scores(n) : ws.scores(n), rows, tokens);
}

}  // namespace impl

// StreamingLLM: sink + recent only (no scores are read).
struct streaming_llm {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.kv_heads >= 1, "streaming: layer_inputs.kv_heads must be >= 1");
    auto zero = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    for (index_t h = 0; h < in.kv_heads; ++h)
      for (index_t t = 0; t < in.tokens; ++t) zero(h, t) = 0.0f;
    return {zero, zero, {}, false};
  }
};

// Scores the caller computed itself: S = layer_inputs.scores.
struct precomputed {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace&) const {
    kvcrush::detail::require(in.scores.data() != nullptr && in.scores.extent(0) >= 1,
                             "precomputed: layer_inputs.scores is empty");
    impl::require_tokens(in, in.scores.extent(1), "precomputed scores");
    return {in.scores, in.scores, {}, true};
  }
};

// H2O: accumulated attention (plain sums, or divided by how many queries saw
// each token).
struct h2o {
  bool normalised = false;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.h2o != nullptr, "h2o: layer_inputs.h2o (the accumulator) is missing");
    const h2o_accumulator& acc = *in.h2o;
    for (index_t h = 0; h < acc.heads(); ++h) {
      kvcrush::detail::require(acc.length(h) == in.tokens, "h2o: head ", h, " holds ", acc.length(h),
                               " tokens, the layer ", in.tokens, " (heads must hold the same number)");
    }
    // Query-head rows for signatures when the accumulator keeps them.
    matrix_view<const float> query;
    if (acc.tracks_query_heads() && !normalised) {
      const auto all = acc.query_scores();
      query = matrix_view<const float>(all.data(), {acc.query_heads(), in.tokens}, {all.stride(0), 1});
    } else if (acc.tracks_query_heads()) {
      auto rows = impl::scratch_rows(ws, acc.query_heads(), in.tokens, true);
      acc.normalised_query_scores(rows);
      query = rows;
    }
    if (!normalised) {
      const auto all = acc.scores();
      const matrix_view<const float> s(all.data(), {acc.heads(), in.tokens}, {all.stride(0), 1});
      return {s, s, query, true};
    }
    auto out = impl::scratch_rows(ws, acc.heads(), in.tokens, false);
    acc.normalised_scores(out);
    return {out, out, query, true};
  }
};

// SnapKV: window attention, given as probabilities or recomputed from the
// last W queries and the keys.
struct snapkv {
  window_options window;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.kv_heads >= 1, "snapkv: layer_inputs.kv_heads must be >= 1");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    if (in.window_attention.data() != nullptr) {
      impl::require_tokens(in, in.window_attention.extent(2), "snapkv window attention");
      auto query = impl::scratch_rows(ws, in.window_attention.extent(0), in.tokens, true);
      window_scores<Isa>(in.window_attention, window, kv, ws, query);
      return {kv, kv, query, true};
    }
    require(in.window_queries.data() != nullptr && !in.keys.empty(),
            "snapkv: needs layer_inputs.window_attention, or window_queries and keys");
    auto query = impl::scratch_rows(ws, in.window_queries.extent(0), in.tokens, true);
    if (in.keys.f32.view().data()) {
      impl::require_tokens(in, in.keys.f32.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.f32, window, kv, ws, query);
    } else if (in.keys.f16.view().data()) {
      impl::require_tokens(in, in.keys.f16.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.f16, window, kv, ws, query);
    } else {
      impl::require_tokens(in, in.keys.bf16.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.bf16, window, kv, ws, query);
    }
    return {kv, kv, query, true};
  }
};

// PyramidKV: SnapKV's scores with layer budgets that shrink with depth (see
// pyramid_budgets()); the layer's budget arrives in layer_budget.
struct pyramidkv : snapkv {
  index_t beta = 20;
};

// TOVA: the last query's attention, averaged over all heads.
struct tova {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.last_attention.data() != nullptr, "tova: layer_inputs.last_attention is missing");
    require(in.kv_heads >= 1, "tova: layer_inputs.kv_heads must be >= 1");
    impl::require_tokens(in, in.last_attention.extent(1), "tova attention");
    auto rows = impl::scratch_rows(ws, in.kv_heads + 1, in.tokens, false);
    const matrix_view<float> kv(rows.data(), {in.kv_heads, in.tokens}, {in.tokens, 1});
    const matrix_view<float> shared(rows.data() + in.kv_heads * in.tokens, {1, in.tokens}, {in.tokens, 1});
    tova_scores<Isa>(in.last_attention, shared, kv);
    return {shared, kv, in.last_attention, true};
  }
};

// Key norm: smaller keys matter more.
struct key_norm {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(!in.keys.empty(), "key norm: layer_inputs.keys is missing");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    if (in.keys.f32.view().data()) {
      key_norm_scores<Isa>(in.keys.f32, kv);
    } else if (in.keys.f16.view().data()) {
      key_norm_scores<Isa>(in.keys.f16, kv);
    } else {
      key_norm_scores<Isa>(in.keys.bf16, kv);
    }
    return {kv, kv, {}, true};
  }
};

// Seeded random scores: the baseline.
struct random {
  std::uint64_t seed = 0;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.kv_heads >= 1, "random: layer_inputs.kv_heads must be >= 1");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    random_scores<Isa>(seed, kv);
    return {kv, kv, {}, true};
  }
};

// Head-wise budgets over any base policy's per-KV-head scores.
template <class Base>
struct adakv {
  Base base{};
  double alpha = 0.2;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    return base.template scores<Isa>(in, ws);
  }
};

// KVCrush representatives on top of any policy.
template <class Base>
struct with_kvcrush {
  Base base{};
  crush_options crush{};
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    return base.template scores<Isa>(in, ws);
  }
};

// Traits that unwrap the composition.
template <class P>
struct traits {
  static crush_options crush(const P&) { return crush_options{0.0}; }
  static bool head_wise(const P&) { return false; }
  static double alpha(const P&) { return 0.0; }
};
template <class Base>
struct traits<adakv<Base>> {
  static crush_options crush(const adakv<Base>& p) { return traits<Base>::crush(p.base); }
  static bool head_wise(const adakv<Base>&) { return true; }
  static double alpha(const adakv<Base>& p) { return p.alpha; }
};
template <class Base>
struct traits<with_kvcrush<Base>> {
  static crush_options crush(const with_kvcrush<Base>& p) { return p.crush; }
  static bool head_wise(const with_kvcrush<Base>& p) { return traits<Base>::head_wise(p.base); }
  static double alpha(const with_kvcrush<Base>& p) { return traits<Base>::alpha(p.base); }
};

}  // namespace policy

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
