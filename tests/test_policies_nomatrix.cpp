// The policies over the score sources that need no attention matrix
// (SPEC 11): policy::keydiff, policy::expected_attention and policy::rkv.
// Each select() is compared with the keep sets computed by hand: the score
// function on the same inputs, then select_keep (or AdaKV's budgets and
// select_keep_ragged) on those scores, in shared, per-head and block mode,
// with +kvcrush and +adakv. Also: missing inputs named in the error, NaN
// rejected, run-time names round-tripping to the same pipelines, warmed
// calls that do not allocate, and decode-time eviction through
// eviction_controller equal to select() on the inputs it tracked.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <deque>

#include "cache_test_support.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/policy/mixed_precision.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "test_support.hpp"

using kvcrush::index_t;
namespace policy = kvcrush::policy;

namespace {

struct fixture {
  index_t hq = 8, h = 4, w = 8, n = 211, d = 16, dv = 12;
  std::vector<float> attention, queries, keys, values;
  fixture() {
    attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), 11, 0.0f, 1.0f);
    queries = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * d), 12);
    keys = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 13);
    values = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * dv), 14);
    // A few repeated keys, so that R-KV's redundancy has copies to find.
    for (index_t k = 0; k < h; ++k)
      for (index_t t = 40; t < 60; ++t)
        for (index_t j = 0; j < d; ++j) keys[(k * n + t) * d + j] = keys[(k * n + 30) * d + j] * (1.0f + 0.01f * t);
  }
  kvcrush::layer_inputs inputs() const {
    kvcrush::layer_inputs in;
    in.kv_heads = h;
    in.tokens = n;
    in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n});
    in.window_queries = kvcrush::strided_view<const float, 3>(queries.data(), {hq, w, d});
    in.keys.f32 = kvcrush::make_head_token_dim(keys.data(), h, n, d);
    in.values.f32 = kvcrush::make_head_token_dim(values.data(), h, n, dv);
    return in;
  }
};

using rows_t = std::vector<std::vector<index_t>>;

template <class Policy>
rows_t run(const Policy& p, const kvcrush::layer_inputs& in, kvcrush::layer_budget b, kvcrush::selection_layout layout,
           kvcrush::workspace& ws) {
  const index_t rows = layout.per_head ? in.kv_heads : 1;
  const index_t width = in.tokens + 1;
  std::vector<index_t> positions(static_cast<std::size_t>(rows * width), -1), counts(static_cast<std::size_t>(rows), -1);
  kvcrush::select(p, in, b, layout,
                  {kvcrush::make_matrix_view(positions.data(), rows, width), kvcrush::make_vector_view(counts.data(), rows)},
                  ws);
  rows_t out(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    out[static_cast<std::size_t>(r)].assign(positions.begin() + r * width, positions.begin() + r * width + counts[r]);
  }
  return out;
}

// The keep sets of scores S (H, N) by hand: select_keep, or for AdaKV the
// head budgets and select_keep_ragged.
rows_t by_hand(const std::vector<float>& s, index_t h, index_t n, kvcrush::layer_budget b,
               kvcrush::selection_layout layout, double crush, bool adakv, double alpha = 0.2) {
  kvcrush::keep_config cfg;
  cfg.budget = b.budget;
  cfg.sink = b.sink;
  cfg.recent = b.recent;
  cfg.per_head = layout.per_head;
  cfg.block_size = layout.block_size;
  cfg.crush_fraction = crush;
  kvcrush::selection_scratch scratch;
  const auto scores = kvcrush::make_matrix_view<const float>(s.data(), h, n);
  const index_t rows = layout.per_head ? h : 1;
  const index_t width = n + 1;
  std::vector<index_t> positions(static_cast<std::size_t>(rows * width), -1), counts(static_cast<std::size_t>(rows), 0);
  const auto out = kvcrush::make_matrix_view(positions.data(), rows, width);
  if (adakv) {
    std::vector<index_t> rest(static_cast<std::size_t>(h));
    kvcrush::allocate_head_budgets(scores, b.sink, n - b.recent, b.budget - b.sink - b.recent, alpha,
                                   kvcrush::make_vector_view(rest.data(), h), scratch);
    kvcrush::select_keep_ragged(scores, cfg, kvcrush::make_vector_view<const index_t>(rest.data(), h), out,
                                kvcrush::make_vector_view(counts.data(), rows), scratch);
  } else {
    const index_t count = kvcrush::select_keep(scores, cfg, out, scratch);
    for (auto& c : counts) c = count;
  }
  rows_t result(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    result[static_cast<std::size_t>(r)].assign(positions.begin() + r * width, positions.begin() + r * width + counts[r]);
  }
  return result;
}

