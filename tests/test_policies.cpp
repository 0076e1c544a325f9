// Policies and their composition: layer budgets, AdaKV allocation, the
// compile-time pipelines, the runtime facade, and their error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "kvcrush/policy/runtime.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
using kvcrush::index_t;

namespace {

// KVCache-Factory's budget arithmetic, transcribed plainly.
index_t factory_layer_budget(index_t B, index_t w, index_t L, index_t n, index_t l) {
  if (n < B || n < 2 * (B - w)) return B;
  index_t min_num = (B - w) / 20;
  index_t max_num = (B - w) * 2 - min_num;
  if (max_num >= n - w) {
    max_num = n - w;
    min_num = (B - w) * 2 - max_num;
  }
  const index_t steps = (max_num - min_num) / (L - 1);
  return max_num - l * steps + w;
}

struct fixture {
  index_t hq = 8, h = 4, w = 8, n = 300, d = 16;
  std::vector<float> attention, queries, keys, last, scores;
  fixture() {
    attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), 1, 0.0f, 1.0f);
    queries = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * d), 2);
    keys = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 3);
    last = kvcrush_test::random_floats(static_cast<std::size_t>(hq * n), 4, 0.0f, 1.0f);
    scores = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 5, 0.0f, 1.0f);
  }
  kvcrush::layer_inputs inputs() const {
    kvcrush::layer_inputs in;
    in.kv_heads = h;
    in.tokens = n;
    in.scores = kvcrush::make_matrix_view(scores.data(), h, n);
    in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n});
    in.window_queries = kvcrush::strided_view<const float, 3>(queries.data(), {hq, w, d});
    in.keys.f32 = kvcrush::make_head_token_dim(keys.data(), h, n, d);
    in.last_attention = kvcrush::make_matrix_view(last.data(), hq, n);
    return in;
  }
};

struct result {
  std::vector<index_t> positions, counts;
  index_t width = 0;
  std::vector<long> row(index_t r) const {
    return {positions.begin() + r * width, positions.begin() + r * width + counts[r]};
  }
};

template <class Policy>
result run(const Policy& p, const kvcrush::layer_inputs& in, kvcrush::layer_budget b, kvcrush::selection_layout layout,
           kvcrush::workspace& ws) {
  result r;
  const index_t rows = layout.per_head ? in.kv_heads : 1;
  r.width = in.tokens + 1;
  r.positions.assign(static_cast<std::size_t>(rows * r.width), -1);
  r.counts.assign(static_cast<std::size_t>(rows), -1);
  kvcrush::select(p, in, b, layout,
                  {kvcrush::make_matrix_view(r.positions.data(), rows, r.width), kvcrush::make_vector_view(r.counts.data(), rows)}, ws);
  return r;
}

}  // namespace

TEST(LayerBudgets, PyramidMatchesKVCacheFactory) {
  for (index_t L : {2, 5, 32}) {
    for (index_t B : {64, 128, 512}) {
      for (index_t w : {8, 32}) {
        for (index_t n : {40, 100, 250, 1000, 4096}) {
          const auto budgets = kvcrush::pyramid_budgets(B, w, L, n);
          ASSERT_EQ(static_cast<index_t>(budgets.size()), L);
          for (index_t l = 0; l < L; ++l) ASSERT_EQ(budgets[l], factory_layer_budget(B, w, L, n, l));
          if (n >= 2 * (B - w) && n >= B) {
            ASSERT_GE(budgets.front(), budgets.back()) << "budgets shrink with depth";
            const double mean = std::accumulate(budgets.begin(), budgets.end(), 0.0) / L;
            ASSERT_NEAR(mean, B, (B - w) / 20.0 + L) << "the average stays near B";
          }
        }
      }
    }
  }
  EXPECT_EQ(kvcrush::pyramid_budgets(100, 10, 1, 1000), std::vector<index_t>{100});
  EXPECT_THROW((void)kvcrush::pyramid_budgets(10, 10, 4, 100), std::invalid_argument);
  EXPECT_THROW((void)kvcrush::pyramid_budgets(100, 10, 0, 100), std::invalid_argument);
}

