// Decode-time AdaKV in one eviction_controller over a per_head_cache: the
// same kept positions, token for token, as one single-head controller per
// KV head with the head-wise allocation done by hand (what the examples did
// before), for every base policy, both allocation moments and with slack;
// heads really end up with different lengths; per_head_cache's own checks;
// and the refusals, each before anything changes.
#include <gtest/gtest.h>

#include <deque>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/per_head_cache.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/scores/window_attention.hpp"

using kvcrush::index_t;

namespace {

struct adakv_shape {
  index_t layers = 2, heads = 4, query_heads = 8, d = 4, capacity = 96, window = 4;
  kvcrush::layer_budget budget{14, 2, 3};
};

// The reference: one single-head cache and one controller per KV head, the
// layer's budget shared out by hand from the last `window` attention rows.
struct per_head_reference {
  using controller = kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>;

  per_head_reference(const adakv_shape& s, const kvcrush::policy_config& policy, index_t slack) : s_(s), policy_(policy) {
    head_policy_ = policy;
    head_policy_.adakv = false;
    head_policy_.layout.per_head = false;
    kvcrush::eviction_settings settings;
    settings.policy = head_policy_;
    settings.budgets = {s.budget};
    settings.slack = slack;
    settings.query_heads = s.query_heads / s.heads;
    settings.window = s.window;
    settings.max_tokens = s.capacity;
    for (index_t h = 0; h < s.heads; ++h) {
      caches.push_back(std::make_unique<kvcrush::contiguous_cache<float>>(s.layers, 1, s.d, s.capacity));
      controllers.push_back(std::make_unique<controller>(*caches.back(), settings));
    }
    rows_.resize(static_cast<std::size_t>(s.layers));
    shared_.assign(static_cast<std::size_t>(s.layers), false);
    limit_ = s.budget.budget + slack;
  }

  void append(index_t layer, const std::vector<float>& k, const std::vector<float>& v) {
    for (index_t h = 0; h < s_.heads; ++h) {
      caches[static_cast<std::size_t>(h)]->append(layer, kvcrush::make_head_token_dim<const float>(k.data() + h * s_.d, 1, 1, s_.d),
                                                  kvcrush::make_head_token_dim<const float>(v.data() + h * s_.d, 1, 1, s_.d));
    }
  }

  // probs: (Hq, width), width = the longest head.
  void observe(index_t layer, const std::vector<float>& probs, index_t width) {
    const index_t group = s_.query_heads / s_.heads;
    for (index_t h = 0; h < s_.heads; ++h) {
      const index_t n = caches[static_cast<std::size_t>(h)]->length(layer);
      controllers[static_cast<std::size_t>(h)]->observe(
          layer, kvcrush::matrix_view<const float>(probs.data() + h * group * width, {group, n}, {width, 1}));
    }
    auto& rows = rows_[static_cast<std::size_t>(layer)];
    rows.emplace_back(probs.begin(), probs.end());
    if (static_cast<index_t>(rows.size()) > s_.window) rows.pop_front();
  }

  void share_out(index_t layer, const kvcrush::layer_budget& b, kvcrush::workspace& ws) {
    const index_t n = caches[0]->length(layer), w = s_.window, hq = s_.query_heads;
    const auto& rows = rows_[static_cast<std::size_t>(layer)];
    std::vector<float> window(static_cast<std::size_t>(hq * w * n), 0.0f), scores(static_cast<std::size_t>(s_.heads * n));
    for (index_t r = 0; r < w; ++r) {
      const auto& row = rows[static_cast<std::size_t>(r)];
      const index_t width = static_cast<index_t>(row.size()) / hq;
      for (index_t q = 0; q < hq; ++q)
        for (index_t t = 0; t < std::min(width, n); ++t)
          window[static_cast<std::size_t>((q * w + r) * n + t)] = row[static_cast<std::size_t>(q * width + t)];
    }
    kvcrush::window_scores(kvcrush::strided_view<const float, 3>(window.data(), {hq, w, n}), policy_.window,
                           kvcrush::make_matrix_view(scores.data(), s_.heads, n), ws);
    std::vector<index_t> rest(static_cast<std::size_t>(s_.heads));
    kvcrush::allocate_head_budgets(kvcrush::make_matrix_view<const float>(scores.data(), s_.heads, n), b.sink,
                                   n - b.recent, b.budget - b.sink - b.recent, policy_.adakv_alpha,
                                   kvcrush::make_vector_view(rest.data(), s_.heads), ws);
    for (index_t h = 0; h < s_.heads; ++h) {
      const kvcrush::layer_budget share{b.sink + b.recent + rest[static_cast<std::size_t>(h)], b.sink, b.recent};
      controllers[static_cast<std::size_t>(h)]->compress(layer, head_policy_, {}, share, ws);
      controllers[static_cast<std::size_t>(h)]->set_budget(layer, share);
    }
    shared_[static_cast<std::size_t>(layer)] = true;
  }

