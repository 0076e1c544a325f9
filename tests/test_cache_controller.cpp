// The decode-time eviction controller over contiguous and paged caches:
// bounded caches, one selection per `slack` tokens, the same result as
// select() + compaction by hand, choose() (a selection that evicts nothing)
// equal to select(), window/TOVA tracking, block mode, prefill compression,
// refusals; and batches on threads against a serial run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcrush/cache/batch.hpp"
#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/executor.hpp"
#include "kvcrush/cache/paged_cache.hpp"
#include "test_support.hpp"

using kvcrush::index_t;

namespace {

struct shape {
  index_t layers = 2, heads = 2, query_heads = 4, d = 8;
};

// A layer's keys, values and positions as float (heads, n, d) / (heads, n).
struct layer_rows {
  index_t n = 0;
  std::vector<float> keys, values;
  std::vector<index_t> positions;
  bool operator==(const layer_rows& o) const {
    return n == o.n && keys == o.keys && values == o.values && positions == o.positions;
  }
};

template <class T>
layer_rows rows_of(const kvcrush::contiguous_cache<T>& cache, index_t layer) {
  layer_rows r;
  r.n = cache.length(layer);
  const auto k = cache.keys(layer), v = cache.values(layer);
  const auto p = cache.positions(layer);
  for (index_t h = 0; h < cache.kv_heads(); ++h)
    for (index_t t = 0; t < r.n; ++t) {
      for (index_t j = 0; j < cache.head_dim(); ++j) {
        r.keys.push_back(kvcrush::to_float(k(h, t, j)));
        r.values.push_back(kvcrush::to_float(v(h, t, j)));
      }
      r.positions.push_back(p(h, t));
    }
  return r;
}

template <class T>
layer_rows rows_of(const kvcrush::paged_sequence<T>& seq, index_t layer) {
  const auto& cache = seq.cache();
  layer_rows r;
  r.n = cache.length(seq.id(), layer);
  const index_t h = cache.kv_heads(), d = cache.head_dim();
  r.keys.resize(static_cast<std::size_t>(h * r.n * d));
  r.values.resize(r.keys.size());
  r.positions.resize(static_cast<std::size_t>(h * r.n));
  cache.gather(seq.id(), layer, kvcrush::make_head_token_dim(r.keys.data(), h, r.n, d),
               kvcrush::make_head_token_dim(r.values.data(), h, r.n, d),
               kvcrush::make_matrix_view(r.positions.data(), h, r.n));
  return r;
}

template <class T>
void append_row(kvcrush::contiguous_cache<T>& cache, index_t layer, const float* k, const float* v) {
  cache.append(layer, kvcrush::make_head_token_dim(k, cache.kv_heads(), 1, cache.head_dim()),
               kvcrush::make_head_token_dim(v, cache.kv_heads(), 1, cache.head_dim()));
}
template <class T>
void append_row(kvcrush::paged_sequence<T>& seq, index_t layer, const float* k, const float* v) {
  auto& cache = seq.cache();
  cache.append(seq.id(), layer, kvcrush::make_head_token_dim(k, cache.kv_heads(), 1, cache.head_dim()),
               kvcrush::make_head_token_dim(v, cache.kv_heads(), 1, cache.head_dim()));
}

// The new query's attention over the layer as it is now.
std::vector<float> probabilities_over(const layer_rows& rows, const shape& s, const float* queries) {
  std::vector<float> probs;
  cache_test::attention_probabilities(queries, s.query_heads, s.heads, s.d, rows.n,
                                      [&](index_t h, index_t t) { return rows.keys.data() + (h * rows.n + t) * s.d; },
                                      probs);
  return probs;
}

// Deterministic step data: the K/V rows and queries of (step, layer).
struct step_data {
  std::vector<float> k, v, q;
  step_data(const shape& s, int step, index_t layer, std::uint32_t salt = 0) {
    const auto seed = static_cast<std::uint32_t>(step * 131 + layer * 7 + 1) + salt * 100003u;
    k = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * s.d), seed);
    v = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * s.d), seed + 50000);
    q = kvcrush_test::random_floats(static_cast<std::size_t>(s.query_heads * s.d), seed + 90000, -3.0f, 3.0f);
  }
};

// select() + compaction by hand, on a contiguous cache, with an H2O
// accumulator per layer: what the controller must reproduce.
template <class T>
struct manual_h2o {
  shape s;
  kvcrush::contiguous_cache<T> cache;
  std::vector<kvcrush::h2o_accumulator> acc;
  kvcrush::policy_config policy;
  kvcrush::layer_budget budget;
  index_t limit;
  kvcrush::workspace ws;
  std::vector<index_t> keep, counts, tokens;
  int selections = 0;

  manual_h2o(const shape& sh, kvcrush::kv_layout layout, const kvcrush::policy_config& p, kvcrush::layer_budget b,
             index_t slack, index_t capacity)
      : s(sh), cache(sh.layers, sh.heads, sh.d, capacity, layout), policy(p), budget(b), limit(b.budget + slack) {
    for (index_t l = 0; l < sh.layers; ++l) {
      acc.emplace_back(sh.heads, sh.query_heads, capacity, p.window.gqa,
                       p.kvcrush && p.crush.heads == kvcrush::signature_heads::query);
    }
    keep.resize(static_cast<std::size_t>(sh.heads * (capacity + 1)));
    counts.resize(static_cast<std::size_t>(sh.heads));
    tokens.resize(static_cast<std::size_t>(capacity));
  }