TEST(AdaKV, AllocationMatchesBruteForce) {
  kvcrush::workspace ws;
  for (int trial = 0; trial < 30; ++trial) {
    const index_t h = 1 + trial % 5, n = 50 + trial * 7, begin = trial % 4, end = n - trial % 6;
    const index_t rest = (end - begin) / (2 + trial % 3);
    const double alpha = (trial % 4) * 0.2;
    // Per-head spread differs: head k's scores are scaled by k+1, with ties.
    auto s = kvcrush_test::tricky_floats(static_cast<std::size_t>(h * n), static_cast<std::uint32_t>(trial), 9, 0.0);
    for (index_t k = 0; k < h; ++k)
      for (index_t t = 0; t < n; ++t) s[k * n + t] *= static_cast<float>(k + 1);
    std::vector<index_t> got(static_cast<std::size_t>(h));
    kvcrush::allocate_head_budgets(kvcrush::make_matrix_view<const float>(s.data(), h, n), begin, end, rest, alpha,
                                   kvcrush::make_vector_view(got.data(), h), ws);
    // Brute force: floor per head, then global sort of the remaining pairs.
    const auto floor_budget = static_cast<index_t>(std::floor(alpha * rest));
    std::vector<index_t> expected(static_cast<std::size_t>(h), floor_budget);
    std::vector<std::pair<float, index_t>> remaining;  // (score, flattened index)
    for (index_t k = 0; k < h; ++k) {
      const auto top = spec::top_k(spec::range(begin, end), [&](long t) { return s[k * n + t]; }, floor_budget);
      for (index_t t = begin; t < end; ++t)
        if (!std::binary_search(top.begin(), top.end(), t)) remaining.push_back({s[k * n + t], k * n + t});
    }
    std::stable_sort(remaining.begin(), remaining.end(), [](auto a, auto b) { return a.first > b.first; });
    for (index_t i = 0; i < h * (rest - floor_budget); ++i) expected[remaining[i].second / n] += 1;
    ASSERT_EQ(got, expected) << "trial " << trial;
    ASSERT_EQ(std::accumulate(got.begin(), got.end(), index_t{0}), h * rest);
    // spec::head_budgets (the reference of the AdaKV keep-set tests) agrees
    // with this brute force.
    spec::Rows rows(static_cast<std::size_t>(h), std::vector<float>(static_cast<std::size_t>(n)));
    for (index_t k = 0; k < h; ++k) std::copy(s.begin() + k * n, s.begin() + (k + 1) * n, rows[k].begin());
    const auto reference = spec::head_budgets(rows, begin, end, rest, alpha);
    ASSERT_EQ(std::vector<index_t>(reference.begin(), reference.end()), expected) << "trial " << trial;
  }
}

TEST(Policies, SnapKVIsWindowScoresThenSelection) {
  fixture f;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  kvcrush::policy::snapkv snap;
  const kvcrush::layer_budget b{60, 4, f.w};
  const auto got = run(snap, in, b, {}, ws);
  // The same by hand: window scores, then the keep set of SPEC 1-3.
  std::vector<float> s(static_cast<std::size_t>(f.h * f.n));
  kvcrush::window_scores(in.window_attention, snap.window, kvcrush::make_matrix_view(s.data(), f.h, f.n), ws);
  kvcrush::keep_config cfg;
  cfg.budget = 60;
  cfg.sink = 4;
  cfg.recent = f.w;
  std::vector<index_t> expected(60);
  kvcrush::select_keep(kvcrush::make_matrix_view<const float>(s.data(), f.h, f.n), cfg, kvcrush::make_vector_view(expected.data(), 60), ws);
  EXPECT_EQ(got.counts[0], 60);
  EXPECT_EQ(got.row(0), std::vector<long>(expected.begin(), expected.end()));
  // From queries + keys instead of probabilities: a valid keep set of size B.
  auto from_queries = in;
  from_queries.window_attention = {};
  const auto q = run(snap, from_queries, b, {}, ws);
  EXPECT_EQ(q.counts[0], 60);
}

TEST(Policies, KVCrushCompositionProperties) {
  fixture f;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  const kvcrush::layer_budget b{80, 4, 8};
  for (auto heads : {kvcrush::signature_heads::kv, kvcrush::signature_heads::query}) {
    for (bool per_head : {false, true}) {
      kvcrush::crush_options crush;
      crush.fraction = 0.5;
      crush.heads = heads;
      const kvcrush::policy::with_kvcrush<kvcrush::policy::snapkv> p{{}, crush};
      const auto got = run(p, in, b, {per_head, 1}, ws);
      const auto base = run(kvcrush::policy::snapkv{}, in, {80 - 34, 4, 8}, {per_head, 1}, ws);
      for (index_t r = 0; r < (per_head ? f.h : 1); ++r) {
        const auto row = got.row(r);
        ASSERT_EQ(static_cast<index_t>(row.size()), 80) << "exactly B kept";
        for (long t : {0L, 1L, 2L, 3L, long(f.n - 1), long(f.n - 8)}) ASSERT_TRUE(std::binary_search(row.begin(), row.end(), t));
        // Importance picks are the crush-free selection with B_imp = 34.
        const auto picks = base.row(r);
        ASSERT_TRUE(std::includes(row.begin(), row.end(), picks.begin(), picks.end()));
      }
      // That the two signature sources differ, and how: QueryAndKVHeadSignaturesSelectDifferentRepresentatives.
    }
  }
  kvcrush::crush_options crush;
  crush.heads = kvcrush::signature_heads::query;
  EXPECT_THROW(run(kvcrush::policy::with_kvcrush<kvcrush::policy::precomputed>{{}, crush}, in, b, {}, ws),
               std::invalid_argument);
}