  // What kvcrush-llama did before a token: share out when the layer first
  // fills, then every head makes room on its own.
  void make_room(index_t layer, bool share_when_full, kvcrush::workspace& ws) {
    if (share_when_full && !shared_[static_cast<std::size_t>(layer)] && caches[0]->length(layer) + 1 > limit_) {
      share_out(layer, s_.budget, ws);
    }
    for (auto& c : controllers) c->make_room(layer, 1, ws);
  }

  // What kvcrush-eval did after the prefill.
  void compress(index_t layer, kvcrush::workspace& ws) {
    if (caches[0]->length(layer) <= s_.budget.budget) return;
    share_out(layer, s_.budget, ws);
  }

  std::vector<std::unique_ptr<kvcrush::contiguous_cache<float>>> caches;
  std::vector<std::unique_ptr<controller>> controllers;

 private:
  adakv_shape s_;
  kvcrush::policy_config policy_, head_policy_;
  std::vector<std::deque<std::vector<float>>> rows_;
  std::vector<bool> shared_;
  index_t limit_ = 0;
};

std::vector<index_t> positions_of(const kvcrush::matrix_view<const index_t>& p) {
  std::vector<index_t> out;
  for (index_t t = 0; t < p.extent(1); ++t) out.push_back(p(0, t));
  return out;
}

// Runs `steps` tokens through both; prefill > 0 compresses after that many
// tokens (kvcrush-eval), else the layer's budget is shared out when it first
// fills (kvcrush-llama). Returns whether heads ever held different lengths.
bool run_both(const char* name, kvcrush::adakv_allocation allocation, index_t slack, index_t prefill, index_t steps,
              std::uint32_t seed) {
  const adakv_shape s;
  const auto policy = kvcrush::policy_config::parse(name);
  kvcrush::per_head_cache<float> cache(s.layers, s.heads, s.d, s.capacity);
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.budgets = {s.budget};
  settings.slack = slack;
  settings.query_heads = s.query_heads;
  settings.window = s.window;
  settings.max_tokens = s.capacity;
  settings.allocation = allocation;
  kvcrush::eviction_controller<kvcrush::per_head_cache<float>> controller(cache, settings);
  EXPECT_TRUE(controller.head_wise());
  per_head_reference reference(s, policy, slack);
  kvcrush::workspace ws, ws_ref;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f), signed_unit(-1.0f, 1.0f);
  bool ragged = false;
  for (index_t step = 0; step < steps; ++step) {
    for (index_t l = 0; l < s.layers; ++l) {
      if (step >= prefill || prefill == 0) {
        controller.make_room(l, 1, ws);
        reference.make_room(l, prefill == 0, ws_ref);
      }
      std::vector<float> k(static_cast<std::size_t>(s.heads * s.d)), v(k.size());
      for (auto& x : k) x = signed_unit(rng);
      for (auto& x : v) x = signed_unit(rng);
      cache.append(l, kvcrush::make_head_token_dim<const float>(k.data(), s.heads, 1, s.d),
                   kvcrush::make_head_token_dim<const float>(v.data(), s.heads, 1, s.d));
      reference.append(l, k, v);
      index_t width = 0;
      for (index_t h = 0; h < s.heads; ++h) width = std::max(width, cache.length(l, h));
      std::vector<float> probs(static_cast<std::size_t>(s.query_heads * width));
      for (auto& x : probs) x = unit(rng);
      controller.observe(l, kvcrush::make_matrix_view<const float>(probs.data(), s.query_heads, width));
      reference.observe(l, probs, width);
      if (step + 1 == prefill) {
        controller.compress(l, policy, {}, s.budget, ws);
        reference.compress(l, ws_ref);
      }
      bool same = true;
      for (index_t h = 0; h < s.heads; ++h) {
        const auto& ref = *reference.caches[static_cast<std::size_t>(h)];
        const auto kept = positions_of(cache.positions(l, h));
        const auto expected = positions_of(ref.positions(l));
        same &= kept == expected;
        EXPECT_EQ(kept, expected) << name << " slack " << slack << " step " << step << " layer " << l << " head " << h;
        const index_t budget = controller.head_budget(l, h).budget;
        same &= budget == reference.controllers[static_cast<std::size_t>(h)]->budget(l).budget;
        EXPECT_EQ(budget, reference.controllers[static_cast<std::size_t>(h)]->budget(l).budget);
        if (prefill == 0 || step + 1 >= prefill) {
          EXPECT_LE(cache.length(l, h), budget + slack);
        }
        if (cache.length(l, h) != cache.length(l, 0)) ragged = true;
      }
      if (!same) return ragged;
    }
  }
  index_t selections = 0;
  for (const auto& c : reference.controllers) selections += c->selections(0);
  EXPECT_EQ(controller.selections(0), selections) << name;
  return ragged;
}

}  // namespace