  void make_room(index_t layer) {
    const index_t n = cache.length(layer);
    if (n + 1 <= limit) return;
    auto& a = acc[static_cast<std::size_t>(layer)];
    if (a.length(0) < n) a.append(n - a.length(0));
    kvcrush::layer_inputs in;
    in.kv_heads = s.heads;
    in.tokens = n;
    in.h2o = &a;
    const index_t rows = policy.layout.per_head ? s.heads : 1;
    const index_t width = n + 1;
    kvcrush::layer_budget target = budget;
    const index_t b = policy.layout.block_size;
    if (b == 1) target.budget = std::min(budget.budget, limit - 1);
    kvcrush::select(policy, in, target,
                    {kvcrush::make_matrix_view(keep.data(), rows, width), kvcrush::make_vector_view(counts.data(), rows)},
                    ws);
    if (b > 1) {
      cache.evict_blocks(layer, kvcrush::make_vector_view<const index_t>(keep.data(), counts[0]), b);
      index_t count = 0;
      for (index_t i = 0; i < counts[0]; ++i)
        for (index_t t = keep[i] * b; t < std::min((keep[i] + 1) * b, n); ++t) tokens[count++] = t;
      for (index_t h = 0; h < s.heads; ++h) a.compact(h, tokens.data(), count);
    } else {
      cache.evict_tokens(layer, kvcrush::keep_view(kvcrush::make_matrix_view<const index_t>(keep.data(), rows, width)
                                                       .slice(1, 0, counts[0])));
      for (index_t h = 0; h < s.heads; ++h) {
        const index_t r = rows == 1 ? 0 : h;
        a.compact(h, keep.data() + r * width, counts[r]);
      }
    }
    ++selections;
  }

  void observe(index_t layer, const std::vector<float>& probs) {
    auto& a = acc[static_cast<std::size_t>(layer)];
    const index_t w = static_cast<index_t>(probs.size()) / s.query_heads;
    if (a.length(0) < w) a.append(w - a.length(0));
    a.accumulate(kvcrush::make_matrix_view(probs.data(), s.query_heads, w));
  }
};

template <class Cache>
void check_h2o_against_manual(Cache& cache, const kvcrush::policy_config& policy, kvcrush::kv_layout manual_layout,
                              const char* label) {
  SCOPED_TRACE(label);
  const shape s;
  const kvcrush::layer_budget budget{24, 2, 4};
  const index_t slack = 5;
  using T = typename Cache::storage_type;
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.budgets = {budget};
  settings.slack = slack;
  settings.query_heads = s.query_heads;
  kvcrush::eviction_controller<Cache> controller(cache, settings);
  manual_h2o<T> manual(s, manual_layout, policy, budget, slack, budget.budget + slack);
  kvcrush::workspace ws;
  const int steps = 90;
  for (int step = 0; step < steps; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      const step_data data(s, step, l);
      const index_t before = cache.length(l);
      const bool evicted = controller.make_room(l, 1, ws);
      manual.make_room(l);
      ASSERT_EQ(evicted, before == budget.budget + slack) << "evicts exactly when the limit would be exceeded";
      append_row(cache, l, data.k.data(), data.v.data());
      append_row(manual.cache, l, data.k.data(), data.v.data());
      ASSERT_LE(cache.length(l), budget.budget + slack) << "step " << step;
      const auto rows = rows_of(cache, l);
      ASSERT_TRUE(rows == rows_of(manual.cache, l)) << "step " << step << " layer " << l;
      const auto probs = probabilities_over(rows, s, data.q.data());
      controller.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
      manual.observe(l, probs);
      // choose(): the selection over the tracked scores, nothing evicted.
      if (rows.n > 12) {
        const kvcrush::layer_budget smaller{12, 2, 3};
        const index_t keep_rows = policy.layout.per_head ? s.heads : 1;
        std::vector<index_t> chosen(static_cast<std::size_t>(keep_rows * 12)), expected(chosen.size());
        std::vector<index_t> chosen_counts(static_cast<std::size_t>(keep_rows)), expected_counts(chosen_counts.size());
        controller.choose(l, policy, smaller,
                          {kvcrush::make_matrix_view(chosen.data(), keep_rows, 12),
                           kvcrush::make_vector_view(chosen_counts.data(), keep_rows)},
                          ws);
        kvcrush::layer_inputs in;
        in.kv_heads = s.heads;
        in.tokens = rows.n;
        in.h2o = &manual.acc[static_cast<std::size_t>(l)];
        kvcrush::select(policy, in, smaller,
                        {kvcrush::make_matrix_view(expected.data(), keep_rows, 12),
                         kvcrush::make_vector_view(expected_counts.data(), keep_rows)},
                        manual.ws);
        ASSERT_EQ(chosen, expected) << "step " << step << " layer " << l;
        ASSERT_EQ(chosen_counts, expected_counts);
        ASSERT_TRUE(rows_of(cache, l) == rows) << "choose() must not change the cache";
      }
    }
  }
  // Evictions at steps B + S + k S: one selection per `slack` tokens.
  const int expected = (steps - 1 - static_cast<int>(budget.budget + slack)) / static_cast<int>(slack) + 1;
  for (index_t l = 0; l < s.layers; ++l) EXPECT_EQ(controller.selections(l), expected);
  EXPECT_EQ(manual.selections, expected * s.layers);
}

kvcrush::policy_config h2o_policy(bool per_head, bool crush, bool query_signatures = false) {
  auto p = kvcrush::policy_config::parse(crush ? "h2o+kvcrush" : "h2o");
  p.layout.per_head = per_head;
  if (query_signatures) p.crush.heads = kvcrush::signature_heads::query;
  return p;
}

}  // namespace