TEST(Policies, QuerySignatureRowsAreThePooledQueryHeads) {
  fixture f;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  kvcrush::crush_options crush;
  crush.fraction = 1.0;
  crush.heads = kvcrush::signature_heads::query;
  const kvcrush::policy::with_kvcrush<kvcrush::policy::snapkv> p{{}, crush};
  const auto got = run(p, in, {70, 0, 8}, {}, ws);
  // The rows from SPEC 5.1 written plainly, not from the library's
  // window_scores (which would share any mistake in the query-head rows).
  const auto w = spec::window_scores(f.attention, f.hq, f.w, f.n, f.h);
  kvcrush::keep_config cfg;
  cfg.budget = 70;
  cfg.recent = 8;
  cfg.crush_fraction = 1.0;
  const auto expected = spec::keep(w.kv, w.query, cfg);
  EXPECT_EQ(got.row(0), expected[0]);
}

TEST(Policies, AdaKVGivesRaggedHeadWiseKeepSets) {
  fixture f;
  kvcrush::workspace ws;
  // Head 0 spreads its attention over many tokens (all moderately high),
  // heads 1 and 2 hold low scores, head 3 is concentrated on a few tokens.
  for (index_t t = 0; t < f.n; ++t) {
    f.scores[0 * f.n + t] = 0.5f + 0.001f * static_cast<float>(t % 17);
    f.scores[1 * f.n + t] *= 0.3f;
    f.scores[2 * f.n + t] *= 0.3f;
    f.scores[3 * f.n + t] = t % 50 == 0 ? 10.0f : 0.0f;
  }
  const auto in = f.inputs();
  const kvcrush::layer_budget b{64, 4, 8};
  const kvcrush::policy::adakv<kvcrush::policy::precomputed> p{{}, 0.2};
  const auto got = run(p, in, b, {true, 1}, ws);
  index_t total = 0;
  for (index_t k = 0; k < f.h; ++k) {
    const auto row = got.row(k);
    total += static_cast<index_t>(row.size());
    ASSERT_TRUE(std::is_sorted(row.begin(), row.end()));
    // Row k = protected + the head's own top (|row| - 12) evictable tokens.
    const auto top = spec::top_k(spec::range(4, f.n - 8), [&](long t) { return f.scores[k * f.n + t]; },
                                 static_cast<long>(row.size()) - 12);
    std::vector<long> expected = spec::range(0, 4);
    for (long t : top) expected.push_back(t);
    for (long t = f.n - 8; t < f.n; ++t) expected.push_back(t);
    ASSERT_EQ(row, expected) << "head " << k;
  }
  EXPECT_EQ(total, f.h * 64) << "the layer budget is shared out, not exceeded";
  EXPECT_GT(got.counts[0], got.counts[3]) << "the spread-out head gets more";
  EXPECT_THROW(run(p, in, b, {false, 1}, ws), std::invalid_argument) << "head-wise budgets need per-head mode";
  EXPECT_THROW(run(p, in, b, {true, 4}, ws), std::invalid_argument) << "AdaKV is token-granular";
  // With KVCrush: each head's allocation is split by crush_fraction.
  kvcrush::crush_options crush;
  crush.fraction = 0.5;
  const kvcrush::policy::with_kvcrush<kvcrush::policy::adakv<kvcrush::policy::precomputed>> pc{{{}, 0.2}, crush};
  const auto crushed = run(pc, in, b, {true, 1}, ws);
  EXPECT_EQ(crushed.counts, got.counts) << "the same head budgets";
}

