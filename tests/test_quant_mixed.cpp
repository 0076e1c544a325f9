// Mixed precision as a policy output: the byte rule (budget respected and
// tight), sizes at which every smaller count fits too (tiers resized while
// decoding, quantized layers that evict a token at a time), the two tiers
// (disjoint, protected tokens at full precision, the low tier MiKV-style or
// KVCrush representatives drawn only from the candidates, both against the
// plain SPEC reference), the tiered layer's bytes equal to the plan's,
// attention over both tiers, the policy_config entry point, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <set>
#include <vector>

#include "kvcrush/quant/layer.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/policy/mixed_precision.hpp"
#include "kvcrush/quant/tiered_layer.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "quant_test_support.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

using kvcrush::float16;
using kvcrush::index_t;
using kvcrush::low_tier;
using kvcrush::mixed_plan;
using kvcrush::mixed_precision_config;
using kvcrush::tier_cost;

namespace {

kvcrush::quant_config low_config(int bits, index_t group) {
  kvcrush::quant_config cfg;
  cfg.key_bits = bits;
  cfg.value_bits = bits;
  cfg.group_size = group;
  cfg.window = 0;
  return cfg;
}

// Tightness and budget checks of the byte rule, by brute force.
void check_plan(const mixed_plan& p, index_t n, index_t guarded, const mixed_precision_config& cfg) {
  const std::size_t budget = cfg.budget_bytes;
  ASSERT_EQ(p.high_bytes, cfg.high.bytes(p.high));
  ASSERT_EQ(p.low_bytes, cfg.low.bytes(p.low));
  ASSERT_LE(p.bytes(), budget);
  ASSERT_GE(p.high, guarded);
  ASSERT_LE(p.high + p.low, n);
  if (cfg.high.bytes(n) <= budget) {
    ASSERT_EQ(p.high, n);
    return;
  }
  // The full-precision tier takes what its share allows (or the protected).
  const auto share = static_cast<std::size_t>(std::floor(cfg.high_fraction * static_cast<double>(budget)));
  index_t by_share = 0;
  for (index_t h = 0; h <= n; ++h)
    if (cfg.high.bytes(h) <= share) by_share = h;
  if (p.high + p.low < n) {
    ASSERT_EQ(p.high, std::max(by_share, guarded));
    // No further low-precision token fits, however the remainder regroups.
    for (index_t l = p.low + 1; l <= n - p.high; ++l) ASSERT_GT(p.high_bytes + cfg.low.bytes(l), budget) << "low " << l;
  } else {
    ASSERT_GE(p.high, std::max(by_share, guarded));
    // Every token kept: no further token can move up.
    for (index_t h = p.high + 1; h <= n; ++h) ASSERT_GT(cfg.high.bytes(h) + cfg.low.bytes(n - h), budget) << "high " << h;
  }
}

std::vector<long> row_of(const kvcrush::keep_sets& s, index_t r) {
  std::vector<long> out;
  for (index_t i = 0; i < s.counts[r]; ++i) out.push_back(static_cast<long>(s.positions(r, i)));
  return out;
}

spec::Rows rows_of(const std::vector<float>& scores, index_t heads, index_t n) {
  spec::Rows rows(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    rows[static_cast<std::size_t>(h)].assign(scores.begin() + h * n, scores.begin() + (h + 1) * n);
  return rows;
}

// Output buffers for select_mixed_precision.
struct tiers {
  std::vector<index_t> high, low, high_counts, low_counts;
  index_t rows, n;
  tiers(index_t r, index_t tokens)
      : high(static_cast<std::size_t>(r * tokens)), low(high.size()), high_counts(static_cast<std::size_t>(r)),
        low_counts(high_counts.size()), rows(r), n(tokens) {}
  kvcrush::keep_sets high_sets() {
    return {kvcrush::make_matrix_view(high.data(), rows, n), kvcrush::make_vector_view(high_counts.data(), rows)};
  }
  kvcrush::keep_sets low_sets() {
    return {kvcrush::make_matrix_view(low.data(), rows, n), kvcrush::make_vector_view(low_counts.data(), rows)};
  }
};

}  // namespace

TEST(MixedPrecision, TierCostsCountGroupsAndLeftovers) {
  const auto high = kvcrush::full_precision_cost<float16>(8, 128);
  EXPECT_EQ(high.bytes(10), 10u * 8u * 2u * 128u * 2u);
  const auto cfg = low_config(4, 32);
  const auto low = kvcrush::quantized_cost<float16>(cfg, 8, 128);
  EXPECT_EQ(low.group, 32);
  EXPECT_EQ(low.token_bytes, high.token_bytes);  // leftovers stay at full precision
  const auto layout = kvcrush::quant_layout::make(cfg, 128);
  EXPECT_EQ(low.bytes(70), 2u * 8u * layout.group_bytes() + 6u * high.token_bytes);
  // max_tokens: the largest count that fits, even where the cost is not
  // monotone (31 tokens cost more than 32).
  EXPECT_GT(low.bytes(31), low.bytes(32));
  for (std::size_t budget : {0ul, 1000ul, low.bytes(32), low.bytes(31), low.bytes(64) + 5, low.bytes(95), 10000000ul}) {
    for (index_t limit : {0, 1, 31, 32, 40, 100}) {
      index_t best = 0;
      for (index_t t = 0; t <= limit; ++t)
        if (low.bytes(t) <= budget) best = t;
      EXPECT_EQ(low.max_tokens(budget, limit), best) << "budget " << budget << " limit " << limit;
    }
  }
}

TEST(MixedPrecision, TierSizesWhereEveryCountFits) {
  // A tier resized token by token passes through every count: the bound is
  // the largest T with every count <= T fitting, not the largest that fits.
  const auto high = kvcrush::full_precision_cost<float16>(2, 8);
  for (int bits : {2, 4, 8}) {
    for (index_t g : {16, 32}) {
      const auto low = kvcrush::quantized_cost<float16>(low_config(bits, g), 2, 8);
      for (const tier_cost& cost : {low, high}) {
        for (std::size_t budget = 0; budget < cost.bytes(200); budget += 37) {
          for (index_t limit : {0, 1, 15, 16, 17, 63, 150, 400}) {
            index_t best = 0;
            while (best < limit && cost.bytes(best + 1) <= budget) ++best;
            ASSERT_EQ(cost.max_tokens_at_every_count(budget, limit), best)
                << "bits " << bits << " G " << g << " budget " << budget << " limit " << limit;
            ASSERT_LE(best, cost.max_tokens(budget, limit));
          }
        }
      }
    }
  }
}

TEST(MixedPrecision, QuantizedLayerBytesStayWithinTheEveryCountBound) {
  // Bound by brute force over the append-only layer, the worst case for
  // each count...
  kvcrush::quant_config cfg;
  cfg.key_bits = 4;
  cfg.value_bits = 2;
  cfg.group_size = 16;
  cfg.window = 16;
  const index_t heads = 2, d = 16;
  for (std::size_t budget = 0; budget < 40000; budget += 211) {
    index_t best = 0;
    while (kvcrush::quantized_memory_for<float16>(cfg, heads, d, best + 1).kv_bytes() <= budget) ++best;
    ASSERT_EQ(kvcrush::quantized_tokens_at_every_count<float16>(cfg, heads, d, budget), best) << budget;
    ASSERT_LE(best, kvcrush::quantized_tokens_within<float16>(cfg, heads, d, budget));
  }
  // ...which a layer that appends and evicts at random never exceeds.
  const auto k = quant_test::model_like_keys(heads, 600, d, 5);
  const auto v = quant_test::model_like_values(heads, 600, d, 6);
  kvcrush::quantized_layer<float16> layer(heads, d, 200, cfg);
  std::mt19937 rng(7);
  index_t next = 0;
  std::vector<index_t> keep;
  for (int step = 0; step < 400 && next < 600; ++step) {
    if (layer.length() < 150 || rng() % 3 != 0) {
      const index_t n = std::min<index_t>(1 + static_cast<index_t>(rng() % 20), 600 - next);
      if (layer.length() + n > layer.capacity()) continue;
      layer.append(k.slice(next, n), v.slice(next, n));
      next += n;
    } else {
      keep.clear();
      for (index_t t = 0; t < layer.length(); ++t)
        if (rng() % 4 != 0) keep.push_back(t);
      layer.evict_tokens(kvcrush::keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
    }
    ASSERT_LE(layer.memory().kv_bytes(), kvcrush::quantized_memory_for<float16>(cfg, heads, d, layer.length()).kv_bytes())
        << "step " << step << ": " << layer.length() << " tokens, window " << layer.window_tokens(0);
  }
}

TEST(MixedPrecision, EveryCountPlansFitAtEveryLowCount) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    const index_t heads = 1 + static_cast<index_t>(rng() % 4), d = 16 * (1 + static_cast<index_t>(rng() % 4));
    const index_t n = 40 + static_cast<index_t>(rng() % 300), guarded = static_cast<index_t>(rng() % 40);
    mixed_precision_config mp;
    mp.high = kvcrush::full_precision_cost<float16>(heads, d);
    mp.low = kvcrush::quantized_cost<float16>(low_config(2 << (rng() % 3), 16), heads, d);
    mp.budget_bytes = mp.high.bytes(guarded) + static_cast<std::size_t>(rng() % 100000);
    mp.every_count = true;
    const mixed_plan p = kvcrush::plan_mixed_precision(n, guarded, mp);
    ASSERT_LE(p.bytes(), mp.budget_bytes);
    for (index_t l = 0; l <= p.low; ++l) ASSERT_LE(p.high_bytes + mp.low.bytes(l), mp.budget_bytes) << "low " << l;
    mp.every_count = false;
    const mixed_plan tight = kvcrush::plan_mixed_precision(n, guarded, mp);
    ASSERT_GE(tight.high, p.high);
    if (tight.high == p.high) {
      ASSERT_GE(tight.low, p.low);
    }
  }
}