TEST(DecodeController, H2OContiguousMatchesSelectAndCompactionByHand) {
  const shape s;
  for (bool per_head : {false, true}) {
    for (bool crush : {false, true}) {
      kvcrush::contiguous_cache<float> a(s.layers, s.heads, s.d, 40, kvcrush::kv_layout::head_token_dim);
      check_h2o_against_manual(a, h2o_policy(per_head, crush), kvcrush::kv_layout::head_token_dim, "f32 head_token_dim");
      kvcrush::contiguous_cache<kvcrush::float16> b(s.layers, s.heads, s.d, 40, kvcrush::kv_layout::token_head_dim);
      check_h2o_against_manual(b, h2o_policy(per_head, crush), kvcrush::kv_layout::head_token_dim, "f16 token_head_dim");
    }
    // KVCrush signatures from the query heads' own accumulated attention.
    kvcrush::contiguous_cache<float> c(s.layers, s.heads, s.d, 40, kvcrush::kv_layout::head_token_dim);
    check_h2o_against_manual(c, h2o_policy(per_head, true, true), kvcrush::kv_layout::head_token_dim,
                             "query-head signatures");
  }
}

TEST(DecodeController, H2OPagedMatchesSelectAndCompactionByHand) {
  const shape s;
  for (bool per_head : {false, true}) {
    kvcrush::paged_cache_config cfg;
    cfg.layers = s.layers;
    cfg.kv_heads = s.heads;
    cfg.head_dim = s.d;
    cfg.block_size = 4;
    cfg.blocks = 16;
    cfg.max_sequences = 2;
    kvcrush::paged_cache<kvcrush::bfloat16> pool(cfg);
    kvcrush::paged_sequence<kvcrush::bfloat16> seq(pool, pool.create());
    check_h2o_against_manual(seq, h2o_policy(per_head, true), kvcrush::kv_layout::token_head_dim, "paged bf16");
    pool.check_invariants();
    EXPECT_EQ(pool.free_blocks(0), 16 - (pool.length(seq.id(), 0) + 3) / 4);
  }
}

TEST(DecodeController, BlockModeEvictsWholeBlocksOfThePagedCache) {
  const shape s;
  auto policy = kvcrush::policy_config::parse("h2o+kvcrush");
  policy.layout.block_size = 4;
  kvcrush::paged_cache_config cfg;
  cfg.layers = s.layers;
  cfg.kv_heads = s.heads;
  cfg.head_dim = s.d;
  cfg.block_size = 4;
  cfg.blocks = 9;
  kvcrush::paged_cache<float> pool(cfg);
  kvcrush::paged_sequence<float> seq(pool, pool.create());
  const kvcrush::layer_budget budget{16, 4, 4};
  const index_t slack = 8;
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.budgets = {budget};
  settings.slack = slack;
  settings.query_heads = s.query_heads;
  kvcrush::eviction_controller<kvcrush::paged_sequence<float>> controller(seq, settings);
  manual_h2o<float> manual(s, kvcrush::kv_layout::head_token_dim, policy, budget, slack, budget.budget + slack);
  kvcrush::workspace ws;
  for (int step = 0; step < 70; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      const step_data data(s, step, l, 3);
      controller.make_room(l, 1, ws);
      manual.make_room(l);
      append_row(seq, l, data.k.data(), data.v.data());
      append_row(manual.cache, l, data.k.data(), data.v.data());
      ASSERT_LE(seq.length(l), budget.budget + slack);
      const auto rows = rows_of(seq, l);
      ASSERT_TRUE(rows == rows_of(manual.cache, l)) << "step " << step;
      const auto probs = probabilities_over(rows, s, data.q.data());
      controller.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
      manual.observe(l, probs);
    }
  }
  EXPECT_GT(controller.selections(0), 5);
  pool.check_invariants();
}

namespace {

// Drives one controller with a window policy and returns the final rows;
// at every eviction of layer 0 also checks the keep set against select()
// over the saved attention rows, which the test compacts by hand after each
// eviction (so the controller's ring, turned and compacted many times, must
// hold exactly these rows in this order). With observe_every > 1 a step
// observes only now and then, so the ring turns by varying amounts.
template <class Cache>
std::vector<layer_rows> run_window_policy(Cache& cache, const kvcrush::policy_config& policy, index_t window,
                                          index_t slack = 4, int observe_every = 1) {
  const shape s;
  const kvcrush::layer_budget budget{20, 2, 6};
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.budgets = {budget};
  settings.slack = slack;
  settings.query_heads = s.query_heads;
  settings.window = window;
  kvcrush::eviction_controller<Cache> controller(cache, settings);
  kvcrush::workspace ws, ws_by_hand;
  std::deque<std::vector<float>> saved;  // the last `window` rows of layer 0
  int checked = 0;
  for (int step = 0; step < 60; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      const step_data data(s, step, l, 7);
      if (l == 0 && controller.needs_eviction(0, 1) && static_cast<index_t>(saved.size()) == window) {
        const index_t n = cache.length(0);
        std::vector<float> rows(static_cast<std::size_t>(s.query_heads * window * n), 0.0f);
        for (index_t w = 0; w < window; ++w) {
          const auto& r = saved[static_cast<std::size_t>(w)];
          const index_t width = static_cast<index_t>(r.size()) / s.query_heads;
          for (index_t q = 0; q < s.query_heads; ++q)  // zeros past the columns the row's query saw
            std::copy(r.begin() + q * width, r.begin() + (q + 1) * width, rows.begin() + (q * window + w) * n);
        }
        kvcrush::layer_inputs in;
        in.kv_heads = s.heads;
        in.tokens = n;
        in.window_attention = kvcrush::strided_view<const float, 3>(rows.data(), {s.query_heads, window, n});
        in.last_attention = kvcrush::matrix_view<const float>(rows.data() + (window - 1) * n, {s.query_heads, n},
                                                             {window * n, 1});
        const index_t keep_rows = policy.layout.per_head ? s.heads : 1;
        std::vector<index_t> keep(static_cast<std::size_t>(keep_rows * (n + 1))), counts(static_cast<std::size_t>(keep_rows));
        kvcrush::layer_budget target = budget;
        target.budget = std::min<index_t>(budget.budget, budget.budget + slack - 1);  // room for the new token
        kvcrush::select(policy, in, target,
                        {kvcrush::make_matrix_view(keep.data(), keep_rows, n + 1), kvcrush::make_vector_view(counts.data(), keep_rows)},
                        ws_by_hand);
        controller.make_room(0, 1, ws);
        const auto got = controller.last_keep(0);
        for (index_t r = 0; r < keep_rows; ++r) {
          EXPECT_EQ(got.count(r), counts[r]) << "eviction " << checked;
          for (index_t i = 0; i < counts[r]; ++i) EXPECT_EQ(got.at(r, i), keep[r * (n + 1) + i]) << "eviction " << checked;
        }
        // The saved rows follow the eviction: row r of the keep set for the
        // query heads of KV head r.
        for (auto& row : saved) {
          const index_t width = static_cast<index_t>(row.size()) / s.query_heads;
          std::vector<float> compacted(static_cast<std::size_t>(s.query_heads * got.count(0)), 0.0f);
          for (index_t q = 0; q < s.query_heads; ++q) {
            const index_t r = got.row_of_head(q / (s.query_heads / s.heads));
            for (index_t i = 0; i < got.count(r); ++i) {
              const index_t from = got.at(r, i);
              compacted[static_cast<std::size_t>(q * got.count(0) + i)] = from < width ? row[static_cast<std::size_t>(q * width + from)] : 0.0f;
            }
          }
          row = std::move(compacted);
        }
        ++checked;
      }
      controller.make_room(l, 1, ws);
      append_row(cache, l, data.k.data(), data.v.data());
      EXPECT_LE(cache.length(l), budget.budget + slack);
      const auto rows = rows_of(cache, l);
      if (step % observe_every != 0) continue;
      const auto probs = probabilities_over(rows, s, data.q.data());
      controller.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
      if (l == 0) {
        saved.push_back(probs);
        if (static_cast<index_t>(saved.size()) > window) saved.pop_front();
      }
    }
  }
  EXPECT_GE(checked, observe_every == 1 ? 35 / (slack + 1) : 3);
  std::vector<layer_rows> out;
  for (index_t l = 0; l < s.layers; ++l) out.push_back(rows_of(cache, l));
  return out;
}

}  // namespace