// Every layout and composition of one base policy against the keep sets of
// its scores. `scores_for(b)` computes the scores with the library's score
// functions for the budget b.
template <class Base>
void check_every_mode(const Base& base, const fixture& f, const std::function<std::vector<float>(kvcrush::layer_budget)>& scores_for) {
  kvcrush::workspace ws;
  const auto in = f.inputs();
  const kvcrush::layer_budget b{64, 4, 8};
  const auto s = scores_for(b);
  kvcrush::crush_options crush;
  crush.fraction = 0.5;
  struct mode {
    kvcrush::selection_layout layout;
    const char* name;
  };
  for (const mode m : {mode{{false, 1}, "shared"}, mode{{true, 1}, "per-head"}, mode{{false, 4}, "block"},
                       mode{{true, 4}, "per-head block"}}) {
    SCOPED_TRACE(m.name);
    EXPECT_EQ(run(base, in, b, m.layout, ws), by_hand(s, f.h, f.n, b, m.layout, 0.0, false));
    EXPECT_EQ(run(policy::with_kvcrush<Base>{base, crush}, in, b, m.layout, ws),
              by_hand(s, f.h, f.n, b, m.layout, 0.5, false));
  }
  const kvcrush::selection_layout per_head{true, 1};
  EXPECT_EQ(run(policy::adakv<Base>{base, 0.2}, in, b, per_head, ws), by_hand(s, f.h, f.n, b, per_head, 0.0, true));
  EXPECT_EQ(run(policy::with_kvcrush<policy::adakv<Base>>{{base, 0.3}, crush}, in, b, per_head, ws),
            by_hand(s, f.h, f.n, b, per_head, 0.5, true, 0.3));
}

std::vector<float> keydiff_by_hand(const fixture& f) {
  std::vector<float> s(static_cast<std::size_t>(f.h * f.n));
  kvcrush::keydiff_scores(f.inputs().keys.f32, kvcrush::make_matrix_view(s.data(), f.h, f.n));
  return s;
}

std::vector<float> expected_attention_by_hand(const fixture& f, const kvcrush::expected_attention_options& opt) {
  std::vector<float> s(static_cast<std::size_t>(f.h * f.n));
  const auto in = f.inputs();
  kvcrush::expected_attention_scores(in.window_queries, in.keys.f32, opt, kvcrush::make_matrix_view(s.data(), f.h, f.n),
                                     in.values.f32);
  return s;
}

// R-KV by hand: SnapKV's window sums (max pooling, kernel 7) divided by W,
// combined with the redundancy over [sink, N - recent).
std::vector<float> rkv_by_hand(const fixture& f, const policy::rkv& p, kvcrush::layer_budget b, bool from_queries) {
  std::vector<float> s(static_cast<std::size_t>(f.h * f.n));
  const auto in = f.inputs();
  const auto m = kvcrush::make_matrix_view(s.data(), f.h, f.n);
  kvcrush::attention_scratch scratch;
  if (from_queries) {
    kvcrush::window_scores_from_queries(in.window_queries, in.keys.f32, p.window, m, scratch);
  } else {
    kvcrush::window_scores(in.window_attention, p.window, m, scratch);
  }
  for (auto& x : s) x = static_cast<float>(static_cast<double>(x) * (1.0 / static_cast<double>(f.w)));
  std::vector<float> buffer(static_cast<std::size_t>(kvcrush::rkv_scratch_floats(f.n - b.sink - b.recent, f.d, p.options)));
  kvcrush::rkv_scores(in.keys.f32, kvcrush::make_matrix_view<const float>(s.data(), f.h, f.n), b.sink, f.n - b.recent,
                      p.options, kvcrush::make_vector_view(buffer.data(), static_cast<index_t>(buffer.size())), m);
  return s;
}