TEST(MixedPrecision, QuantizedTokensWithinABudgetMatchTheLayer) {
  const auto cfg = [] {
    kvcrush::quant_config c;
    c.key_bits = 2;
    c.value_bits = 4;
    c.group_size = 32;
    c.window = 64;
    return c;
  }();
  const index_t heads = 4, d = 64;
  for (std::size_t budget = 0; budget < 600000; budget += 7919) {
    const index_t n = kvcrush::quantized_tokens_within<float16>(cfg, heads, d, budget);
    ASSERT_LE(kvcrush::quantized_memory_for<float16>(cfg, heads, d, n).kv_bytes(), budget);
    for (index_t more = n + 1; more <= n + 100; ++more)
      ASSERT_GT(kvcrush::quantized_memory_for<float16>(cfg, heads, d, more).kv_bytes(), budget) << budget << " " << more;
  }
}

TEST(MixedPrecision, ByteRuleIsRespectedAndTight) {
  std::mt19937 rng(1);
  const auto cfg = low_config(2, 16);
  for (int trial = 0; trial < 400; ++trial) {
    const index_t heads = 1 + static_cast<index_t>(rng() % 4), d = 16 * (1 + static_cast<index_t>(rng() % 4));
    const index_t n = static_cast<index_t>(rng() % 300), guarded = std::min<index_t>(n, static_cast<index_t>(rng() % 40));
    mixed_precision_config mp;
    mp.high = kvcrush::full_precision_cost<float16>(heads, d);
    mp.low = trial % 3 == 0 ? tier_cost::per_token(mp.high.token_bytes / 4) : kvcrush::quantized_cost<float16>(cfg, heads, d);
    mp.high_fraction = static_cast<double>(rng() % 11) / 10.0;
    mp.budget_bytes = mp.high.bytes(guarded) + static_cast<std::size_t>(rng() % 3) * mp.high.bytes(n) / 2 +
                      static_cast<std::size_t>(rng() % 1000);
    const mixed_plan p = kvcrush::plan_mixed_precision(n, guarded, mp);
    check_plan(p, n, guarded, mp);
  }
  // The protected tokens must fit at full precision.
  mixed_precision_config mp;
  mp.high = tier_cost::per_token(100);
  mp.low = tier_cost::per_token(10);
  mp.budget_bytes = 999;
  EXPECT_THROW(kvcrush::plan_mixed_precision(50, 10, mp), std::invalid_argument);
  mp.high_fraction = 1.5;
  mp.budget_bytes = 5000;
  EXPECT_THROW(kvcrush::plan_mixed_precision(50, 10, mp), std::invalid_argument);
}