TEST(DecodeAdaKV, OneControllerKeepsWhatOneControllerPerHeadKeeps) {
  std::uint32_t seed = 1;
  for (const char* name : {"snapkv+adakv", "h2o+adakv", "h2o+adakv+kvcrush", "tova+adakv", "knorm+adakv",
                           "snapkv+adakv+kvcrush", "pyramidkv+adakv", "random+adakv"}) {
    for (index_t slack : {0, 3}) {
      // Shared out when the layer first fills: with slack 0 it then holds
      // exactly the budget, every head keeps all of its candidates and the
      // shares are equal; with slack they differ.
      EXPECT_EQ(run_both(name, kvcrush::adakv_allocation::first_eviction, slack, 0, 40, seed++), slack > 0)
          << name << " slack " << slack << ": whether heads held different lengths";
      EXPECT_TRUE(run_both(name, kvcrush::adakv_allocation::compress_only, slack, 24, 40, seed++))
          << name << " slack " << slack << ": heads never held different lengths";
      if (HasFailure()) return;
    }
  }
}

TEST(DecodeAdaKV, CompressOnlyLeavesALayerWithinBudgetUniform) {
  // A prompt within the budget is not shared out; heads then keep to the
  // layer's budget each, with the base policy, as the per-head controllers do.
  EXPECT_FALSE(run_both("snapkv+adakv", kvcrush::adakv_allocation::compress_only, 0, 10, 30, 99));
}