TEST(DecodeController, WindowAndTovaScoresAgreeAcrossCachesAndWithSelect) {
  const shape s;
  struct variant {
    const char* name;
    index_t window;
    bool per_head;
  };
  for (const variant& v : {variant{"snapkv+kvcrush", 6, false}, variant{"snapkv", 5, true}, variant{"tova", 1, false},
                           variant{"tova+kvcrush", 3, true}}) {
    SCOPED_TRACE(v.name);
    auto policy = kvcrush::policy_config::parse(v.name);
    policy.layout.per_head = v.per_head;
    policy.window.kernel = 3;
    if (policy.kvcrush) policy.crush.heads = kvcrush::signature_heads::query;
    kvcrush::contiguous_cache<float> contiguous(s.layers, s.heads, s.d, 24, kvcrush::kv_layout::token_head_dim);
    kvcrush::paged_cache_config cfg;
    cfg.layers = s.layers;
    cfg.kv_heads = s.heads;
    cfg.head_dim = s.d;
    cfg.block_size = 4;
    cfg.blocks = 8;
    kvcrush::paged_cache<float> pool(cfg);
    kvcrush::paged_sequence<float> seq(pool, pool.create());
    const auto a = run_window_policy(contiguous, policy, v.window);
    const auto b = run_window_policy(seq, policy, v.window);
    for (index_t l = 0; l < s.layers; ++l) EXPECT_TRUE(a[l] == b[l]) << "layer " << l;
  }
}

TEST(DecodeController, WindowRowsFollowEveryEvictionWhateverTheRhythm) {
  // The ring of attention rows is compacted and turned at each eviction so
  // that the next selection finds it in order; whether the guess of how many
  // rows come in between is right (an eviction per new row, slack 0) or
  // wrong (slack 3, rows observed every second or third step only), every
  // selection must see exactly the rows a fresh copy would give it.
  const shape s;
  for (const char* name : {"snapkv", "snapkv+kvcrush"})
    for (const bool per_head : {false, true})
      for (const index_t window : {1, 4, 6})
        for (const index_t slack : {0, 3})
          for (const int every : {1, 2, 3}) {
            SCOPED_TRACE(std::string(name) + (per_head ? " per head" : "") + " window " + std::to_string(window) +
                         " slack " + std::to_string(slack) + " every " + std::to_string(every));
            auto policy = kvcrush::policy_config::parse(name);
            policy.layout.per_head = per_head;
            policy.window.kernel = 3;
            kvcrush::contiguous_cache<float> cache(s.layers, s.heads, s.d, 24, kvcrush::kv_layout::head_token_dim);
            run_window_policy(cache, policy, window, slack, every);
          }
}