TEST(MixedPrecision, TiersAreDisjointProtectedAreHighAndMatchTheSpec) {
  const index_t heads = 4, n = 600, d = 64;
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n), 2, 0.0f, 1.0f);
  const auto S = rows_of(scores, heads, n);
  kvcrush::workspace ws;
  const auto qcfg = low_config(4, 32);
  for (low_tier tier : {low_tier::next_important, low_tier::kvcrush}) {
    for (bool per_head : {false, true}) {
      for (double fraction : {0.0, 0.3, 0.6}) {
        kvcrush::keep_config base;
        base.sink = 4;
        base.recent = 32;
        base.per_head = per_head;
        mixed_precision_config mp;
        mp.high = kvcrush::full_precision_cost<float16>(heads, d);
        mp.low = kvcrush::quantized_cost<float16>(qcfg, heads, d);
        mp.budget_bytes = mp.high.bytes(150) + 1234;
        mp.high_fraction = fraction;
        mp.tier = tier;
        const index_t rows = per_head ? heads : 1;
        tiers out(rows, n);
        const mixed_plan p = kvcrush::select_mixed_precision(kvcrush::make_matrix_view(scores.data(), heads, n), base, mp,
                                                             out.high_sets(), out.low_sets(), ws);
        check_plan(p, n, 36, mp);
        ASSERT_GT(p.low, 0);
        // The SPEC reference: high = budget p.high without KVCrush; both
        // tiers = budget p.high + p.low with the low tier's rule.
        kvcrush::keep_config hi = base;
        hi.budget = p.high;
        kvcrush::keep_config both = base;
        both.budget = p.high + p.low;
        both.crush_fraction = tier == low_tier::kvcrush ? kvcrush::crush_fraction_for(p.low, both.budget - 36) : 0.0;
        ASSERT_EQ(kvcrush::split_budget(both.budget - 36, both.crush_fraction).crush, tier == low_tier::kvcrush ? p.low : 0);
        const auto expected_high = spec::keep(S, S, hi);
        const auto expected_both = spec::keep(S, S, both);
        for (index_t r = 0; r < rows; ++r) {
          const auto high = row_of(out.high_sets(), r), low = row_of(out.low_sets(), r);
          ASSERT_EQ(static_cast<index_t>(high.size()), p.high);
          ASSERT_EQ(static_cast<index_t>(low.size()), p.low);
          ASSERT_EQ(high, expected_high[static_cast<std::size_t>(r)]);
          std::vector<long> joined;
          std::merge(high.begin(), high.end(), low.begin(), low.end(), std::back_inserter(joined));
          ASSERT_EQ(joined, expected_both[static_cast<std::size_t>(r)]) << "tier " << kvcrush::to_string(tier);
          ASSERT_TRUE(std::adjacent_find(joined.begin(), joined.end()) == joined.end()) << "tiers overlap";
          ASSERT_TRUE(std::is_sorted(low.begin(), low.end()));
          const std::set<long> high_set(high.begin(), high.end());
          for (long t = 0; t < 4; ++t) ASSERT_TRUE(high_set.count(t)) << "sink " << t;
          for (long t = n - 32; t < n; ++t) ASSERT_TRUE(high_set.count(t)) << "recent " << t;
          // Low-tier tokens are candidates: evictable and not picked by
          // importance.
          for (long t : low) ASSERT_TRUE(t >= 4 && t < n - 32 && !high_set.count(t));
        }
      }
    }
  }
}