TEST(Policies, TovaKeyNormRandomStreamingH2O) {
  fixture f;
  kvcrush::workspace ws;
  auto in = f.inputs();
  const kvcrush::layer_budget b{40, 2, 6};
  // TOVA ranks by the head-averaged last attention.
  const auto tova = run(kvcrush::policy::tova{}, in, b, {}, ws);
  std::vector<float> mean(static_cast<std::size_t>(f.n));
  for (index_t t = 0; t < f.n; ++t) {
    float s = f.last[t];
    for (index_t q = 1; q < f.hq; ++q) s += f.last[q * f.n + t];
    mean[t] = s / static_cast<float>(f.hq);
  }
  auto expected = spec::top_k(spec::range(2, f.n - 6), [&](long t) { return mean[t]; }, 32);
  expected.insert(expected.begin(), {0, 1});
  for (long t = f.n - 6; t < f.n; ++t) expected.push_back(t);
  EXPECT_EQ(tova.row(0), expected);
  // Key norm keeps the smallest keys.
  const auto knorm = run(kvcrush::policy::key_norm{}, in, b, {true, 1}, ws);
  for (index_t k = 0; k < f.h; ++k) {
    auto norm = [&](long t) {
      float sq = 0;
      for (index_t j = 0; j < f.d; ++j) sq = std::fma(f.keys[(k * f.n + t) * f.d + j], f.keys[(k * f.n + t) * f.d + j], sq);
      return -std::sqrt(sq);
    };
    auto e = spec::top_k(spec::range(2, f.n - 6), norm, 32);
    e.insert(e.begin(), {0, 1});
    for (long t = f.n - 6; t < f.n; ++t) e.push_back(t);
    ASSERT_EQ(knorm.row(k), e);
  }
  // Random: deterministic per seed, different across seeds.
  EXPECT_EQ(run(kvcrush::policy::random{3}, in, b, {}, ws).row(0), run(kvcrush::policy::random{3}, in, b, {}, ws).row(0));
  EXPECT_NE(run(kvcrush::policy::random{3}, in, b, {}, ws).row(0), run(kvcrush::policy::random{4}, in, b, {}, ws).row(0));
  // Streaming: exactly sink + recent, or KVCrush fills the middle.
  const auto stream = run(kvcrush::policy::streaming_llm{}, in, {8, 2, 6}, {}, ws);
  EXPECT_EQ(stream.row(0), (std::vector<long>{0, 1, long(f.n - 6), long(f.n - 5), long(f.n - 4), long(f.n - 3), long(f.n - 2), long(f.n - 1)}));
  EXPECT_THROW(run(kvcrush::policy::streaming_llm{}, in, b, {}, ws), std::invalid_argument);
  kvcrush::crush_options all;
  all.fraction = 1.0;
  const auto filled = run(kvcrush::policy::with_kvcrush<kvcrush::policy::streaming_llm>{{}, all}, in,
                          {40, 2, 6}, {}, ws);
  EXPECT_EQ(filled.counts[0], 40);
  // H2O: scores from the accumulator; heads must hold the layer's tokens.
  kvcrush::h2o_accumulator acc(f.h, f.hq, f.n);
  acc.append(f.n);
  acc.accumulate(kvcrush::make_matrix_view(f.last.data(), f.hq, f.n));
  in.h2o = &acc;
  const auto h2o = run(kvcrush::policy::h2o{}, in, b, {}, ws);
  auto tokens_sum = [&](long t) {
    float s = acc.scores()(0, t);
    for (index_t k = 1; k < f.h; ++k) s += acc.scores()(k, t);
    return s;
  };
  auto e = spec::top_k(spec::range(2, f.n - 6), tokens_sum, 32);
  e.insert(e.begin(), {0, 1});
  for (long t = f.n - 6; t < f.n; ++t) e.push_back(t);
  EXPECT_EQ(h2o.row(0), e);
  EXPECT_EQ(run(kvcrush::policy::h2o{true}, in, b, {}, ws).counts[0], 40);
  in.h2o = nullptr;
  try {
    run(kvcrush::policy::h2o{}, in, b, {}, ws);
    FAIL() << "missing accumulator accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("h2o"), std::string::npos);
  }
}

