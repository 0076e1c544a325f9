// The per-layer entry points an evaluation tool uses (quant/compress.hpp),
// through the umbrella header: eviction only, eviction then quantization,
// and mixed precision, all at one byte budget, each attended over and
// measured.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcrush/kvcrush.hpp"
#include "quant_test_support.hpp"
#include "test_support.hpp"

using kvcrush::float16;
using kvcrush::index_t;

TEST(QuantCompress, EvictThenQuantizeAtAnEqualByteBudget) {
  const index_t heads = 2, hq = 4, d = 64, n = 1200, g = 32;
  const auto k = quant_test::model_like_keys(heads, n, d, 1), v = quant_test::model_like_values(heads, n, d, 2);
  const auto q = quant_test::random_queries(hq, d, 3, 0.5f);
  std::vector<float> scores(static_cast<std::size_t>(heads * n));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (index_t c = 0; c < d; ++c) s += q[static_cast<std::size_t>(2 * h * d + c)] * k.row(h, t)[c];
      scores[static_cast<std::size_t>(h * n + t)] = static_cast<float>(std::exp(s / 8.0));
    }
  // The budget: 256 tokens of a float16 cache.
  const std::size_t budget = kvcrush::plain_memory<float16>(heads, 256, d).kv_bytes();
  kvcrush::quant_config cfg;
  cfg.key_bits = 4;
  cfg.value_bits = 4;
  cfg.group_size = g;
  cfg.window = 64;
  const index_t affordable = kvcrush::quantized_tokens_within<float16>(cfg, heads, d, budget);
  EXPECT_GT(affordable, 5 * 256 / 2);  // int4 with float16 scales: 3.4x per token, less the 64-token window
  // Block-mode selection with blocks of G keeps the groups whole.
  kvcrush::keep_config keep_cfg;
  keep_cfg.block_size = g;
  keep_cfg.sink = g;
  keep_cfg.recent = 64;
  keep_cfg.budget = affordable / g * g;
  std::vector<index_t> blocks(static_cast<std::size_t>(kvcrush::keep_count(keep_cfg, n)));
  kvcrush::workspace ws;
  const index_t count = kvcrush::select_keep(kvcrush::make_matrix_view<const float>(scores.data(), heads, n), keep_cfg,
                                             kvcrush::make_vector_view(blocks.data(), static_cast<index_t>(blocks.size())), ws);
  std::vector<index_t> kept;
  for (index_t i = 0; i < count; ++i)
    for (index_t t = blocks[static_cast<std::size_t>(i)] * g; t < std::min((blocks[static_cast<std::size_t>(i)] + 1) * g, n); ++t)
      kept.push_back(t);
  const auto layer = kvcrush::quantize_kept<float16>(k.view(), v.view(),
                                                     kvcrush::keep_view::shared(kept.data(), static_cast<index_t>(kept.size())), cfg);
  EXPECT_LE(layer.memory().kv_bytes(), budget + static_cast<std::size_t>(n % g) * 2 * heads * d * 2);  // + the partial block
  EXPECT_EQ(layer.memory(), kvcrush::quantized_memory_for<float16>(cfg, heads, d, static_cast<index_t>(kept.size())));
  for (std::size_t i = 0; i < kept.size(); ++i) ASSERT_EQ(layer.positions()(1, static_cast<index_t>(i)), kept[i]);
  std::vector<float> out(static_cast<std::size_t>(hq * d));
  kvcrush::attend(layer, kvcrush::make_matrix_view(q.data(), hq, d), kvcrush::make_matrix_view(out.data(), hq, d), ws);
  for (index_t i = 0; i < hq; ++i) {
    const auto ref = quant_test::reference_attention(q.data() + i * d, k, v, i / 2, kept, 0.125);
    EXPECT_LE(quant_test::relative_error(out.data() + i * d, ref), 0.2) << i;
  }
  // quantize_kept equals quantizing the gathered rows.
  quant_test::kv_rows gk(heads, static_cast<index_t>(kept.size()), d), gv(gk);
  for (index_t h = 0; h < heads; ++h)
    for (std::size_t i = 0; i < kept.size(); ++i)
      for (index_t c = 0; c < d; ++c) {
        gk.row(h, static_cast<index_t>(i))[c] = k.row(h, kept[i])[c];
        gv.row(h, static_cast<index_t>(i))[c] = v.row(h, kept[i])[c];
      }
  const auto direct = kvcrush::quantize_layer<float16>(gk.view(), gv.view(), cfg);
  std::vector<float> a(static_cast<std::size_t>(direct.length() * d)), b(a.size());
  for (index_t h = 0; h < heads; ++h) {
    direct.dequantize_keys(h, kvcrush::make_matrix_view(a.data(), direct.length(), d));
    layer.dequantize_keys(h, kvcrush::make_matrix_view(b.data(), layer.length(), d));
    EXPECT_EQ(a, b);
  }
  EXPECT_THROW(kvcrush::quantize_kept<float16>(k.view(), v.view(), kvcrush::keep_view::shared(blocks.data(), 0),
                                               [] { kvcrush::quant_config c; c.key_bits = 7; return c; }()),
               std::invalid_argument);
}