TEST(MixedPrecision, NextImportantTierHoldsTheNextByImportance) {
  const index_t heads = 2, n = 300;
  const auto scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * n), 3, 9, 0.0);
  std::vector<float> importance(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t) importance[static_cast<std::size_t>(t)] = scores[static_cast<std::size_t>(t)] + scores[static_cast<std::size_t>(n + t)];
  kvcrush::keep_config base;
  base.sink = 2;
  base.recent = 8;
  mixed_precision_config mp;
  mp.high = tier_cost::per_token(64);
  mp.low = tier_cost::per_token(16);
  mp.budget_bytes = 64 * 60 + 16 * 50;
  mp.high_fraction = 0.8;
  tiers out(1, n);
  kvcrush::workspace ws;
  const mixed_plan p = kvcrush::select_mixed_precision(kvcrush::make_matrix_view(scores.data(), heads, n), base, mp,
                                                       out.high_sets(), out.low_sets(), ws);
  EXPECT_EQ(p.high, 58);  // floor(0.8 * 4640) / 64
  EXPECT_EQ(p.low, 58);   // (4640 - 58 * 64) / 16
  const auto high = row_of(out.high_sets(), 0), low = row_of(out.low_sets(), 0);
  const std::set<long> kept(high.begin(), high.end());
  const std::set<long> second(low.begin(), low.end());
  // Rank order of SPEC 2: importance descending, ties by position.
  auto before = [&](long a, long b) {
    return importance[static_cast<std::size_t>(a)] > importance[static_cast<std::size_t>(b)] ||
           (importance[static_cast<std::size_t>(a)] == importance[static_cast<std::size_t>(b)] && a < b);
  };
  for (long t = 2; t < n - 8; ++t) {
    if (kept.count(t) || second.count(t)) continue;
    for (long l : low) ASSERT_TRUE(before(l, t)) << "dropped " << t << " outranks low-tier " << l;
  }
  for (long l : low) {
    for (long h : high) {
      if (h >= 2 && h < n - 8) {
        ASSERT_TRUE(before(h, l));
      }
    }
  }
}