TEST(RuntimeFacade, ParsesNamesAndMatchesCompileTimePipelines) {
  EXPECT_EQ(kvcrush::policy_config::parse("snapkv+kvcrush").name(), "snapkv+kvcrush");
  const auto ada = kvcrush::policy_config::parse("adakv");
  EXPECT_EQ(ada.base, kvcrush::base_policy::snapkv);
  EXPECT_TRUE(ada.adakv);
  EXPECT_TRUE(ada.layout.per_head);
  EXPECT_EQ(kvcrush::policy_config::parse("h2o+adakv+kvcrush").name(), "h2o+adakv+kvcrush");
  EXPECT_THROW((void)kvcrush::policy_config::parse("snapkv+magic"), std::invalid_argument);
  EXPECT_THROW((void)kvcrush::policy_config::parse("quantum"), std::invalid_argument);
  EXPECT_THROW((void)kvcrush::policy_config::parse("full+kvcrush"), std::invalid_argument);

  fixture f;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  const kvcrush::layer_budget b{50, 2, 8};
  for (const char* name : {"full", "random", "snapkv", "snapkv+kvcrush", "pyramidkv", "tova+kvcrush", "knorm",
                           "precomputed+kvcrush", "adakv", "snapkv+adakv+kvcrush"}) {
    auto cfg = kvcrush::policy_config::parse(name);
    const index_t rows = cfg.layout.per_head ? f.h : 1;
    std::vector<index_t> pos(static_cast<std::size_t>(rows * (f.n + 1)), -1), counts(static_cast<std::size_t>(rows));
    kvcrush::select(cfg, in, b, {kvcrush::make_matrix_view(pos.data(), rows, f.n + 1), kvcrush::make_vector_view(counts.data(), rows)}, ws);
    for (index_t r = 0; r < rows; ++r) {
      ASSERT_EQ(counts[r] > 0, true) << name;
      ASSERT_TRUE(std::is_sorted(pos.begin() + r * (f.n + 1), pos.begin() + r * (f.n + 1) + counts[r])) << name;
    }
    if (std::string(name) == "full") {
      ASSERT_EQ(counts[0], f.n);
    } else if (!cfg.adakv) {
      ASSERT_EQ(counts[0], 50) << name;
    }
    if (std::string(name) == "snapkv+kvcrush") {
      const auto compile_time = run(kvcrush::policy::with_kvcrush<kvcrush::policy::snapkv>{{}, cfg.crush}, in, b, {}, ws);
      ASSERT_EQ(std::vector<long>(pos.begin(), pos.begin() + counts[0]), compile_time.row(0));
    }
  }
  // 'full' checks the layout itself (found by fuzzing: block_size 0 was a
  // division by zero), and refuses before writing anything.
  for (const index_t block_size : {index_t{0}, index_t{-3}}) {
    auto cfg = kvcrush::policy_config::parse("full");
    cfg.layout.block_size = block_size;
    std::vector<index_t> pos(static_cast<std::size_t>(f.n + 1), -1), counts(1, -1);
    EXPECT_THROW(kvcrush::select(cfg, in, b, {kvcrush::make_matrix_view(pos.data(), 1, f.n + 1),
                                              kvcrush::make_vector_view(counts.data(), 1)}, ws),
                 std::invalid_argument);
    EXPECT_EQ(counts[0], -1);
    EXPECT_EQ(pos[0], -1);
  }
  // Layer budgets follow the policy.
  EXPECT_EQ(kvcrush::layer_budgets(kvcrush::policy_config::parse("pyramidkv"), 128, 8, 4, 1000),
            kvcrush::pyramid_budgets(128, 8, 4, 1000));
  EXPECT_EQ(kvcrush::layer_budgets(kvcrush::policy_config::parse("snapkv"), 128, 8, 4, 1000),
            std::vector<index_t>(4, 128));
}

// ---------------------------------------------------------------------------
// The runtime facade and AdaKV against SPEC written plainly
// (spec_reference.hpp), not against the compile-time pipelines: the
// controller tests use the facade as their reference, so the facade needs
// one of its own.

namespace {

spec::Rows rows_of(const float* data, index_t rows, index_t n) {
  spec::Rows out(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(n)));
  for (index_t r = 0; r < rows; ++r) std::copy(data + r * n, data + (r + 1) * n, out[r].begin());
  return out;
}

// SPEC 5.1 step 4 (mean) of (Hq, N) rows into (H, N).
spec::Rows gqa_mean(const spec::Rows& q, index_t h) {
  const auto g = static_cast<index_t>(q.size()) / h;
  spec::Rows out(static_cast<std::size_t>(h), std::vector<float>(q[0].size()));
  for (index_t k = 0; k < h; ++k)
    for (std::size_t t = 0; t < q[0].size(); ++t) {
      float s = q[k * g][t];
      for (index_t i = 1; i < g; ++i) s += q[k * g + i][t];
      out[k][t] = g == 1 ? s : s / static_cast<float>(g);
    }
  return out;
}

// What a base policy scores (SPEC section 5), computed from the fixture's
// raw inputs: importance rows, KV-head and query-head signature rows, and
// whether importance ranks anything.
struct reference_scores {
  spec::Rows importance, kv, query;
  bool ranks = true;
};

