// Decode-time mixed precision: tiered_cache (a float16 tier and a quantized
// tier presented as one sequence in position order) and precision_demoter
// (the policy's choice over the controller's tracked scores stays at full
// precision, the rest of the high tier is demoted). While tokens arrive and
// the controller evicts: demotions equal a plain reference (SPEC keep sets
// from the tracked H2O sums, full sorts), no token is demoted twice, the
// high tier holds the original rows and the low tier exactly what a
// quantized cache makes of the demoted originals in demotion order; and bad
// input is refused before anything changes.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/precision_demoter.hpp"
#include "kvcrush/cache/tiered_cache.hpp"
#include "kvcrush/quant/cache.hpp"
#include "spec_reference.hpp"

using kvcrush::index_t;

namespace {

struct tier_shape {
  index_t heads = 2, query_heads = 4, d = 8, capacity = 96;
  kvcrush::layer_budget budget{40, 2, 4};
  index_t slack = 8, high = 12;
};

kvcrush::quant_config low_config() {
  kvcrush::quant_config q;
  q.key_bits = q.value_bits = 4;
  q.group_size = 16;
  q.window = 0;
  return q;
}

// The union's positions, in union order.
template <class W>
std::vector<index_t> union_positions(const kvcrush::tiered_cache<W>& cache, index_t layer) {
  std::vector<index_t> out;
  for (index_t u = 0; u < cache.length(layer); ++u) out.push_back(cache.position(layer, u));
  return out;
}

std::vector<index_t> first_row(kvcrush::matrix_view<const index_t> m) {
  std::vector<index_t> out;
  for (index_t i = 0; i < m.extent(1); ++i) out.push_back(m(0, i));
  return out;
}

std::vector<float> dequantized(const kvcrush::quantized_layer<kvcrush::float16>& layer, bool keys) {
  std::vector<float> out;
  std::vector<float> rows(static_cast<std::size_t>(std::max<index_t>(layer.length(), 1) * layer.head_dim()));
  for (index_t h = 0; h < layer.kv_heads(); ++h) {
    const auto view = kvcrush::make_matrix_view(rows.data(), layer.length(), layer.head_dim());
    keys ? layer.dequantize_keys(h, view) : layer.dequantize_values(h, view);
    out.insert(out.end(), rows.begin(), rows.begin() + layer.length() * layer.head_dim());
  }
  return out;
}

// Row of head h of a token, as the generator made it (position p).
float element(index_t p, index_t h, index_t c, bool key) {
  const auto x = static_cast<std::uint32_t>((p * 131 + h * 17 + c * 7 + (key ? 3 : 5)) * 2654435761u);
  return kvcrush::to_float(kvcrush::to_float16(static_cast<float>(x % 2001) / 1000.0f - 1.0f));
}

}  // namespace