TEST(MixedPrecision, TieredLayerBytesEqualThePlanAndAttendOverBothTiers) {
  const index_t heads = 2, hq = 4, d = 64, n = 700;
  const auto k = quant_test::model_like_keys(heads, n, d, 4), v = quant_test::model_like_values(heads, n, d, 5);
  const auto q = quant_test::random_queries(hq, d, 6, 0.5f);
  // Scores: attention of the queries (what SnapKV would see), summed per KV head.
  std::vector<float> scores(static_cast<std::size_t>(heads * n));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (index_t c = 0; c < d; ++c) s += std::fabs(q[static_cast<std::size_t>(2 * h * d + c)] * k.row(h, t)[c]);
      scores[static_cast<std::size_t>(h * n + t)] = static_cast<float>(s);
    }
  const auto qcfg = low_config(4, 32);
  kvcrush::workspace ws;
  for (low_tier tier : {low_tier::next_important, low_tier::kvcrush}) {
    for (bool per_head : {false, true}) {
      kvcrush::keep_config base;
      base.sink = 4;
      base.recent = 64;
      base.per_head = per_head;
      mixed_precision_config mp;
      mp.high = kvcrush::full_precision_cost<float16>(heads, d);
      mp.low = kvcrush::quantized_cost<float16>(qcfg, heads, d);
      mp.budget_bytes = mp.high.bytes(200);  // 200 tokens at float16
      mp.high_fraction = 0.5;
      mp.tier = tier;
      const index_t rows = per_head ? heads : 1;
      tiers out(rows, n);
      const mixed_plan p = kvcrush::select_mixed_precision(kvcrush::make_matrix_view(scores.data(), heads, n), base, mp,
                                                           out.high_sets(), out.low_sets(), ws);
      EXPECT_GT(p.high + p.low, 200) << "trading bits for tokens keeps more tokens";
      const kvcrush::keep_view high(kvcrush::make_matrix_view<const index_t>(out.high.data(), rows, n),
                                    kvcrush::make_vector_view<const index_t>(out.high_counts.data(), rows));
      const kvcrush::keep_view low(kvcrush::make_matrix_view<const index_t>(out.low.data(), rows, n),
                                   kvcrush::make_vector_view<const index_t>(out.low_counts.data(), rows));
      const auto layer = kvcrush::tiered_layer<float16>::build(k.view(), v.view(), high, low, qcfg);
      EXPECT_EQ(layer.memory().kv_bytes(), p.bytes());
      EXPECT_LE(layer.memory().kv_bytes(), mp.budget_bytes);
      EXPECT_EQ(layer.high_tokens(), p.high);
      EXPECT_EQ(layer.low_tokens(), p.low);
      std::vector<float> got(static_cast<std::size_t>(hq * d));
      layer.attend(kvcrush::make_matrix_view(q.data(), hq, d), kvcrush::make_matrix_view(got.data(), hq, d), ws);
      for (index_t i = 0; i < hq; ++i) {
        const index_t h = i / 2, r = per_head ? h : 0;
        std::vector<index_t> tokens(out.high.begin() + r * n, out.high.begin() + r * n + p.high);
        tokens.insert(tokens.end(), out.low.begin() + r * n, out.low.begin() + r * n + p.low);
        const auto ref = quant_test::reference_attention(q.data() + i * d, k, v, h, tokens, 1.0 / 8.0);
        EXPECT_LE(quant_test::relative_error(got.data() + i * d, ref), 0.2) << "query head " << i;  // int4 low tier
        for (index_t j = 0; j < p.high; ++j) ASSERT_EQ(layer.high_positions()(h, j), tokens[static_cast<std::size_t>(j)]);
      }
    }
  }
}