TEST(QuantCompress, ThreeSchemesAtOneBudget) {
  // Eviction only, eviction + int4, and mixed precision (float16 + int2)
  // at the budget of 200 float16 tokens: each scheme is built, fits, holds
  // as many tokens as the budget allows (counted here by brute force over
  // the byte formula); the int4 scheme attends close to float32 attention
  // over what it kept.
  const index_t heads = 2, hq = 4, d = 64, n = 900;
  const auto k = quant_test::model_like_keys(heads, n, d, 4), v = quant_test::model_like_values(heads, n, d, 5);
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n), 6, 0.0f, 1.0f);
  const auto q = quant_test::random_queries(hq, d, 7, 0.5f);
  const std::size_t budget = kvcrush::plain_memory<float16>(heads, 200, d).kv_bytes();
  EXPECT_EQ(budget, 2u * heads * 200u * d * sizeof(float16));
  kvcrush::workspace ws;
  const auto S = kvcrush::make_matrix_view<const float>(scores.data(), heads, n);
  auto keep_tokens = [&](index_t count) {
    kvcrush::keep_config cfg;
    cfg.sink = 4;
    cfg.recent = 32;
    cfg.budget = count;
    std::vector<index_t> kept(static_cast<std::size_t>(count));
    kvcrush::select_keep(S, cfg, kvcrush::make_vector_view(kept.data(), count), ws);
    return kept;
  };
  auto check_attention = [&](auto attend_into, const std::vector<index_t>& kept, double tolerance, const char* scheme) {
    std::vector<float> out(static_cast<std::size_t>(hq * d));
    attend_into(out);
    for (index_t i = 0; i < hq; ++i) {
      const auto ref = quant_test::reference_attention(q.data() + i * d, k, v, i / 2, kept, 0.125);
      EXPECT_LE(quant_test::relative_error(out.data() + i * d, ref), tolerance) << scheme << " query head " << i;
    }
  };

  // 1. Eviction only: 200 float16 tokens fill the budget exactly.
  const auto kept_plain = keep_tokens(200);
  {
    kvcrush::contiguous_cache<float16> cache(1, heads, d, n);
    cache.append(0, k.view(), v.view());
    cache.evict_tokens(0, kvcrush::keep_view::shared(kept_plain.data(), 200));
    EXPECT_EQ(kvcrush::plain_cache_memory(cache, 0).kv_bytes(), budget);
  }

  // 2. Eviction + int4: the most tokens whose quantized layer fits.
  kvcrush::quant_config int4;
  int4.key_bits = 4;
  int4.value_bits = 4;
  int4.group_size = 32;
  int4.window = 32;
  const index_t affordable = kvcrush::quantized_tokens_within<float16>(int4, heads, d, budget);
  index_t brute_force = 0;
  for (index_t t = 0; t <= n; ++t)
    if (kvcrush::quantized_memory_for<float16>(int4, heads, d, t).kv_bytes() <= budget) brute_force = t;
  EXPECT_EQ(affordable, brute_force);
  EXPECT_GT(affordable, 2 * 200) << "int4 holds more than twice the tokens";
  const auto kept_int4 = keep_tokens(affordable);
  const auto layer = kvcrush::quantize_kept<float16>(k.view(), v.view(),
                                                     kvcrush::keep_view::shared(kept_int4.data(), affordable), int4);
  EXPECT_LE(layer.memory().kv_bytes(), budget);
  EXPECT_EQ(layer.length(), affordable);
  check_attention([&](std::vector<float>& out) {
    kvcrush::attend(layer, kvcrush::make_matrix_view(q.data(), hq, d), kvcrush::make_matrix_view(out.data(), hq, d), ws);
  }, kept_int4, 0.2, "eviction + int4");

  // 3. Mixed precision.
  kvcrush::quant_config low;
  low.key_bits = 2;
  low.value_bits = 2;
  low.group_size = 32;
  kvcrush::mixed_precision_config mp;
  mp.budget_bytes = budget;
  mp.high = kvcrush::full_precision_cost<float16>(heads, d);
  mp.low = kvcrush::quantized_cost<float16>(low, heads, d);
  mp.high_fraction = 0.6;
  mp.tier = kvcrush::low_tier::kvcrush;
  kvcrush::keep_config base;
  base.sink = 4;
  base.recent = 32;
  std::vector<index_t> high(static_cast<std::size_t>(n)), lowk(high.size());
  index_t high_count = 0, low_count = 0;
  const auto plan = kvcrush::select_mixed_precision(
      S, base, mp,
      {kvcrush::make_matrix_view(high.data(), 1, n), kvcrush::make_vector_view(&high_count, 1)},
      {kvcrush::make_matrix_view(lowk.data(), 1, n), kvcrush::make_vector_view(&low_count, 1)}, ws);
  const auto tiered = kvcrush::tiered_layer<float16>::build(k.view(), v.view(), kvcrush::keep_view::shared(high.data(), high_count),
                                                            kvcrush::keep_view::shared(lowk.data(), low_count), low);
  EXPECT_EQ(tiered.memory().kv_bytes(), plan.bytes());
  EXPECT_LE(plan.bytes(), budget);
  EXPECT_EQ(plan.high, high_count);
  EXPECT_EQ(plan.low, low_count);
  EXPECT_GT(plan.high + plan.low, 200);
  // The float16 tier costs its tokens' plain bytes.
  EXPECT_EQ(plan.high_bytes, kvcrush::plain_memory<float16>(heads, plan.high, d).kv_bytes());
  // (No attention tolerance for this scheme: int2 values of Gaussian rows
  // are too coarse for a bound that would mean anything; the tiered layer's
  // attention is checked in test_quant_mixed.cpp.)
}