void expect_invalid(const std::function<void()>& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one naming '" << needle << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(NoMatrixPolicies, KeyDiffIsItsScoresThenTheSelection) {
  fixture f;
  const auto s = keydiff_by_hand(f);
  check_every_mode(policy::keydiff{}, f, [&](kvcrush::layer_budget) { return s; });
}

TEST(NoMatrixPolicies, ExpectedAttentionIsItsScoresThenTheSelection) {
  fixture f;
  policy::expected_attention p;  // kvpress defaults: covariance, value norm, 512 future positions
  const auto s = expected_attention_by_hand(f, p.options);
  check_every_mode(p, f, [&](kvcrush::layer_budget) { return s; });
  // Without covariance, rotation and values: a different ranking, still its scores.
  policy::expected_attention plain;
  plain.options.use_covariance = false;
  plain.options.use_vnorm = false;
  plain.options.future_positions = 0;
  const auto s2 = expected_attention_by_hand(f, plain.options);
  EXPECT_NE(s, s2);
  auto in = f.inputs();
  in.values = {};  // not needed without the value norm
  kvcrush::workspace ws;
  EXPECT_EQ(run(plain, in, {64, 4, 8}, {}, ws), by_hand(s2, f.h, f.n, {64, 4, 8}, {}, 0.0, false));
  // layer_inputs.position (the next token's absolute position, after
  // evictions) is the first future position when the options leave it at -1.
  auto later = f.inputs();
  later.position = 5000;
  auto at_5000 = p.options;
  at_5000.first_future_position = 5000;
  const auto s3 = expected_attention_by_hand(f, at_5000);
  EXPECT_NE(s3, s);
  const kvcrush::layer_budget b{64, 4, 8};
  EXPECT_EQ(run(p, later, b, {}, ws), by_hand(s3, f.h, f.n, b, {}, 0.0, false));
  policy::expected_attention fixed = p;  // an explicit first position wins
  fixed.options.first_future_position = f.n;
  EXPECT_EQ(run(fixed, later, b, {}, ws), by_hand(s, f.h, f.n, b, {}, 0.0, false));
}

TEST(NoMatrixPolicies, RkvIsImportanceAndRedundancyOverTheEvictableRegion) {
  fixture f;
  const policy::rkv p;
  check_every_mode(p, f, [&](kvcrush::layer_budget b) { return rkv_by_hand(f, p, b, false); });
  // The region follows the budget: another sink and recent, other scores.
  EXPECT_NE(rkv_by_hand(f, p, {64, 4, 8}, false), rkv_by_hand(f, p, {64, 0, 32}, false));
  // The full comparison (comparison_tokens = 0, R-KV's own rule), another lambda.
  policy::rkv full;
  full.options.comparison_tokens = 0;
  full.options.lambda = 0.5f;
  check_every_mode(full, f, [&](kvcrush::layer_budget b) { return rkv_by_hand(f, full, b, false); });
  // Importance from the window queries and the keys when no probabilities are given.
  auto in = f.inputs();
  in.window_attention = {};
  kvcrush::workspace ws;
  const kvcrush::layer_budget b{64, 4, 8};
  EXPECT_EQ(run(p, in, b, {}, ws), by_hand(rkv_by_hand(f, p, b, true), f.h, f.n, b, {}, 0.0, false));
}

TEST(NoMatrixPolicies, RkvScoresWithoutABudgetCompareTheWholeCache) {
  fixture f;
  const policy::rkv p;
  kvcrush::workspace ws;
  const auto in = f.inputs();
  const auto got = p.scores<kvcrush::isa::active>(in, ws);
  const auto expected = rkv_by_hand(f, p, {f.n, 0, 0}, false);
  for (index_t k = 0; k < f.h; ++k)
    for (index_t t = 0; t < f.n; ++t) ASSERT_EQ(got.importance(k, t), expected[static_cast<std::size_t>(k * f.n + t)]);
}