reference_scores reference_for(kvcrush::base_policy base, const fixture& f, std::uint64_t seed) {
  reference_scores r;
  switch (base) {
    case kvcrush::base_policy::snapkv:
    case kvcrush::base_policy::pyramidkv: {  // the layer budget arrives from outside: same selection
      const auto w = spec::window_scores(f.attention, f.hq, f.w, f.n, f.h);
      r.importance = r.kv = w.kv;
      r.query = w.query;
      break;
    }
    case kvcrush::base_policy::tova: {  // SPEC 5.4
      const auto last = rows_of(f.last.data(), f.hq, f.n);
      spec::Rows shared(1, std::vector<float>(static_cast<std::size_t>(f.n)));
      for (index_t t = 0; t < f.n; ++t) {
        float s = last[0][t];
        for (index_t q = 1; q < f.hq; ++q) s += last[q][t];
        shared[0][t] = s / static_cast<float>(f.hq);
      }
      r.importance = shared;
      r.kv = gqa_mean(last, f.h);
      r.query = last;
      break;
    }
    case kvcrush::base_policy::h2o:  // SPEC 5.3: one prefill step of `last` from zero
      r.importance = r.kv = gqa_mean(rows_of(f.last.data(), f.hq, f.n), f.h);
      break;
    case kvcrush::base_policy::knorm: {  // SPEC 5.5
      r.importance.assign(static_cast<std::size_t>(f.h), std::vector<float>(static_cast<std::size_t>(f.n)));
      for (index_t k = 0; k < f.h; ++k)
        for (index_t t = 0; t < f.n; ++t) {
          float sq = 0.0f;
          for (index_t j = 0; j < f.d; ++j) sq = std::fma(f.keys[(k * f.n + t) * f.d + j], f.keys[(k * f.n + t) * f.d + j], sq);
          r.importance[k][t] = -std::sqrt(sq);
        }
      r.kv = r.importance;
      break;
    }
    case kvcrush::base_policy::random:  // SPEC 5.6
      r.importance.assign(static_cast<std::size_t>(f.h), std::vector<float>(static_cast<std::size_t>(f.n)));
      for (index_t k = 0; k < f.h; ++k) {
        const std::uint64_t z = kvcrush::splitmix64_at(seed, static_cast<std::uint64_t>(k));
        for (index_t t = 0; t < f.n; ++t)
          r.importance[k][t] = static_cast<float>(kvcrush::splitmix64_at(z, static_cast<std::uint64_t>(t)) >> 40) * 0x1p-24f;
      }
      r.kv = r.importance;
      break;
    case kvcrush::base_policy::precomputed:
      r.importance = r.kv = rows_of(f.scores.data(), f.h, f.n);
      break;
    case kvcrush::base_policy::streaming:  // SPEC 5.7: zeros, nothing ranked
      r.importance.assign(static_cast<std::size_t>(f.h), std::vector<float>(static_cast<std::size_t>(f.n), 0.0f));
      r.kv = r.importance;
      r.ranks = false;
      break;
    case kvcrush::base_policy::full:
      break;
    case kvcrush::base_policy::keydiff:
    case kvcrush::base_policy::expected_attention:
    case kvcrush::base_policy::rkv:  // SPEC 11: checked against their score functions in test_policies_nomatrix.cpp
      ADD_FAILURE() << "no SPEC 5 reference for " << kvcrush::to_string(base);
      break;
  }
  return r;
}

// The keep sets a runtime config must produce (SPEC sections 1-4 and 6.3).
std::vector<std::vector<long>> reference_keep(const kvcrush::policy_config& cfg, const fixture& f,
                                              const kvcrush::layer_budget& b) {
  const index_t rows = cfg.layout.per_head ? f.h : 1;
  if (cfg.base == kvcrush::base_policy::full) return std::vector<std::vector<long>>(static_cast<std::size_t>(rows), spec::range(0, f.n));
  const auto s = reference_for(cfg.base, f, cfg.seed);
  kvcrush::keep_config kc;
  kc.budget = b.budget;
  kc.sink = b.sink;
  kc.recent = b.recent;
  kc.per_head = cfg.layout.per_head;
  kc.rank_importance = s.ranks;
  if (cfg.kvcrush) {
    kc.crush_fraction = cfg.crush.fraction;
    kc.anchor = cfg.crush.anchor;
    kc.representative = cfg.crush.representative;
    kc.threshold = cfg.crush.threshold;
    kc.seed = cfg.crush.seed;
  }
  // Per-head mode ranks per KV head even when the source has one shared row.
  const spec::Rows& S = cfg.layout.per_head ? s.kv : s.importance;
  const spec::Rows& sig = cfg.crush.heads == kvcrush::signature_heads::query ? s.query : s.kv;
  std::vector<long> rest;
  if (cfg.adakv && f.n > b.budget)
    rest = spec::head_budgets(S, b.sink, f.n - b.recent, b.budget - b.sink - b.recent, cfg.adakv_alpha);
  return spec::keep(S, sig, kc, rest);
}

std::vector<std::vector<long>> facade_keep(const kvcrush::policy_config& cfg, const kvcrush::layer_inputs& in,
                                           const kvcrush::layer_budget& b, kvcrush::workspace& ws) {
  const index_t rows = cfg.layout.per_head ? in.kv_heads : 1, width = in.tokens + 1;
  std::vector<index_t> pos(static_cast<std::size_t>(rows * width), -1), counts(static_cast<std::size_t>(rows), -1);
  kvcrush::select(cfg, in, b, {kvcrush::make_matrix_view(pos.data(), rows, width), kvcrush::make_vector_view(counts.data(), rows)}, ws);
  std::vector<std::vector<long>> out;
  for (index_t r = 0; r < rows; ++r) out.emplace_back(pos.begin() + r * width, pos.begin() + r * width + counts[r]);
  return out;
}

}  // namespace