TEST(DecodeController, PrefillCompressionThenDecode) {
  const shape s;
  const index_t n = 40, window = 8;
  kvcrush::contiguous_cache<kvcrush::float16> cache(s.layers, s.heads, s.d, n + 1);
  kvcrush::contiguous_cache<kvcrush::float16> by_hand(s.layers, s.heads, s.d, n + 1);
  const auto k = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * n * s.d), 1);
  const auto v = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * n * s.d), 2);
  // Causal window attention of the last 8 prompt queries.
  auto attention = kvcrush_test::random_floats(static_cast<std::size_t>(s.query_heads * window * n), 3, 0.0f, 1.0f);
  for (index_t q = 0; q < s.query_heads; ++q)
    for (index_t w = 0; w < window; ++w)
      for (index_t t = n - window + w + 1; t < n; ++t) attention[(q * window + w) * n + t] = 0.0f;
  kvcrush::eviction_settings settings;
  settings.budgets = {kvcrush::layer_budget{16, 2, 4}};
  settings.slack = 4;
  settings.query_heads = s.query_heads;
  settings.max_tokens = n + 1;
  kvcrush::eviction_controller<kvcrush::contiguous_cache<kvcrush::float16>> controller(cache, settings);
  const auto snapkv = kvcrush::policy_config::parse("snapkv+kvcrush");
  const kvcrush::layer_budget prefill_budget{14, 2, window};
  kvcrush::workspace ws;
  for (index_t l = 0; l < s.layers; ++l) {
    const auto kv = kvcrush::make_head_token_dim(k.data(), s.heads, n, s.d);
    const auto vv = kvcrush::make_head_token_dim(v.data(), s.heads, n, s.d);
    cache.append(l, kv, vv);
    by_hand.append(l, kv, vv);
    kvcrush::layer_inputs in;
    in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {s.query_heads, window, n});
    controller.compress(l, snapkv, in, prefill_budget, ws);
    // By hand: select, then compact.
    in.kv_heads = s.heads;
    in.tokens = n;
    std::vector<index_t> keep(static_cast<std::size_t>(n)), count(1);
    kvcrush::select(snapkv, in, prefill_budget,
                    {kvcrush::make_matrix_view(keep.data(), 1, n), kvcrush::make_vector_view(count.data(), 1)}, ws);
    by_hand.evict_tokens(l, kvcrush::keep_view::shared(keep.data(), count[0]));
    ASSERT_EQ(cache.length(l), 14);
    EXPECT_TRUE(rows_of(cache, l) == rows_of(by_hand, l));
    EXPECT_EQ(controller.h2o(l)->length(0), 14) << "the decode scores follow the prefill eviction";
  }
  // Decode with H2O from there: the kept prompt tokens start at score 0.
  for (int step = 0; step < 30; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      const step_data data(s, step, l);
      controller.make_room(l, 1, ws);
      append_row(cache, l, data.k.data(), data.v.data());
      ASSERT_LE(cache.length(l), 20);
      const auto rows = rows_of(cache, l);
      const auto probs = probabilities_over(rows, s, data.q.data());
      controller.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
    }
  }
  EXPECT_EQ(controller.selections(0), 1 + (30 - 1 - (20 - 14)) / 4 + 1);
}

TEST(DecodeController, RefusesWhatItCannotFollow) {
  const shape s;
  kvcrush::contiguous_cache<float> cache(s.layers, s.heads, s.d, 64);
  using controller = kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>;
  auto settings = [] {
    kvcrush::eviction_settings st;
    st.budgets = {kvcrush::layer_budget{16, 2, 4}};
    st.slack = 4;
    st.query_heads = 4;
    return st;
  };
  auto ada = settings();
  ada.policy = kvcrush::policy_config::parse("h2o+adakv");
  EXPECT_THROW(controller(cache, ada), std::invalid_argument);
  auto low = settings();
  low.budgets = {kvcrush::layer_budget{4, 2, 4}};
  EXPECT_THROW(controller(cache, low), std::invalid_argument);
  auto three = settings();
  three.budgets.resize(3, kvcrush::layer_budget{16, 2, 4});
  EXPECT_THROW(controller(cache, three), std::invalid_argument);
  auto block_per_head = settings();
  block_per_head.policy.layout = {true, 4};
  block_per_head.budgets = {kvcrush::layer_budget{16, 4, 4}};
  block_per_head.slack = 8;
  EXPECT_THROW(controller(cache, block_per_head), std::invalid_argument);
  auto small_slack = settings();
  small_slack.policy.layout.block_size = 4;
  small_slack.budgets = {kvcrush::layer_budget{16, 4, 4}};
  small_slack.slack = 3;
  EXPECT_THROW(controller(cache, small_slack), std::invalid_argument);
  auto odd_heads = settings();
  odd_heads.query_heads = 3;
  EXPECT_THROW(controller(cache, odd_heads), std::invalid_argument);

  controller c(cache, settings());
  kvcrush::workspace ws;
  std::vector<float> rows(static_cast<std::size_t>(s.heads * 21 * s.d), 0.5f);
  cache.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 20, s.d),
               kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 20, s.d));
  EXPECT_THROW(c.make_room(0, 15, ws), std::invalid_argument) << "no room for 15 new tokens above sink + recent";
  EXPECT_EQ(cache.length(0), 20);
  std::vector<float> probs(static_cast<std::size_t>(4 * 21), 0.01f);
  EXPECT_THROW(c.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), 2, 20)), std::invalid_argument);
  EXPECT_THROW(c.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), 4, 21)), std::invalid_argument)
      << "attention over more tokens than cached";
  EXPECT_THROW(c.make_room(2, 1, ws), std::invalid_argument);
  auto ada_policy = kvcrush::policy_config::parse("snapkv+adakv");
  EXPECT_THROW(c.compress(0, ada_policy, {}, kvcrush::layer_budget{16, 2, 4}, ws), std::invalid_argument);
  EXPECT_EQ(cache.length(0), 20);
  EXPECT_TRUE(c.make_room(0, 1, ws));
  EXPECT_EQ(cache.length(0), 16);
}