TEST(DecodeTiers, DemotionsFollowThePolicyAndTheLowTierHoldsTheDemotedOriginals) {
  const tier_shape s;
  kvcrush::tiered_cache<kvcrush::float16> cache(1, s.heads, s.d, s.capacity, low_config());
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o");
  settings.budgets = {s.budget};
  settings.slack = s.slack;
  settings.query_heads = s.query_heads;
  settings.max_tokens = s.capacity;
  kvcrush::eviction_controller<kvcrush::tiered_cache<kvcrush::float16>> controller(cache, settings);
  kvcrush::precision_demoter demoter(s.capacity);
  kvcrush::workspace ws;
  // The reference low tier: the demoted originals appended in demotion
  // order, evicted as the real one is.
  kvcrush::quantized_cache<kvcrush::float16> reference(1, s.heads, s.d, s.capacity, low_config());
  std::set<index_t> ever_demoted;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  index_t demotions = 0, evictions = 0;
  for (index_t p = 0; p < 150; ++p) {
    if (controller.make_room(0, 1, ws)) ++evictions;
    // The low tier lost what the eviction dropped: the reference too.
    {
      const auto low = first_row(cache.low().layer(0).positions());
      const std::set<index_t> alive(low.begin(), low.end());
      const auto ref = reference.layer(0).positions();
      std::vector<index_t> keep;
      for (index_t i = 0; i < ref.extent(1); ++i) {
        if (alive.count(ref(0, i))) keep.push_back(i);
      }
      reference.evict_tokens(0, kvcrush::keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
    }
    // Room for the new float16 token, as kvcrush-eval does.
    const kvcrush::layer_budget high{s.high - 1, s.budget.sink, std::min<index_t>(s.budget.recent, s.high - 1 - s.budget.sink)};
    std::vector<index_t> expected;
    const index_t n = cache.length(0);
    if (cache.high_tokens(0) > high.budget) {
      // The plain reference: SPEC keep sets over the tracked H2O sums of
      // the union, then every chosen-out high-tier token.
      const auto sums = controller.h2o(0)->scores();
      spec::Rows rows(static_cast<std::size_t>(s.heads));
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t t = 0; t < n; ++t) rows[static_cast<std::size_t>(h)].push_back(t < controller.h2o(0)->length(h) ? sums(h, t) : 0.0f);
      kvcrush::keep_config cfg;
      cfg.budget = high.budget;
      cfg.sink = high.sink;
      cfg.recent = high.recent;
      const auto chosen = spec::keep(rows, rows, cfg)[0];
      for (index_t u = 0; u < n; ++u) {
        if (!std::binary_search(chosen.begin(), chosen.end(), static_cast<long>(u)) && !cache.is_low(0, u)) {
          expected.push_back(u);
        }
      }
    }
    const auto before = union_positions(cache, 0);
    std::vector<index_t> was_low;
    for (index_t u = 0; u < n; ++u) was_low.push_back(cache.is_low(0, u));
    const index_t count = demoter.keep_high(controller, 0, kvcrush::policy_config::parse("h2o"), high, ws);
    const auto demoted = demoter.last_demoted();
    ASSERT_EQ(std::vector<index_t>(demoted.data(), demoted.data() + demoted.extent(0)), expected) << "token " << p;
    ASSERT_EQ(count, static_cast<index_t>(expected.size()));
    if (!expected.empty()) {
      EXPECT_LE(cache.high_tokens(0), high.budget);
    }
    EXPECT_EQ(union_positions(cache, 0), before) << "demotion moves no token out of position order";
    std::vector<index_t> moved;
    for (index_t u : expected) {
      EXPECT_FALSE(was_low[static_cast<std::size_t>(u)]);
      EXPECT_TRUE(ever_demoted.insert(before[static_cast<std::size_t>(u)]).second)
          << "position " << before[static_cast<std::size_t>(u)] << " demoted twice";
      moved.push_back(before[static_cast<std::size_t>(u)]);
    }
    for (index_t u = 0; u < n; ++u) {
      if (was_low[static_cast<std::size_t>(u)]) {
        EXPECT_TRUE(cache.is_low(0, u)) << "a low token went back up";
      }
    }
    demotions += count;
    if (!moved.empty()) {
      const auto k = static_cast<index_t>(moved.size());
      std::vector<float> keys(static_cast<std::size_t>(s.heads * k * s.d)), values(keys.size());
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t i = 0; i < k; ++i)
          for (index_t c = 0; c < s.d; ++c) {
            keys[static_cast<std::size_t>((h * k + i) * s.d + c)] = element(moved[static_cast<std::size_t>(i)], h, c, true);
            values[static_cast<std::size_t>((h * k + i) * s.d + c)] = element(moved[static_cast<std::size_t>(i)], h, c, false);
          }
      reference.append(0, kvcrush::make_head_token_dim<const float>(keys.data(), s.heads, k, s.d),
                       kvcrush::make_head_token_dim<const float>(values.data(), s.heads, k, s.d),
                       kvcrush::make_vector_view<const index_t>(moved.data(), k));
    }
    // Low tier: exactly the reference's codes read back; high tier: the originals.
    ASSERT_EQ(first_row(cache.low().layer(0).positions()), first_row(reference.layer(0).positions()));
    EXPECT_EQ(dequantized(cache.low().layer(0), true), dequantized(reference.layer(0), true)) << "token " << p;
    EXPECT_EQ(dequantized(cache.low().layer(0), false), dequantized(reference.layer(0), false)) << "token " << p;
    const auto hk = cache.high().keys(0), hv = cache.high().values(0);
    const auto hp = cache.high().positions(0);
    for (index_t h = 0; h < s.heads; ++h)
      for (index_t i = 0; i < hk.tokens(); ++i)
        for (index_t c = 0; c < s.d; ++c) {
          ASSERT_EQ(kvcrush::to_float(hk(h, i, c)), element(hp(0, i), h, c, true));
          ASSERT_EQ(kvcrush::to_float(hv(h, i, c)), element(hp(0, i), h, c, false));
        }

    // The new token enters the high tier; its attention is observed.
    std::vector<float> k(static_cast<std::size_t>(s.heads * s.d)), v(k.size());
    for (index_t h = 0; h < s.heads; ++h)
      for (index_t c = 0; c < s.d; ++c) {
        k[static_cast<std::size_t>(h * s.d + c)] = element(p, h, c, true);
        v[static_cast<std::size_t>(h * s.d + c)] = element(p, h, c, false);
      }
    cache.append(0, kvcrush::make_head_token_dim<const float>(k.data(), s.heads, 1, s.d),
                 kvcrush::make_head_token_dim<const float>(v.data(), s.heads, 1, s.d));
    std::vector<float> probs(static_cast<std::size_t>(s.query_heads * cache.length(0)));
    for (auto& x : probs) x = unit(rng);
    controller.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), s.query_heads, cache.length(0)));
    EXPECT_LE(cache.length(0), s.budget.budget + s.slack);
  }
  EXPECT_GT(demotions, 100);
  EXPECT_GT(evictions, 5);
  EXPECT_GT(cache.low_tokens(0), s.budget.budget / 2) << "the low tier holds full groups";
}