TEST(QuantCompress, PlainCachesReportTheirBytes) {
  // The helper for plain caches, on the library's own caches.
  const index_t heads = 3, d = 32, n = 70;
  const auto k = quant_test::model_like_keys(heads, n, d, 7), v = quant_test::model_like_values(heads, n, d, 8);
  kvcrush::contiguous_cache<float16> cache(2, heads, d, 128);
  cache.append(1, k.view(), v.view());
  const auto m = kvcrush::plain_cache_memory(cache, 1);
  EXPECT_EQ(m.full_precision, 2u * heads * n * d * sizeof(float16));
  EXPECT_EQ(m.positions, static_cast<std::size_t>(heads * n) * sizeof(index_t));
  EXPECT_EQ(m.key_codes + m.key_params + m.value_codes + m.value_params, 0u);
  EXPECT_EQ(kvcrush::plain_cache_memory(cache, 0).total_bytes(), 0u);
  const std::vector<index_t> keep = {0, 5, 9};
  cache.evict_tokens(1, kvcrush::keep_view::shared(keep.data(), 3));
  EXPECT_EQ(kvcrush::plain_cache_memory(cache, 1), kvcrush::plain_memory<float16>(heads, 3, d));
  // A paged cache holds whole blocks: 70 tokens in blocks of 16 take 5.
  kvcrush::paged_cache_config pc;
  pc.kv_heads = heads;
  pc.head_dim = d;
  pc.block_size = 16;
  pc.blocks = 8;
  kvcrush::paged_cache<float> pool(pc);
  const auto seq = pool.create();
  pool.append(seq, 0, k.view(), v.view());
  EXPECT_EQ(kvcrush::paged_memory<float>(heads, pool.block_table(seq, 0).extent(0), 16, d).full_precision,
            2u * heads * 80u * d * sizeof(float));
}