TEST(DecodeController, DrivesAnEnginesOwnBuffers) {
  const shape s;
  const index_t capacity = 30;
  // The engine's storage: per layer K, V ([head][capacity][dim]), a length
  // and per-head positions.
  std::vector<std::vector<float>> keys(2, std::vector<float>(static_cast<std::size_t>(s.heads * capacity * s.d)));
  auto values = keys;
  std::vector<std::vector<index_t>> positions(2, std::vector<index_t>(static_cast<std::size_t>(s.heads * capacity)));
  index_t lengths[2] = {0, 0};
  kvcrush::contiguous_cache_ref<float> ref(s.layers, s.heads);
  for (index_t l = 0; l < s.layers; ++l) {
    ref.bind(l, {kvcrush::make_head_token_dim(keys[l].data(), s.heads, capacity, s.d),
                 kvcrush::make_head_token_dim(values[l].data(), s.heads, capacity, s.d), &lengths[l],
                 kvcrush::make_matrix_view(positions[l].data(), s.heads, capacity)});
  }
  kvcrush::contiguous_cache<float> owned(s.layers, s.heads, s.d, capacity);
  kvcrush::eviction_settings settings;
  settings.policy = h2o_policy(true, true);
  settings.budgets = {kvcrush::layer_budget{20, 2, 4}};
  settings.slack = 6;
  settings.query_heads = s.query_heads;
  kvcrush::eviction_controller<kvcrush::contiguous_cache_ref<float>> a(ref, settings);
  kvcrush::eviction_controller<kvcrush::contiguous_cache<float>> b(owned, settings);
  kvcrush::workspace ws;
  for (int step = 0; step < 60; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      const step_data data(s, step, l);
      a.make_room(l, 1, ws);
      b.make_room(l, 1, ws);
      // The engine appends itself.
      const index_t n = lengths[l];
      for (index_t h = 0; h < s.heads; ++h) {
        std::copy(data.k.begin() + h * s.d, data.k.begin() + (h + 1) * s.d, keys[l].begin() + (h * capacity + n) * s.d);
        std::copy(data.v.begin() + h * s.d, data.v.begin() + (h + 1) * s.d, values[l].begin() + (h * capacity + n) * s.d);
        positions[l][h * capacity + n] = step;
      }
      lengths[l] = n + 1;
      append_row(owned, l, data.k.data(), data.v.data());
      const auto rows = rows_of(owned, l);
      ASSERT_EQ(rows.n, lengths[l]);
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t t = 0; t < rows.n; ++t) {
          ASSERT_EQ(positions[l][h * capacity + t], rows.positions[h * rows.n + t]);
          for (index_t j = 0; j < s.d; ++j) ASSERT_EQ(keys[l][(h * capacity + t) * s.d + j], rows.keys[(h * rows.n + t) * s.d + j]);
        }
      const auto probs = probabilities_over(rows, s, data.q.data());
      a.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
      b.observe(l, kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n));
    }
  }
  EXPECT_EQ(a.selections(0), b.selections(0));
  EXPECT_GT(a.selections(0), 3);
  index_t unbound_length = 0;
  kvcrush::contiguous_cache_ref<float> bad(1, s.heads);
  EXPECT_THROW((void)bad.length(0), std::invalid_argument);
  EXPECT_THROW(bad.bind(0, {kvcrush::make_head_token_dim(keys[0].data(), s.heads + 1, 2, s.d),
                            kvcrush::make_head_token_dim(values[0].data(), s.heads + 1, 2, s.d), &unbound_length, {}}),
               std::invalid_argument);
}

// ---- batches ----------------------------------------------------------------

namespace {

// Runs `sequences` paged sequences of different prompt lengths through
// decode steps with make_room_all on the given executor; returns every
// sequence's rows per layer.
std::vector<layer_rows> run_batch(kvcrush::executor& ex, bool paged) {
  const shape s;
  const index_t sequences = 5;
  kvcrush::paged_cache_config cfg;
  cfg.layers = s.layers;
  cfg.kv_heads = s.heads;
  cfg.head_dim = s.d;
  cfg.block_size = 4;
  cfg.blocks = sequences * 11;
  cfg.max_sequences = sequences;
  kvcrush::paged_cache<kvcrush::float16> pool(cfg);
  std::vector<kvcrush::paged_sequence<kvcrush::float16>> paged_seqs;
  std::vector<std::unique_ptr<kvcrush::contiguous_cache<kvcrush::float16>>> dense;
  using paged_ctl = kvcrush::eviction_controller<kvcrush::paged_sequence<kvcrush::float16>>;
  using dense_ctl = kvcrush::eviction_controller<kvcrush::contiguous_cache<kvcrush::float16>>;
  std::vector<std::unique_ptr<paged_ctl>> paged_ctls;
  std::vector<std::unique_ptr<dense_ctl>> dense_ctls;
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o+kvcrush");
  settings.policy.layout.per_head = true;
  settings.budgets = {kvcrush::layer_budget{20, 2, 4}, kvcrush::layer_budget{12, 2, 2}};
  settings.slack = 6;
  settings.query_heads = s.query_heads;
  settings.max_tokens = 40;
  for (index_t i = 0; i < sequences; ++i) {
    if (paged) {
      paged_seqs.emplace_back(pool, pool.create());
    } else {
      dense.push_back(std::make_unique<kvcrush::contiguous_cache<kvcrush::float16>>(s.layers, s.heads, s.d, 40));
    }
  }
  for (index_t i = 0; i < sequences; ++i) {
    if (paged) {
      paged_ctls.push_back(std::make_unique<paged_ctl>(paged_seqs[static_cast<std::size_t>(i)], settings));
    } else {
      dense_ctls.push_back(std::make_unique<dense_ctl>(*dense[static_cast<std::size_t>(i)], settings));
    }
  }
  auto rows_of_seq = [&](index_t i, index_t l) {
    return paged ? rows_of(paged_seqs[static_cast<std::size_t>(i)], l) : rows_of(*dense[static_cast<std::size_t>(i)], l);
  };
  // Prompts of 5 .. 33 tokens.
  for (index_t i = 0; i < sequences; ++i) {
    for (index_t l = 0; l < s.layers; ++l) {
      const index_t n = 5 + 7 * i;
      const auto k = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * n * s.d), static_cast<std::uint32_t>(i * 10 + l));
      const auto kv = kvcrush::make_head_token_dim(k.data(), s.heads, n, s.d);
      if (paged) {
        pool.append(paged_seqs[static_cast<std::size_t>(i)].id(), l, kv, kv);
      } else {
        dense[static_cast<std::size_t>(i)]->append(l, kv, kv);
      }
    }
  }
  kvcrush::worker_workspaces spaces(ex);
  std::vector<paged_ctl*> pc;
  std::vector<dense_ctl*> dc;
  for (auto& c : paged_ctls) pc.push_back(c.get());
  for (auto& c : dense_ctls) dc.push_back(c.get());
  for (int step = 0; step < 30; ++step) {
    // Expected evictions, counted from the cache lengths before the call:
    // one per (sequence, layer) whose next token would exceed budget + slack.
    index_t expected_evictions = 0;
    for (index_t i = 0; i < sequences; ++i)
      for (index_t l = 0; l < s.layers; ++l)
        expected_evictions += rows_of_seq(i, l).n + 1 > settings.budgets[static_cast<std::size_t>(l)].budget + settings.slack;
    const index_t evictions = paged ? kvcrush::make_room_all(pc.data(), sequences, 1, ex, spaces)
                                    : kvcrush::make_room_all(dc.data(), sequences, 1, ex, spaces);
    EXPECT_EQ(evictions, expected_evictions) << "step " << step;
    if (step == 0) {
      EXPECT_GT(expected_evictions, 0) << "the longest prompts are over their limit at once";
    }
    for (index_t i = 0; i < sequences; ++i) {
      for (index_t l = 0; l < s.layers; ++l) {
        const step_data data(s, step, l, static_cast<std::uint32_t>(i + 1));
        if (paged) {
          append_row(paged_seqs[static_cast<std::size_t>(i)], l, data.k.data(), data.v.data());
        } else {
          append_row(*dense[static_cast<std::size_t>(i)], l, data.k.data(), data.v.data());
        }
        const auto rows = rows_of_seq(i, l);
        EXPECT_LE(rows.n, settings.budgets[static_cast<std::size_t>(l)].budget + settings.slack);
        const auto probs = probabilities_over(rows, s, data.q.data());
        const auto view = kvcrush::make_matrix_view(probs.data(), s.query_heads, rows.n);
        if (paged) {
          paged_ctls[static_cast<std::size_t>(i)]->observe(l, view);
        } else {
          dense_ctls[static_cast<std::size_t>(i)]->observe(l, view);
        }
      }
    }
  }
  if (paged) pool.check_invariants();
  std::vector<layer_rows> out;
  for (index_t i = 0; i < sequences; ++i)
    for (index_t l = 0; l < s.layers; ++l) out.push_back(rows_of_seq(i, l));
  return out;
}

}  // namespace