TEST(NoMatrixPolicies, MissingInputsAreNamed) {
  fixture f;
  kvcrush::workspace ws;
  const kvcrush::layer_budget b{64, 4, 8};
  auto no_keys = f.inputs();
  no_keys.keys = {};
  expect_invalid([&] { run(policy::keydiff{}, no_keys, b, {}, ws); }, "layer_inputs.keys is missing");
  expect_invalid([&] { run(policy::expected_attention{}, no_keys, b, {}, ws); }, "layer_inputs.keys is missing");
  expect_invalid([&] { run(policy::rkv{}, no_keys, b, {}, ws); }, "layer_inputs.keys is missing");
  auto no_queries = f.inputs();
  no_queries.window_queries = {};
  expect_invalid([&] { run(policy::expected_attention{}, no_queries, b, {}, ws); }, "layer_inputs.window_queries");
  auto no_values = f.inputs();
  no_values.values = {};
  expect_invalid([&] { run(policy::expected_attention{}, no_values, b, {}, ws); }, "layer_inputs.values is missing");
  auto no_window = f.inputs();
  no_window.window_attention = {};
  no_window.window_queries = {};
  expect_invalid([&] { run(policy::rkv{}, no_window, b, {}, ws); }, "window_attention, or window_queries");
  expect_invalid([&] { run(policy::with_kvcrush<policy::adakv<policy::rkv>>{}, no_window, b, {true, 1}, ws); },
                 "window_attention, or window_queries");
  // Shapes that disagree with layer_inputs.
  auto wrong_tokens = f.inputs();
  wrong_tokens.tokens = f.n - 1;
  expect_invalid([&] { run(policy::keydiff{}, wrong_tokens, b, {}, ws); }, "keydiff keys covers");
  auto wrong_heads = f.inputs();
  wrong_heads.kv_heads = 2;
  expect_invalid([&] { run(policy::keydiff{}, wrong_heads, b, {}, ws); }, "kv_heads");
  expect_invalid([&] { run(policy::rkv{}, wrong_heads, b, {}, ws); }, "kv_heads");
  // Query-head signatures need per-query-head rows, which KeyDiff has not.
  kvcrush::crush_options crush;
  crush.heads = kvcrush::signature_heads::query;
  expect_invalid([&] { run(policy::with_kvcrush<policy::keydiff>{{}, crush}, f.inputs(), b, {}, ws); },
                 "query-head signatures");
}

TEST(NoMatrixPolicies, NaNIsRejected) {
  const kvcrush::layer_budget b{64, 4, 8};
  kvcrush::workspace ws;
  {
    fixture f;
    f.keys[(1 * f.n + 100) * f.d + 3] = std::numeric_limits<float>::quiet_NaN();
    expect_invalid([&] { run(policy::keydiff{}, f.inputs(), b, {}, ws); }, "non-finite");
    expect_invalid([&] { run(policy::expected_attention{}, f.inputs(), b, {}, ws); }, "non-finite");
    expect_invalid([&] { run(policy::rkv{}, f.inputs(), b, {}, ws); }, "non-finite");
  }
  {
    fixture f;
    f.queries[5] = std::numeric_limits<float>::quiet_NaN();
    expect_invalid([&] { run(policy::expected_attention{}, f.inputs(), b, {}, ws); }, "queries must be finite");
  }
  {
    fixture f;
    f.values[7] = std::numeric_limits<float>::infinity();
    expect_invalid([&] { run(policy::expected_attention{}, f.inputs(), b, {}, ws); }, "values must be finite");
  }
  {
    fixture f;
    f.attention[(2 * f.w + 3) * f.n + 77] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THROW(run(policy::rkv{}, f.inputs(), b, {}, ws), std::invalid_argument);
  }
}