TEST(MixedPrecision, PolicyConfigEntryPointMatchesTheScoresEntryPoint) {
  const index_t heads = 2, n = 400;
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n), 7, 0.0f, 1.0f);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = n;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, n);
  mixed_precision_config mp;
  mp.high = tier_cost::per_token(512);
  mp.low = tier_cost::per_token(96);
  mp.budget_bytes = 512 * 100;
  mp.tier = low_tier::kvcrush;
  kvcrush::workspace ws;
  auto pc = kvcrush::policy_config::parse("precomputed+kvcrush");
  pc.crush.anchor = kvcrush::anchor_mode::zeros;
  tiers a(1, n), b(1, n);
  const auto pa = kvcrush::select_mixed_precision(pc, in, kvcrush::layer_budget{0, 4, 16}, mp, a.high_sets(), a.low_sets(), ws);
  kvcrush::keep_config base;
  base.sink = 4;
  base.recent = 16;
  base.anchor = kvcrush::anchor_mode::zeros;
  const auto pb = kvcrush::select_mixed_precision(in.scores, base, mp, b.high_sets(), b.low_sets(), ws);
  EXPECT_EQ(pa.high, pb.high);
  EXPECT_EQ(pa.low, pb.low);
  EXPECT_EQ(row_of(a.high_sets(), 0), row_of(b.high_sets(), 0));
  EXPECT_EQ(row_of(a.low_sets(), 0), row_of(b.low_sets(), 0));
  // Streaming ranks nothing: the high tier is the protected tokens, the low
  // tier KVCrush representatives.
  tiers c(1, n);
  const auto ps = kvcrush::select_mixed_precision(kvcrush::policy_config::parse("streaming"), in,
                                                  kvcrush::layer_budget{0, 4, 16}, mp, c.high_sets(), c.low_sets(), ws);
  EXPECT_EQ(ps.high, 20);
  EXPECT_GT(ps.low, 0);
  mp.tier = low_tier::next_important;
  EXPECT_THROW(kvcrush::select_mixed_precision(kvcrush::policy_config::parse("streaming"), in, kvcrush::layer_budget{0, 4, 16},
                                               mp, c.high_sets(), c.low_sets(), ws),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::select_mixed_precision(kvcrush::policy_config::parse("full"), in, kvcrush::layer_budget{0, 4, 16},
                                               mp, c.high_sets(), c.low_sets(), ws),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::select_mixed_precision(kvcrush::policy_config::parse("precomputed+adakv"), in,
                                               kvcrush::layer_budget{0, 4, 16}, mp, c.high_sets(), c.low_sets(), ws),
               std::invalid_argument);
}

TEST(MixedPrecision, BadInputIsRefused) {
  const index_t heads = 2, n = 100;
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n), 8, 0.0f, 1.0f);
  kvcrush::keep_config base;
  base.sink = 4;
  base.recent = 16;
  mixed_precision_config mp;
  mp.high = tier_cost::per_token(100);
  mp.low = tier_cost::per_token(25);
  mp.budget_bytes = 100 * 40;
  kvcrush::workspace ws;
  tiers out(1, n), small(1, 10);
  const auto s = kvcrush::make_matrix_view(scores.data(), heads, n);
  EXPECT_NO_THROW(kvcrush::select_mixed_precision(s, base, mp, out.high_sets(), out.low_sets(), ws));
  EXPECT_THROW(kvcrush::select_mixed_precision(s, base, mp, small.high_sets(), small.low_sets(), ws), std::invalid_argument);
  kvcrush::keep_config blocks = base;
  blocks.block_size = 4;
  EXPECT_THROW(kvcrush::select_mixed_precision(s, blocks, mp, out.high_sets(), out.low_sets(), ws), std::invalid_argument);
  mp.budget_bytes = 100 * 19;  // below the 20 protected tokens
  EXPECT_THROW(kvcrush::select_mixed_precision(s, base, mp, out.high_sets(), out.low_sets(), ws), std::invalid_argument);
  // A tiered layer refuses overlapping tiers.
  const auto k = quant_test::model_like_keys(heads, n, 16, 9);
  const std::vector<index_t> a = {0, 1, 2}, b = {2, 3};
  EXPECT_THROW(kvcrush::tiered_layer<float16>::build(k.view(), k.view(), kvcrush::keep_view::shared(a.data(), 3),
                                                     kvcrush::keep_view::shared(b.data(), 2), low_config(4, 16)),
               std::invalid_argument);
}