TEST(Batch, ThreadExecutorMatchesSerialRun) {
  kvcrush::serial_executor serial;
  kvcrush::thread_executor threads(3);
  EXPECT_EQ(threads.workers(), 3);
  for (bool paged : {true, false}) {
    const auto expected = run_batch(serial, paged);
    const auto got = run_batch(threads, paged);
    ASSERT_EQ(expected.size(), got.size());
    for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_TRUE(expected[i] == got[i]) << "paged " << paged << " #" << i;
  }
}

TEST(Batch, ExecutorRunsEveryTaskOnceAndRethrows) {
  kvcrush::thread_executor ex(4);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::atomic<int>> hits(97);
    std::atomic<int> bad_worker{0};
    kvcrush::parallel_for(ex, 97, [&](index_t i, index_t w) {
      hits[static_cast<std::size_t>(i)].fetch_add(1);
      if (w < 0 || w >= 4) bad_worker.fetch_add(1);
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    ASSERT_EQ(bad_worker.load(), 0);
  }
  EXPECT_THROW(kvcrush::parallel_for(ex, 50,
                                     [&](index_t i) {
                                       if (i == 17) throw std::invalid_argument("kvcrush: task 17");
                                     }),
               std::invalid_argument);
  int after = 0;
  kvcrush::parallel_for(ex, 1, [&](index_t) { ++after; });
  EXPECT_EQ(after, 1) << "the pool still works after a failed batch";
}

TEST(Batch, PagedForksEvictConcurrently) {
  // Children of one parent share its blocks and evict, append and copy on
  // write at the same time on different threads; the parent must not change
  // and the pool must stay consistent.
  const index_t heads = 2, d = 4, b = 4, children = 6;
  kvcrush::paged_cache_config cfg;
  cfg.layers = 2;
  cfg.kv_heads = heads;
  cfg.head_dim = d;
  cfg.block_size = b;
  cfg.blocks = 120;
  cfg.max_sequences = children + 1;
  kvcrush::paged_cache<float> pool(cfg);
  const auto parent = pool.create();
  auto encoded_rows = [&](int origin, index_t first, index_t n, int salt) {
    std::vector<float> rows(static_cast<std::size_t>(heads * n * d));
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < n; ++t)
        for (index_t j = 0; j < d; ++j) rows[(h * n + t) * d + j] = cache_test::encode(origin, first + t, h, j, salt);
    return rows;
  };
  for (index_t l = 0; l < 2; ++l) {
    const auto k = encoded_rows(0, 0, 30, 0), v = encoded_rows(0, 0, 30, 1);
    pool.append(parent, l, kvcrush::make_head_token_dim(k.data(), heads, 30, d), kvcrush::make_head_token_dim(v.data(), heads, 30, d));
  }
  std::vector<kvcrush::sequence_id> ids;
  for (index_t c = 0; c < children; ++c) ids.push_back(pool.fork(parent));
  // Per child and layer: the (origin, position) of each token, shared by the heads.
  std::vector<std::vector<std::vector<std::pair<int, index_t>>>> model(
      static_cast<std::size_t>(children), std::vector<std::vector<std::pair<int, index_t>>>(2));
  for (auto& m : model)
    for (auto& layer : m)
      for (index_t t = 0; t < 30; ++t) layer.push_back({0, t});
  kvcrush::thread_executor ex(3);
  kvcrush::parallel_for(ex, children * 2, [&](index_t task) {
    const index_t c = task / 2, l = task % 2;
    auto& tokens = model[static_cast<std::size_t>(c)][static_cast<std::size_t>(l)];
    std::mt19937 rng(static_cast<std::uint32_t>(task + 1));
    for (int round = 0; round < 25; ++round) {
      const index_t n = static_cast<index_t>(tokens.size());
      const auto keep = cache_test::random_subset(n, n / 2 + 1, rng);
      pool.evict_tokens(ids[static_cast<std::size_t>(c)], l, kvcrush::keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
      std::vector<std::pair<int, index_t>> kept;
      for (index_t i : keep) kept.push_back(tokens[static_cast<std::size_t>(i)]);
      tokens = kept;
      const index_t first = pool.appended(ids[static_cast<std::size_t>(c)], l);
      const index_t add = 1 + round % 5;
      const auto k = encoded_rows(static_cast<int>(c + 1), first, add, 0), v = encoded_rows(static_cast<int>(c + 1), first, add, 1);
      pool.append(ids[static_cast<std::size_t>(c)], l, kvcrush::make_head_token_dim(k.data(), heads, add, d),
                  kvcrush::make_head_token_dim(v.data(), heads, add, d));
      for (index_t t = 0; t < add; ++t) tokens.push_back({static_cast<int>(c + 1), first + t});
    }
  });
  pool.check_invariants();
  auto check = [&](kvcrush::sequence_id id, index_t l, const std::vector<std::pair<int, index_t>>& tokens) {
    const index_t n = pool.length(id, l);
    ASSERT_EQ(n, static_cast<index_t>(tokens.size()));
    std::vector<float> k(static_cast<std::size_t>(heads * n * d)), v(k.size());
    std::vector<index_t> positions(static_cast<std::size_t>(heads * n));
    pool.gather(id, l, kvcrush::make_head_token_dim(k.data(), heads, n, d), kvcrush::make_head_token_dim(v.data(), heads, n, d),
                kvcrush::make_matrix_view(positions.data(), heads, n));
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < n; ++t) {
        ASSERT_EQ(positions[h * n + t], tokens[t].second);
        for (index_t j = 0; j < d; ++j) {
          ASSERT_EQ(k[(h * n + t) * d + j], cache_test::encode(tokens[t].first, tokens[t].second, h, j, 0));
          ASSERT_EQ(v[(h * n + t) * d + j], cache_test::encode(tokens[t].first, tokens[t].second, h, j, 1));
        }
      }
  };
  std::vector<std::pair<int, index_t>> original;
  for (index_t t = 0; t < 30; ++t) original.push_back({0, t});
  for (index_t l = 0; l < 2; ++l) {
    check(parent, l, original);
    for (index_t c = 0; c < children; ++c) check(ids[static_cast<std::size_t>(c)], l, model[static_cast<std::size_t>(c)][static_cast<std::size_t>(l)]);
  }
  for (const auto& id : ids) pool.release(id);
  pool.release(parent);
  EXPECT_EQ(pool.free_blocks(0), 120);
  EXPECT_EQ(pool.free_blocks(1), 120);
}