TEST(RuntimeFacade, EveryNameMatchesTheSpecReference) {
  fixture f;
  kvcrush::workspace ws;
  kvcrush::h2o_accumulator acc(f.h, f.hq, f.n);
  acc.append(f.n);
  acc.accumulate(kvcrush::make_matrix_view(f.last.data(), f.hq, f.n));
  auto in = f.inputs();
  in.h2o = &acc;
  const kvcrush::layer_budget b{50, 2, 8};
  const char* names[] = {"full", "random", "h2o", "h2o+kvcrush", "h2o+adakv", "h2o+adakv+kvcrush", "snapkv",
                         "snapkv+kvcrush", "adakv", "snapkv+adakv+kvcrush", "adakv+kvcrush", "pyramidkv",
                         "pyramidkv+kvcrush", "tova", "tova+kvcrush", "tova+adakv", "knorm", "knorm+kvcrush",
                         "precomputed", "precomputed+kvcrush", "precomputed+adakv+kvcrush", "random+kvcrush"};
  for (const char* name : names) {
    for (bool query_heads : {false, true}) {
      auto cfg = kvcrush::policy_config::parse(name);
      cfg.seed = 7;
      if (query_heads) {
        // Query-head signatures exist only for sources that see per-query-head attention.
        if (!cfg.kvcrush || (cfg.base != kvcrush::base_policy::snapkv && cfg.base != kvcrush::base_policy::pyramidkv &&
                             cfg.base != kvcrush::base_policy::tova))
          continue;
        cfg.crush.heads = kvcrush::signature_heads::query;
      }
      const auto expected = reference_keep(cfg, f, b);
      const auto got = facade_keep(cfg, in, b, ws);
      ASSERT_EQ(got.size(), expected.size()) << name;
      for (std::size_t r = 0; r < got.size(); ++r)
        EXPECT_EQ(got[r], expected[r]) << name << (query_heads ? " (query heads)" : "") << " row " << r;
    }
  }
  // StreamingLLM: exactly sink + recent, or KVCrush fills the middle (f = 1).
  const kvcrush::layer_budget tight{10, 2, 8};
  EXPECT_EQ(facade_keep(kvcrush::policy_config::parse("streaming"), in, tight, ws),
            reference_keep(kvcrush::policy_config::parse("streaming"), f, tight));
  auto filled = kvcrush::policy_config::parse("streaming+kvcrush");
  filled.crush.fraction = 1.0;
  EXPECT_EQ(facade_keep(filled, in, b, ws), reference_keep(filled, f, b));
  // The reference is not blind to the modifiers: each changes the answer here.
  EXPECT_NE(reference_keep(kvcrush::policy_config::parse("snapkv"), f, b),
            reference_keep(kvcrush::policy_config::parse("snapkv+kvcrush"), f, b));
  EXPECT_NE(reference_keep(kvcrush::policy_config::parse("h2o+adakv"), f, b),
            reference_keep(kvcrush::policy_config::parse("h2o+adakv+kvcrush"), f, b));
}

TEST(Policies, AdaKVWithKVCrushMatchesTheSpecPerHead) {
  // The head budgets of SPEC 6.3, then per head B_crush,h = floor(f *
  // rest_h) representatives and rest_h - B_crush,h importance picks.
  fixture f;
  kvcrush::workspace ws;
  for (index_t t = 0; t < f.n; ++t) {  // heads with different spreads, as in AdaKVGivesRaggedHeadWiseKeepSets
    f.scores[0 * f.n + t] = 0.5f + 0.001f * static_cast<float>(t % 17);
    f.scores[1 * f.n + t] *= 0.3f;
    f.scores[3 * f.n + t] = t % 50 == 0 ? 10.0f : 0.0f;
  }
  const auto in = f.inputs();
  const auto S = rows_of(f.scores.data(), f.h, f.n);
  for (double alpha : {0.0, 0.2, 1.0}) {
    for (double fraction : {0.25, 0.5, 1.0}) {
      const kvcrush::layer_budget b{64, 4, 8};
      kvcrush::crush_options crush;
      crush.fraction = fraction;
      const kvcrush::policy::with_kvcrush<kvcrush::policy::adakv<kvcrush::policy::precomputed>> p{{{}, alpha}, crush};
      const auto got = run(p, in, b, {true, 1}, ws);
      const auto rest = spec::head_budgets(S, 4, f.n - 8, 64 - 12, alpha);
      kvcrush::keep_config cfg;
      cfg.budget = 64;
      cfg.sink = 4;
      cfg.recent = 8;
      cfg.per_head = true;
      cfg.crush_fraction = fraction;
      const auto expected = spec::keep(S, S, cfg, rest);
      for (index_t k = 0; k < f.h; ++k) EXPECT_EQ(got.row(k), expected[k]) << "alpha " << alpha << " f " << fraction << " head " << k;
      if (alpha < 1.0) {
        EXPECT_NE(rest[0], rest[3]) << "the heads' budgets differ, so the test sees the allocation";
      }
    }
  }
}