TEST(NoMatrixPolicies, RuntimeNamesRoundTripAndEqualTheCompileTimePipelines) {
  fixture f;
  const auto in = f.inputs();
  const kvcrush::layer_budget b{64, 4, 8};
  kvcrush::workspace ws;
  const char* bases[] = {"keydiff", "expected_attention", "rkv"};
  const char* mods[] = {"", "+kvcrush", "+adakv", "+adakv+kvcrush"};
  for (const char* base : bases) {
    for (const char* mod : mods) {
      const std::string name = std::string(base) + mod;
      SCOPED_TRACE(name);
      const auto cfg = kvcrush::policy_config::parse(name);
      EXPECT_EQ(cfg.name(), name);
      EXPECT_EQ(to_string(cfg.base), base);
      const index_t rows = cfg.layout.per_head ? f.h : 1;
      std::vector<index_t> positions(static_cast<std::size_t>(rows * (f.n + 1)), -1), counts(static_cast<std::size_t>(rows));
      kvcrush::select(cfg, in, b,
                      {kvcrush::make_matrix_view(positions.data(), rows, f.n + 1), kvcrush::make_vector_view(counts.data(), rows)},
                      ws);
      rows_t got(static_cast<std::size_t>(rows));
      for (index_t r = 0; r < rows; ++r)
        got[static_cast<std::size_t>(r)].assign(positions.begin() + r * (f.n + 1), positions.begin() + r * (f.n + 1) + counts[r]);
      auto compile_time = [&](auto p) {
        using P = decltype(p);
        if (cfg.adakv && cfg.kvcrush) return run(policy::with_kvcrush<policy::adakv<P>>{{p, 0.2}, {}}, in, b, cfg.layout, ws);
        if (cfg.adakv) return run(policy::adakv<P>{p, 0.2}, in, b, cfg.layout, ws);
        if (cfg.kvcrush) return run(policy::with_kvcrush<P>{p, {}}, in, b, cfg.layout, ws);
        return run(p, in, b, cfg.layout, ws);
      };
      rows_t expected;
      if (cfg.base == kvcrush::base_policy::keydiff) expected = compile_time(policy::keydiff{});
      if (cfg.base == kvcrush::base_policy::expected_attention) expected = compile_time(policy::expected_attention{});
      if (cfg.base == kvcrush::base_policy::rkv) expected = compile_time(policy::rkv{});
      EXPECT_EQ(got, expected);
    }
  }
  // The run-time R-KV's knobs reach the policy.
  auto cfg = kvcrush::policy_config::parse("rkv");
  EXPECT_EQ(cfg.window.pooling, kvcrush::pooling_mode::max);
  EXPECT_EQ(cfg.rkv.comparison_tokens, 256);
  cfg.rkv.lambda = 0.9f;
  std::vector<index_t> positions(65), counts(1);
  kvcrush::select(cfg, in, b, {kvcrush::make_matrix_view(positions.data(), 1, 65), kvcrush::make_vector_view(counts.data(), 1)},
                  ws);
  policy::rkv p;
  p.options.lambda = 0.9f;
  EXPECT_EQ(run(p, in, b, {}, ws)[0], std::vector<index_t>(positions.begin(), positions.begin() + counts[0]));
  EXPECT_NE(run(policy::rkv{}, in, b, {}, ws)[0], std::vector<index_t>(positions.begin(), positions.begin() + counts[0]));
  EXPECT_THROW(kvcrush::policy_config::parse("keydiff+crush"), std::invalid_argument);
  EXPECT_THROW(kvcrush::policy_config::parse("key_diff"), std::invalid_argument);
}

TEST(NoMatrixPolicies, WarmedCallsDoNotAllocate) {
  fixture f;
  const auto in = f.inputs();
  const kvcrush::layer_budget b{64, 4, 8};
  kvcrush::crush_options crush;
  for (int pass = 0; pass < 2; ++pass) {
    kvcrush::workspace ws;
    auto all = [&] {
      run(policy::keydiff{}, in, b, {}, ws);
      run(policy::expected_attention{}, in, b, {true, 1}, ws);
      run(policy::with_kvcrush<policy::rkv>{{}, crush}, in, b, {false, 4}, ws);
      run(policy::adakv<policy::rkv>{}, in, b, {true, 1}, ws);
    };
    all();
    const auto warmed = ws.allocations();
    all();
    EXPECT_EQ(ws.allocations(), warmed);
  }
}