TEST(DecodeController, SetBudgetHoldsTheLayerToTheNewBudget) {
  // set_budget changes one layer's budget from the next make_room on: that
  // layer is cut to the new budget (keeping what select() keeps at that
  // budget), the other layer keeps its own.
  const index_t heads = 2, d = 4, n = 45;
  kvcrush::contiguous_cache<float> cache(2, heads, d, 64);
  const auto k = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n * d), 77);
  for (index_t l = 0; l < 2; ++l)
    cache.append(l, kvcrush::make_head_token_dim<const float>(k.data(), heads, n, d),
                 kvcrush::make_head_token_dim<const float>(k.data(), heads, n, d));
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o");
  settings.budgets = {kvcrush::layer_budget{40, 2, 4}};
  settings.slack = 8;
  settings.max_tokens = 64;
  kvcrush::eviction_controller<kvcrush::contiguous_cache<float>> controller(cache, settings);
  kvcrush::workspace ws;
  EXPECT_FALSE(controller.make_room(0, 1, ws)) << "45 + 1 <= 40 + 8";
  controller.set_budget(0, kvcrush::layer_budget{20, 2, 4});
  EXPECT_EQ(controller.budget(0).budget, 20);
  EXPECT_EQ(controller.limit(0), 28);
  EXPECT_EQ(controller.limit(1), 48);
  EXPECT_TRUE(controller.make_room(0, 1, ws));
  EXPECT_FALSE(controller.make_room(1, 1, ws));
  EXPECT_EQ(cache.length(0), 20);
  EXPECT_EQ(cache.length(1), n);
  // No attention observed: every H2O score is 0, so the ties go to the
  // earliest positions (SPEC 2): sink [0, 2), then [2, 16), and the recent
  // four.
  std::vector<index_t> expected;
  for (index_t t = 0; t < 16; ++t) expected.push_back(t);
  for (index_t t = n - 4; t < n; ++t) expected.push_back(t);
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < 20; ++i) EXPECT_EQ(cache.positions(0)(h, i), expected[static_cast<std::size_t>(i)]) << h;
  // Refused before anything changes: below sink + recent, or above the
  // controller's capacity.
  EXPECT_THROW(controller.set_budget(0, kvcrush::layer_budget{5, 2, 4}), std::invalid_argument);
  EXPECT_THROW(controller.set_budget(0, kvcrush::layer_budget{60, 2, 4}), std::invalid_argument);
  EXPECT_EQ(controller.budget(0).budget, 20);
}