TEST(SelectKeepRagged, MatchesTheSpecWithPerHeadBudgets) {
  // select_keep_ragged directly: arbitrary free budgets per head (0, all of
  // E, and in between), with and without KVCrush, KV and separate signature
  // rows, ties in the scores.
  const index_t h = 4, n = 97, hs = 8;
  const auto raw = kvcrush_test::tricky_floats(static_cast<std::size_t>(h * n), 11, 9, 0.0);
  std::vector<float> scores(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) scores[i] = std::isfinite(raw[i]) ? raw[i] : 0.0f;
  const auto sig = kvcrush_test::random_floats(static_cast<std::size_t>(hs * n), 12, 0.0f, 1.0f);
  const auto S = rows_of(scores.data(), h, n), Q = rows_of(sig.data(), hs, n);
  kvcrush::workspace ws;
  const index_t sink = 3, recent = 5, evictable = n - sink - recent;
  for (const std::vector<long>& rest : {std::vector<long>{0, 10, 30, evictable}, std::vector<long>{20, 20, 20, 20},
                                        std::vector<long>{evictable, 1, 0, 7}}) {
    for (double fraction : {0.0, 0.5, 1.0}) {
      for (bool separate : {false, true}) {
        kvcrush::keep_config cfg;
        cfg.sink = sink;
        cfg.recent = recent;
        cfg.budget = sink + recent + 20;  // the average; the ragged budgets override it
        cfg.per_head = true;
        cfg.crush_fraction = fraction;
        std::vector<index_t> budgets(rest.begin(), rest.end()), counts(static_cast<std::size_t>(h), -1);
        std::vector<index_t> out(static_cast<std::size_t>(h * n), -1);
        kvcrush::select_keep_ragged(kvcrush::make_matrix_view<const float>(scores.data(), h, n), cfg,
                                    kvcrush::make_vector_view<const index_t>(budgets.data(), h),
                                    kvcrush::make_matrix_view(out.data(), h, n), kvcrush::make_vector_view(counts.data(), h),
                                    ws, separate ? kvcrush::make_matrix_view<const float>(sig.data(), hs, n)
                                                 : kvcrush::matrix_view<const float>{});
        const auto expected = spec::keep(S, separate ? Q : S, cfg, rest);
        for (index_t k = 0; k < h; ++k) {
          ASSERT_EQ(counts[k], sink + recent + rest[static_cast<std::size_t>(k)]) << "head " << k;
          EXPECT_EQ(std::vector<long>(out.begin() + k * n, out.begin() + k * n + counts[k]), expected[k])
              << "f " << fraction << " separate " << separate << " head " << k;
        }
      }
    }
  }
}

TEST(Policies, QueryAndKVHeadSignaturesSelectDifferentRepresentatives) {
  // signature_heads switches the rows the signatures come from. On this
  // data the two choices give different keep sets, each the SPEC's.
  fixture f;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  const auto w = spec::window_scores(f.attention, f.hq, f.w, f.n, f.h);
  for (bool per_head : {false, true}) {
    kvcrush::keep_config cfg;
    cfg.budget = 70;
    cfg.recent = 8;
    cfg.crush_fraction = 0.5;
    cfg.per_head = per_head;
    std::vector<std::vector<long>> got[2];
    for (auto heads : {kvcrush::signature_heads::kv, kvcrush::signature_heads::query}) {
      kvcrush::crush_options crush;
      crush.fraction = 0.5;
      crush.heads = heads;
      const kvcrush::policy::with_kvcrush<kvcrush::policy::snapkv> p{{}, crush};
      const auto r = run(p, in, {70, 0, 8}, {per_head, 1}, ws);
      const bool query = heads == kvcrush::signature_heads::query;
      const auto expected = spec::keep(w.kv, query ? w.query : w.kv, cfg);
      for (index_t k = 0; k < (per_head ? f.h : 1); ++k) {
        got[query].push_back(r.row(k));
        EXPECT_EQ(r.row(k), expected[k]) << (query ? "query" : "kv") << " per_head " << per_head << " row " << k;
      }
    }
    EXPECT_NE(got[0], got[1]) << "per_head " << per_head;
  }
}