// Decode-time eviction: the controller's selection at its first eviction
// equals select() on what it was shown (the last `window` attention rows,
// or the last `window` queries and the newest position), with the keys and
// values of its cache. Then it keeps the cache within budget + slack.
TEST(NoMatrixPolicies, DecodeTimeEvictionThroughTheController) {
  const index_t heads = 2, query_heads = 4, d = 8, window = 5, slack = 4;
  const kvcrush::layer_budget budget{20, 2, 6};
  for (const char* name : {"rkv", "rkv+kvcrush", "keydiff", "expected_attention", "expected_attention+kvcrush"}) {
    SCOPED_TRACE(name);
    auto policy = kvcrush::policy_config::parse(name);
    policy.rkv.comparison_tokens = 8;
    kvcrush::contiguous_cache<float> cache(1, heads, d, 40);
    kvcrush::eviction_settings settings;
    settings.policy = policy;
    settings.budgets = {budget};
    settings.slack = slack;
    settings.query_heads = query_heads;
    settings.window = window;
    kvcrush::eviction_controller<kvcrush::contiguous_cache<float>> controller(cache, settings);
    kvcrush::workspace ws, ws_by_hand;
    std::deque<std::vector<float>> rows_seen, queries_seen;
    bool checked = false;
    for (int step = 0; step < 50; ++step) {
      const auto k = kvcrush_test::random_floats(static_cast<std::size_t>(heads * d), 1000 + step);
      const auto v = kvcrush_test::random_floats(static_cast<std::size_t>(heads * d), 2000 + step);
      const auto q = kvcrush_test::random_floats(static_cast<std::size_t>(query_heads * d), 3000 + step, -3.0f, 3.0f);
      if (!checked && controller.needs_eviction(0, 1)) {
        const index_t n = cache.length(0);
        kvcrush::layer_inputs in;
        in.kv_heads = heads;
        in.tokens = n;
        in.keys.f32 = cache.keys(0);
        in.values.f32 = cache.values(0);
        std::vector<float> rows(static_cast<std::size_t>(query_heads * window * n), 0.0f);
        std::vector<float> queries(static_cast<std::size_t>(query_heads * window * d));
        for (index_t w = 0; w < window; ++w) {
          const auto& r = rows_seen[static_cast<std::size_t>(w)];
          const index_t width = static_cast<index_t>(r.size()) / query_heads;
          for (index_t h = 0; h < query_heads; ++h) {
            std::copy(r.begin() + h * width, r.begin() + (h + 1) * width, rows.begin() + (h * window + w) * n);
            const auto& qs = queries_seen[static_cast<std::size_t>(w)];
            std::copy(qs.begin() + h * d, qs.begin() + (h + 1) * d, queries.begin() + (h * window + w) * d);
          }
        }
        if (policy.base == kvcrush::base_policy::rkv) {
          in.window_attention = kvcrush::strided_view<const float, 3>(rows.data(), {query_heads, window, n});
        }
        if (policy.base == kvcrush::base_policy::expected_attention) {
          in.window_queries = kvcrush::strided_view<const float, 3>(queries.data(), {query_heads, window, d});
          in.position = step;  // the queries of steps 0..step-1 were observed
        }
        std::vector<index_t> keep(static_cast<std::size_t>(n + 1)), counts(1);
        kvcrush::select(policy, in, budget,
                        {kvcrush::make_matrix_view(keep.data(), 1, n + 1), kvcrush::make_vector_view(counts.data(), 1)},
                        ws_by_hand);
        controller.make_room(0, 1, ws);
        const auto got = controller.last_keep(0);
        ASSERT_EQ(got.count(0), counts[0]);
        for (index_t i = 0; i < counts[0]; ++i) EXPECT_EQ(got.at(0, i), keep[static_cast<std::size_t>(i)]);
        checked = true;
      }
      controller.make_room(0, 1, ws);
      cache.append(0, kvcrush::make_head_token_dim(k.data(), heads, 1, d), kvcrush::make_head_token_dim(v.data(), heads, 1, d));
      ASSERT_LE(cache.length(0), budget.budget + slack);
      const index_t n = cache.length(0);
      std::vector<float> probs;
      const auto keys = cache.keys(0);
      cache_test::attention_probabilities(q.data(), query_heads, heads, d, n,
                                          [&](index_t h, index_t t) { return &keys(h, t, 0); }, probs);
      controller.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), query_heads, n));
      controller.observe_queries(0, kvcrush::make_matrix_view<const float>(q.data(), query_heads, d), step);
      rows_seen.push_back(probs);
      queries_seen.push_back(q);
      if (static_cast<index_t>(rows_seen.size()) > window) rows_seen.pop_front();
      if (static_cast<index_t>(queries_seen.size()) > window) queries_seen.pop_front();
    }
    EXPECT_TRUE(checked);
    EXPECT_GE(controller.selections(0), 5);
  }
}