TEST(DecodeAdaKV, PerHeadCacheHoldsRaggedHeadsAndChecksFirst) {
  kvcrush::per_head_cache<float> cache(1, 2, 2, 8);
  std::vector<float> rows(2 * 5 * 2);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i);
  cache.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), 2, 5, 2),
               kvcrush::make_head_token_dim<const float>(rows.data(), 2, 5, 2));
  EXPECT_EQ(cache.length(0), 5);
  const std::vector<index_t> keep = {0, 2, 4, 1, 3, 0};
  const std::vector<index_t> counts = {3, 2};
  cache.evict_tokens(0, kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(keep.data(), 2, 3),
                                                   kvcrush::make_vector_view<const index_t>(counts.data(), 2)));
  EXPECT_EQ(cache.length(0, 0), 3);
  EXPECT_EQ(cache.length(0, 1), 2);
  EXPECT_EQ(positions_of(cache.positions(0, 0)), (std::vector<index_t>{0, 2, 4}));
  EXPECT_EQ(positions_of(cache.positions(0, 1)), (std::vector<index_t>{1, 3}));
  EXPECT_EQ(cache.keys(0, 1)(0, 1, 0), 16.0f) << "head 1, position 3: element (1 * 5 + 3) * 2";
  EXPECT_THROW(cache.length(0), std::invalid_argument) << "heads differ";
  // Head 1 holds 2 tokens: a keep set reaching token 2 is refused for all.
  const std::vector<index_t> bad = {0, 1, 0, 2};
  EXPECT_THROW(cache.evict_tokens(0, kvcrush::keep_view(kvcrush::make_matrix_view<const index_t>(bad.data(), 2, 2))),
               std::invalid_argument);
  EXPECT_EQ(cache.length(0, 0), 3);
  EXPECT_EQ(cache.length(0, 1), 2);
  // Appending beyond one head's capacity is refused for every head.
  std::vector<float> six(2 * 6 * 2, 1.0f);
  EXPECT_THROW(cache.append(0, kvcrush::make_head_token_dim<const float>(six.data(), 2, 6, 2),
                            kvcrush::make_head_token_dim<const float>(six.data(), 2, 6, 2)),
               std::invalid_argument);
  EXPECT_EQ(cache.length(0, 1), 2);
  EXPECT_THROW(cache.head(2), std::invalid_argument);
}