TEST(DecodeTiers, BadInputIsRefusedBeforeAnythingChanges) {
  const tier_shape s;
  kvcrush::tiered_cache<kvcrush::float16> cache(1, s.heads, s.d, s.capacity, low_config());
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o");
  settings.budgets = {s.budget};
  settings.slack = s.slack;
  settings.query_heads = s.query_heads;
  settings.max_tokens = s.capacity;
  kvcrush::eviction_controller<kvcrush::tiered_cache<kvcrush::float16>> controller(cache, settings);
  kvcrush::workspace ws;
  std::vector<float> rows(static_cast<std::size_t>(s.heads * 30 * s.d));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i % 13) / 13.0f;
  cache.append(0, kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 30, s.d),
               kvcrush::make_head_token_dim<const float>(rows.data(), s.heads, 30, s.d));
  std::vector<float> probs(static_cast<std::size_t>(s.query_heads * 30));
  for (std::size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>((i * 37) % 101) / 101.0f;
  controller.observe(0, kvcrush::make_matrix_view<const float>(probs.data(), s.query_heads, 30));
  const std::vector<index_t> first = {3, 5, 9};
  cache.demote(0, kvcrush::make_vector_view<const index_t>(first.data(), 3));
  ASSERT_EQ(cache.low_tokens(0), 3);
  ASSERT_TRUE(cache.is_low(0, 5));
  const auto positions = union_positions(cache, 0);
  const auto low_keys = dequantized(cache.low().layer(0), true);
  auto unchanged = [&] {
    EXPECT_EQ(cache.high_tokens(0), 27);
    EXPECT_EQ(cache.low_tokens(0), 3);
    EXPECT_EQ(union_positions(cache, 0), positions);
    EXPECT_EQ(dequantized(cache.low().layer(0), true), low_keys);
  };

  kvcrush::precision_demoter demoter(s.capacity);
  const auto h2o = kvcrush::policy_config::parse("h2o");
  EXPECT_THROW(demoter.keep_high(controller, 0, h2o, {5, 2, 4}, ws), std::invalid_argument) << "budget below sink + recent";
  EXPECT_THROW(demoter.keep_high(controller, 0, h2o, {s.capacity + 1, 2, 4}, ws), std::invalid_argument);
  EXPECT_THROW(demoter.keep_high(controller, 0, h2o, {10, -1, 4}, ws), std::invalid_argument);
  EXPECT_THROW(demoter.keep_high(controller, 1, h2o, {10, 2, 4}, ws), std::invalid_argument);
  auto per_head = h2o;
  per_head.layout.per_head = true;
  EXPECT_THROW(demoter.keep_high(controller, 0, per_head, {10, 2, 4}, ws), std::invalid_argument);
  EXPECT_THROW(demoter.keep_high(controller, 0, kvcrush::policy_config::parse("h2o+adakv"), {10, 2, 4}, ws),
               std::invalid_argument);
  auto blocks = h2o;
  blocks.layout.block_size = 2;
  EXPECT_THROW(demoter.keep_high(controller, 0, blocks, {10, 2, 4}, ws), std::invalid_argument);
  kvcrush::precision_demoter small(20);
  EXPECT_THROW(small.keep_high(controller, 0, h2o, {10, 2, 4}, ws), std::invalid_argument)
      << "the layer holds more tokens than the demoter's capacity";
  unchanged();

  const std::vector<index_t> again = {4, 5}, backwards = {8, 7}, outside = {30}, negative = {-1};
  EXPECT_THROW(cache.demote(0, kvcrush::make_vector_view<const index_t>(again.data(), 2)), std::invalid_argument)
      << "token 5 is already low";
  EXPECT_THROW(cache.demote(0, kvcrush::make_vector_view<const index_t>(backwards.data(), 2)), std::invalid_argument);
  EXPECT_THROW(cache.demote(0, kvcrush::make_vector_view<const index_t>(outside.data(), 1)), std::invalid_argument);
  EXPECT_THROW(cache.demote(0, kvcrush::make_vector_view<const index_t>(negative.data(), 1)), std::invalid_argument);
  const std::vector<index_t> ragged = {0, 1, 2, 0};
  EXPECT_THROW(cache.evict_tokens(0, kvcrush::keep_view(kvcrush::make_matrix_view<const index_t>(ragged.data(), 2, 2))),
               std::invalid_argument);
  EXPECT_THROW(cache.evict_blocks(0, {}, 2), std::invalid_argument);
  unchanged();

  // A valid call: the high tier ends at the budget, all of it chosen.
  const index_t count = demoter.keep_high(controller, 0, h2o, {10, 2, 4}, ws);
  EXPECT_GE(count, 17);
  EXPECT_LE(cache.high_tokens(0), 10);
  EXPECT_EQ(cache.high_tokens(0) + count, 27);
  EXPECT_EQ(cache.low_tokens(0), 3 + count);
  EXPECT_EQ(union_positions(cache, 0), positions);
  EXPECT_EQ(demoter.keep_high(controller, 0, h2o, {10, 2, 4}, ws), 0) << "the high tier already fits";
}