TEST(NoMatrixPolicies, ControllerRefusesQueriesOfTheWrongShape) {
  kvcrush::contiguous_cache<float> cache(1, 2, 8, 40);
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("expected_attention");
  settings.budgets = {kvcrush::layer_budget{20, 2, 6}};
  settings.query_heads = 4;
  kvcrush::eviction_controller<kvcrush::contiguous_cache<float>> controller(cache, settings);
  std::vector<float> q(4 * 6);
  expect_invalid([&] { controller.observe_queries(0, kvcrush::make_matrix_view<const float>(q.data(), 4, 6), 0); },
                 "the controller expects (4, 8)");
  // A policy that reads no queries ignores them.
  settings.policy = kvcrush::policy_config::parse("rkv");
  kvcrush::eviction_controller<kvcrush::contiguous_cache<float>> other(cache, settings);
  other.observe_queries(0, kvcrush::make_matrix_view<const float>(q.data(), 4, 6), 0);
}

// Mixed precision from a policy_config: the tiers of the policy's scores
// (R-KV's region from sink and recent) equal the tiers of those scores given
// as precomputed.
TEST(NoMatrixPolicies, MixedPrecisionTiersAreThoseOfTheirScores) {
  fixture f;
  const kvcrush::layer_budget b{0, 4, 8};
  kvcrush::mixed_precision_config mp;
  mp.high = kvcrush::tier_cost::per_token(512);
  mp.low = kvcrush::tier_cost::per_token(96);
  mp.budget_bytes = 512 * 60;
  kvcrush::workspace ws;
  auto tiers_of = [&](const kvcrush::policy_config& pc, const kvcrush::layer_inputs& in) {
    std::vector<index_t> high(static_cast<std::size_t>(f.n + 1)), low(high.size()), hc(1), lc(1);
    const auto plan = kvcrush::select_mixed_precision(
        pc, in, b, mp, {kvcrush::make_matrix_view(high.data(), 1, f.n + 1), kvcrush::make_vector_view(hc.data(), 1)},
        {kvcrush::make_matrix_view(low.data(), 1, f.n + 1), kvcrush::make_vector_view(lc.data(), 1)}, ws);
    EXPECT_GT(plan.low, 0);
    high.resize(static_cast<std::size_t>(hc[0]));
    low.resize(static_cast<std::size_t>(lc[0]));
    return std::make_pair(high, low);
  };
  const std::vector<std::pair<const char*, std::vector<float>>> cases = {
      {"keydiff", keydiff_by_hand(f)},
      {"expected_attention", expected_attention_by_hand(f, policy::expected_attention{}.options)},
      {"rkv", rkv_by_hand(f, policy::rkv{}, {f.n, b.sink, b.recent}, false)},
  };
  for (const auto& [name, scores] : cases) {
    SCOPED_TRACE(name);
    auto given = f.inputs();
    given.scores = kvcrush::make_matrix_view<const float>(scores.data(), f.h, f.n);
    EXPECT_EQ(tiers_of(kvcrush::policy_config::parse(name), f.inputs()),
              tiers_of(kvcrush::policy_config::parse("precomputed"), given));
  }
}