TEST(DecodeAdaKV, RefusesWhatItCannotFollowBeforeChangingAnything) {
  const adakv_shape s;
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("snapkv+adakv");
  settings.budgets = {s.budget};
  settings.slack = 2;
  settings.query_heads = s.query_heads;
  settings.window = s.window;
  kvcrush::contiguous_cache<float> uniform(s.layers, s.heads, s.d, s.capacity);
  EXPECT_THROW(kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>(uniform, settings), std::invalid_argument)
      << "a cache whose heads share one length";
  kvcrush::per_head_cache<float> cache(s.layers, s.heads, s.d, s.capacity);
  using controller_type = kvcrush::eviction_controller<kvcrush::per_head_cache<float>>;
  auto blocks = settings;
  blocks.policy.layout.block_size = 2;
  EXPECT_THROW(controller_type(cache, blocks), std::invalid_argument);

  controller_type controller(cache, settings);
  EXPECT_EQ(controller.max_tokens(), s.budget.budget + 2 * settings.slack);
  kvcrush::workspace ws;
  std::vector<float> rows(static_cast<std::size_t>(s.heads * 16 * s.d), 0.25f);
  cache.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d),
               kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d));
  EXPECT_THROW(controller.make_room(0, 1, ws), std::invalid_argument) << "no attention rows to share out by";
  EXPECT_EQ(cache.length(0), 16);
  EXPECT_FALSE(controller.shared_out(0));
  std::vector<float> probs(static_cast<std::size_t>(s.query_heads * 16), 0.0625f);
  EXPECT_THROW(controller.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), 4, 16)), std::invalid_argument);
  std::vector<float> wide(static_cast<std::size_t>(s.query_heads * 17), 0.0625f);
  EXPECT_THROW(controller.observe(0, kvcrush::make_matrix_view<const float>(wide.data(), 8, 17)), std::invalid_argument)
      << "attention over more tokens than the longest head holds";
  EXPECT_THROW(controller.plan(0, 1, ws), std::invalid_argument);
  std::vector<index_t> keep(16), count(1);
  EXPECT_THROW(controller.choose(0, kvcrush::policy_config::parse("snapkv"), s.budget,
                                 {kvcrush::make_matrix_view(keep.data(), 1, 16), kvcrush::make_vector_view(count.data(), 1)},
                                 ws),
               std::invalid_argument);
  EXPECT_THROW(controller.last_keep(0), std::invalid_argument);
  EXPECT_THROW(controller.h2o(0), std::invalid_argument);
  EXPECT_THROW(controller.head_budget(0, 4), std::invalid_argument);
  for (int i = 0; i < 4; ++i) controller.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), 8, 16));
  EXPECT_THROW(controller.compress(0, kvcrush::policy_config::parse("snapkv"), {}, s.budget, ws), std::invalid_argument)
      << "a policy without +adakv";
  kvcrush::layer_inputs given;
  given.tokens = 16;
  EXPECT_THROW(controller.compress(0, settings.policy, given, s.budget, ws), std::invalid_argument);
  EXPECT_THROW(controller.compress(0, settings.policy, {}, kvcrush::layer_budget{4, 2, 3}, ws), std::invalid_argument);
  // Attention over fewer tokens than H2O already follows in a later head:
  // refused before any head's sums change (heads ragged after compress).
  kvcrush::per_head_cache<float> ragged(s.layers, s.heads, s.d, s.capacity);
  ragged.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d),
                kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d));
  auto h2o_settings = settings;
  h2o_settings.policy = kvcrush::policy_config::parse("h2o+adakv");
  controller_type h2o_controller(ragged, h2o_settings);
  std::vector<float> varied(probs.size());
  for (std::size_t i = 0; i < varied.size(); ++i) varied[i] = static_cast<float>((i * 7919) % 997) / 997.0f;
  h2o_controller.observe(0, kvcrush::make_matrix_view<const float>(varied.data(), 8, 16));
  h2o_controller.compress(0, h2o_settings.policy, {}, s.budget, ws);
  index_t w = -1;
  for (index_t a = 0; a < s.heads && w < 0; ++a)
    for (index_t b = a + 1; b < s.heads && w < 0; ++b)
      if (ragged.length(0, a) < ragged.length(0, b)) w = ragged.length(0, a);
  ASSERT_GE(w, 0) << "no later head longer than an earlier one";
  std::vector<std::vector<float>> sums_before;
  for (index_t h = 0; h < s.heads; ++h) {
    const auto sums = h2o_controller.h2o(0, h)->scores();
    sums_before.emplace_back(&sums(0, 0), &sums(0, 0) + ragged.length(0, h));
  }
  EXPECT_THROW(h2o_controller.observe(0, kvcrush::make_matrix_view<const float>(varied.data(), 8, w)),
               std::invalid_argument);
  for (index_t h = 0; h < s.heads; ++h) {
    const auto sums = h2o_controller.h2o(0, h)->scores();
    EXPECT_EQ(std::vector<float>(&sums(0, 0), &sums(0, 0) + ragged.length(0, h)), sums_before[static_cast<std::size_t>(h)])
        << "head " << h;
  }

  // NaN in the attention the allocation reads: refused, nothing evicted.
  kvcrush::per_head_cache<float> other(s.layers, s.heads, s.d, s.capacity);
  other.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d),
               kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 16, s.d));
  controller_type nan_controller(other, settings);
  auto nan_rows = probs;
  nan_rows[5] = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < 4; ++i) nan_controller.observe(0, kvcrush::make_matrix_view<const float>(nan_rows.data(), 8, 16));
  EXPECT_THROW(nan_controller.compress(0, settings.policy, {}, s.budget, ws), std::invalid_argument);
  EXPECT_THROW(nan_controller.make_room(0, 1, ws), std::invalid_argument);
  EXPECT_EQ(other.length(0), 16);
  EXPECT_FALSE(nan_controller.shared_out(0));
  EXPECT_EQ(cache.length(0), 16);
  EXPECT_EQ(controller.selections(0), 0);

  // Now a valid compression: ragged shares summing to the layer's budget.
  controller.compress(0, settings.policy, {}, s.budget, ws);
  EXPECT_TRUE(controller.shared_out(0));
  index_t total = 0;
  for (index_t h = 0; h < s.heads; ++h) {
    total += cache.length(0, h) - s.budget.sink - s.budget.recent;
    EXPECT_EQ(cache.length(0, h), controller.head_budget(0, h).budget);
    EXPECT_EQ(controller.last_keep(0, h).count(0), cache.length(0, h));
  }
  EXPECT_EQ(total, s.heads * (s.budget.budget - s.budget.sink - s.budget.recent));
  EXPECT_THROW(controller.compress(0, settings.policy, {}, s.budget, ws), std::invalid_argument) << "shared out once";
  EXPECT_THROW(controller.set_budget(0, s.budget), std::invalid_argument);
}
