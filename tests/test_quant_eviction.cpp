// Eviction on quantized caches: whole-group (block) eviction moves groups
// without touching a code; token eviction regroups and requantizes only the
// groups it breaks, within the error bound, and moves partial groups into
// the window; alignment, positions and byte counts after every operation;
// the decode-time eviction controller driving a quantized cache in token and
// block mode; bad keep sets refused before anything changes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/cache.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/select/keep.hpp"
#include "quant_test_support.hpp"
#include "test_support.hpp"

using kvcrush::index_t;
using kvcrush::keep_view;
using kvcrush::quant_config;
using kvcrush::quantized_layer;
using quant_test::kv_rows;

namespace {

quant_config make_config(int bits, index_t group, index_t window) {
  quant_config cfg;
  cfg.key_bits = bits;
  cfg.value_bits = bits;
  cfg.group_size = group;
  cfg.window = window;
  return cfg;
}

// Everything observable about one head: dequantized rows, positions, and
// which tokens are quantized.
struct head_snapshot {
  std::vector<float> keys, values;
  std::vector<index_t> positions;
  index_t quantized = 0;
};

template <class W>
head_snapshot snapshot(const quantized_layer<W>& layer, index_t h) {
  head_snapshot s;
  const index_t n = layer.length(), d = layer.head_dim();
  s.keys.resize(static_cast<std::size_t>(n * d));
  s.values.resize(s.keys.size());
  layer.dequantize_keys(h, kvcrush::make_matrix_view(s.keys.data(), n, d));
  layer.dequantize_values(h, kvcrush::make_matrix_view(s.values.data(), n, d));
  for (index_t t = 0; t < n; ++t) s.positions.push_back(layer.positions()(h, t));
  s.quantized = layer.quantized_tokens(h);
  return s;
}

template <class W>
void check_invariants(const quantized_layer<W>& layer) {
  const auto& cfg = layer.config();
  kvcrush::memory_usage expected;
  for (index_t h = 0; h < layer.kv_heads(); ++h) {
    ASSERT_EQ(layer.quantized_tokens(h) % cfg.group_size, 0);
    ASSERT_LT(layer.window_tokens(h), cfg.window + cfg.group_size);
    ASSERT_EQ(layer.quantized_tokens(h) + layer.window_tokens(h), layer.length());
    expected += kvcrush::quantized_memory<W>(layer.layout(), layer.groups(h), layer.window_tokens(h));
  }
  ASSERT_EQ(layer.memory(), expected);
}

template <class W>
void check_eviction_changes(const quantized_layer<W>& layer, const std::vector<head_snapshot>& before);

bool same_row(const std::vector<float>& a, index_t i, const std::vector<float>& b, index_t j, index_t d) {
  return std::memcmp(a.data() + i * d, b.data() + j * d, static_cast<std::size_t>(d) * sizeof(float)) == 0;
}

}  // namespace

TEST(QuantEviction, WholeGroupBlocksMoveWithoutRequantization) {
  const index_t heads = 2, d = 64, n = 400;
  const auto cfg = make_config(4, 32, 64);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 1), v = quant_test::model_like_values(heads, n, d, 2);
  for (index_t b : {index_t{32}, index_t{64}}) {
    auto layer = kvcrush::quantize_layer<float>(k.view(), v.view(), cfg);
    ASSERT_EQ(layer.groups(0), 10);  // (400 - 64) / 32
    std::vector<head_snapshot> before;
    for (index_t h = 0; h < heads; ++h) before.push_back(snapshot(layer, h));
    const index_t blocks = (n + b - 1) / b;
    std::vector<index_t> keep;
    for (index_t j = 0; j < blocks; ++j)
      if (j % 3 != 1 || j == blocks - 1) keep.push_back(j);
    layer.evict_blocks(kvcrush::make_vector_view<const index_t>(keep.data(), static_cast<index_t>(keep.size())), b);
    check_invariants(layer);
    EXPECT_EQ(layer.requantization().groups, 0) << "b=" << b;
    EXPECT_EQ(layer.requantization().dequantized_tokens, 0) << "b=" << b;
    std::vector<index_t> kept_tokens;
    for (index_t j : keep)
      for (index_t t = j * b; t < std::min((j + 1) * b, n); ++t) kept_tokens.push_back(t);
    ASSERT_EQ(layer.length(), static_cast<index_t>(kept_tokens.size()));
    for (index_t h = 0; h < heads; ++h) {
      const auto after = snapshot(layer, h);
      for (std::size_t i = 0; i < kept_tokens.size(); ++i) {
        const index_t t = kept_tokens[i];
        ASSERT_EQ(after.positions[i], t);
        // Bit-identical rows, and a quantized token stays quantized.
        ASSERT_TRUE(same_row(after.keys, static_cast<index_t>(i), before[static_cast<std::size_t>(h)].keys, t, d)) << "b=" << b << " t=" << t;
        ASSERT_TRUE(same_row(after.values, static_cast<index_t>(i), before[static_cast<std::size_t>(h)].values, t, d));
        ASSERT_EQ(static_cast<index_t>(i) < after.quantized, t < before[static_cast<std::size_t>(h)].quantized);
      }
    }
  }
}

TEST(QuantEviction, BlockSelectionWithGroupSizedBlocks) {
  // select_keep in block mode (SPEC 4.4) with block_size = G chooses what
  // the layer can drop without requantizing, KVCrush representatives
  // included.
  const index_t heads = 4, d = 64, n = 517, g = 32;
  const auto cfg = make_config(2, g, 64);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 3), v = quant_test::model_like_values(heads, n, d, 4);
  auto layer = kvcrush::quantize_layer<kvcrush::float16>(k.view(), v.view(), cfg);
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * n), 5, 0.0f, 1.0f);
  kvcrush::keep_config keep_cfg;
  keep_cfg.block_size = g;
  keep_cfg.budget = 256;
  keep_cfg.sink = 32;
  keep_cfg.recent = 64;
  keep_cfg.crush_fraction = 0.5;
  std::vector<index_t> blocks(static_cast<std::size_t>(kvcrush::keep_count(keep_cfg, n)));
  kvcrush::workspace ws;
  const index_t count = kvcrush::select_keep(kvcrush::make_matrix_view(scores.data(), heads, n), keep_cfg,
                                             kvcrush::make_vector_view(blocks.data(), static_cast<index_t>(blocks.size())), ws);
  layer.evict_blocks(kvcrush::make_vector_view<const index_t>(blocks.data(), count), g);
  check_invariants(layer);
  EXPECT_EQ(layer.length(), 256 + n % g);
  EXPECT_EQ(layer.requantization().groups, 0);
}

TEST(QuantEviction, TokenEvictionRequantizesOnlyBrokenGroups) {
  const index_t heads = 2, d = 48, n = 333, g = 16;
  const auto cfg = make_config(4, g, 32);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 6), v = quant_test::model_like_values(heads, n, d, 7);
  std::mt19937 rng(8);
  for (int trial = 0; trial < 12; ++trial) {
    auto layer = kvcrush::quantize_layer<float>(k.view(), v.view(), cfg);
    std::vector<head_snapshot> before;
    for (index_t h = 0; h < heads; ++h) before.push_back(snapshot(layer, h));
    // Keep sets of every shape: an untouched prefix of whole groups, then
    // random survivors (the last trials keep whole groups only).
    const index_t prefix = static_cast<index_t>(rng() % 6) * g;
    std::vector<index_t> keep;
    for (index_t t = 0; t < n; ++t) {
      const bool whole_groups = trial >= 10;
      const bool keep_it = t < prefix || (whole_groups ? (t / g) % 2 == 0 : rng() % 3 != 0);
      if (keep_it) keep.push_back(t);
    }
    const auto stats_before = layer.requantization();
    layer.evict_tokens(keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
    check_invariants(layer);
    ASSERT_EQ(layer.length(), static_cast<index_t>(keep.size()));
    check_eviction_changes(layer, before);
    const auto& stats = layer.requantization();
    EXPECT_LE(stats.max_change_over_bound, 1.0f);
    if (trial >= 10) {
      EXPECT_EQ(stats.groups, stats_before.groups) << "whole groups are moved, not requantized";
      EXPECT_EQ(stats.dequantized_tokens, stats_before.dequantized_tokens);
    }
    for (index_t h = 0; h < heads; ++h) {
      const auto after = snapshot(layer, h);
      const auto& old = before[static_cast<std::size_t>(h)];
      for (std::size_t i = 0; i < keep.size(); ++i) {
        const index_t t = keep[i], at = static_cast<index_t>(i);
        ASSERT_EQ(after.positions[i], t);
        const bool was_quantized = t < old.quantized, is_quantized = at < after.quantized;
        for (index_t c = 0; c < d; ++c) {
          const float nk = after.keys[static_cast<std::size_t>(at * d + c)], ok = old.keys[static_cast<std::size_t>(t * d + c)];
          const float nv = after.values[static_cast<std::size_t>(at * d + c)], ov = old.values[static_cast<std::size_t>(t * d + c)];
          if (!is_quantized) {
            // In the window: exactly what was read before (float window).
            ASSERT_EQ(nk, ok) << "trial " << trial << " token " << t;
            ASSERT_EQ(nv, ov);
          } else {
            const float bound = kvcrush::quantization_error_bound(layer.key_params(h, at / g, c), cfg.key_bits);
            if (t < prefix) {
              ASSERT_EQ(nk, ok) << "the untouched prefix keeps its codes";
            } else {
              ASSERT_LE(std::fabs(nk - ok), bound) << "trial " << trial << " token " << t;
            }
            // Values are per token: moved, never requantized, unless the
            // token came back from the window.
            if (was_quantized) {
              ASSERT_EQ(nv, ov);
            } else {
              ASSERT_LE(std::fabs(nv - ov), kvcrush::quantization_error_bound(layer.value_params(h, at, 0), cfg.value_bits));
            }
            // Against the original rows: at most the two roundings.
            const float original = k.row(h, t)[c];
            ASSERT_LE(std::fabs(nk - original), std::fabs(ok - original) + bound);
          }
        }
      }
    }
  }
}

TEST(QuantEviction, PartialGroupsReturnToTheWindow) {
  // Keep 2.5 groups of quantized tokens: two groups stay quantized, the
  // half group is dequantized into the window.
  const index_t heads = 1, d = 32, g = 16, n = 96;
  const auto cfg = make_config(8, g, 32);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 9), v = quant_test::model_like_values(heads, n, d, 10);
  auto layer = kvcrush::quantize_layer<float>(k.view(), v.view(), cfg);
  ASSERT_EQ(layer.groups(0), 4);  // (96 - 32) / 16
  const auto old = snapshot(layer, 0);
  std::vector<index_t> keep;
  for (index_t t = 0; t < 40; ++t) keep.push_back(t);  // 2.5 groups
  for (index_t t = 64; t < 96; ++t) keep.push_back(t);  // the window
  layer.evict_tokens(keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
  check_invariants(layer);
  EXPECT_EQ(layer.groups(0), 2);
  EXPECT_EQ(layer.window_tokens(0), 40);
  EXPECT_EQ(layer.requantization().groups, 0);
  EXPECT_EQ(layer.requantization().dequantized_tokens, 8);
  const auto now = snapshot(layer, 0);
  for (std::size_t i = 0; i < keep.size(); ++i)
    ASSERT_TRUE(same_row(now.keys, static_cast<index_t>(i), old.keys, keep[i], d)) << i;
  // The window grows past R + G on a later append and requantizes those rows.
  layer.append(k.slice(0, 8), v.slice(0, 8));
  check_invariants(layer);
  EXPECT_EQ(layer.groups(0), 3);
  EXPECT_EQ(layer.window_tokens(0), 32);
}

TEST(QuantEviction, PerHeadKeepSetsGiveHeadsTheirOwnGroups) {
  const index_t heads = 3, d = 32, g = 16, n = 200;
  const auto cfg = make_config(4, g, 16);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 11), v = quant_test::model_like_values(heads, n, d, 12);
  auto layer = kvcrush::quantize_layer<kvcrush::float16>(k.view(), v.view(), cfg);
  const index_t kept = 120;
  std::vector<index_t> rows(static_cast<std::size_t>(heads * kept));
  for (index_t h = 0; h < heads; ++h) {
    // Head h drops a different stretch of 80 tokens.
    index_t j = 0;
    for (index_t t = 0; t < n; ++t)
      if (t < 40 * h || t >= 40 * h + 80) rows[static_cast<std::size_t>(h * kept + j++)] = t;
  }
  layer.evict_tokens(keep_view::per_head(kvcrush::make_matrix_view<const index_t>(rows.data(), heads, kept)));
  check_invariants(layer);
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < kept; ++i) ASSERT_EQ(layer.positions()(h, i), rows[static_cast<std::size_t>(h * kept + i)]);
  // Attention still reads every head's own tokens.
  const auto q = quant_test::random_queries(heads, d, 13, 0.5f);
  std::vector<float> out(static_cast<std::size_t>(heads * d));
  kvcrush::workspace ws;
  kvcrush::attend(layer, kvcrush::make_matrix_view(q.data(), heads, d), kvcrush::make_matrix_view(out.data(), heads, d), ws);
  for (index_t h = 0; h < heads; ++h) {
    std::vector<index_t> tokens(rows.begin() + h * kept, rows.begin() + (h + 1) * kept);
    const auto ref = quant_test::reference_attention(q.data() + h * d, k, v, h, tokens, 1.0 / std::sqrt(32.0));
    EXPECT_LE(quant_test::relative_error(out.data() + h * d, ref), 0.15) << h;
  }
}

TEST(QuantEviction, BadKeepSetsAreRefusedAndChangeNothing) {
  const index_t heads = 2, d = 16, n = 100;
  const auto cfg = make_config(4, 16, 16);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 14), v = quant_test::model_like_values(heads, n, d, 15);
  auto layer = kvcrush::quantize_layer<float>(k.view(), v.view(), cfg);
  const auto before = snapshot(layer, 1);
  const auto memory = layer.memory();
  auto unchanged = [&] {
    const auto now = snapshot(layer, 1);
    EXPECT_EQ(now.keys, before.keys);
    EXPECT_EQ(now.positions, before.positions);
    EXPECT_EQ(layer.memory(), memory);
  };
  const std::vector<index_t> unsorted = {0, 5, 3};
  EXPECT_THROW(layer.evict_tokens(keep_view::shared(unsorted.data(), 3)), std::invalid_argument);
  unchanged();
  const std::vector<index_t> outside = {0, 100};
  EXPECT_THROW(layer.evict_tokens(keep_view::shared(outside.data(), 2)), std::invalid_argument);
  unchanged();
  const std::vector<index_t> ragged = {0, 1, 2, 0, 1, 9};
  const std::vector<index_t> counts = {3, 2};
  EXPECT_THROW(layer.evict_tokens(keep_view::ragged(kvcrush::make_matrix_view<const index_t>(ragged.data(), 2, 3),
                                                    kvcrush::make_vector_view<const index_t>(counts.data(), 2))),
               std::invalid_argument);
  unchanged();
  const std::vector<index_t> blocks = {0, 2};  // the partial last block (6) is missing
  EXPECT_THROW(layer.evict_blocks(kvcrush::make_vector_view<const index_t>(blocks.data(), 2), 16), std::invalid_argument);
  unchanged();
  EXPECT_THROW(layer.evict_blocks(kvcrush::make_vector_view<const index_t>(blocks.data(), 2), 0), std::invalid_argument);
  unchanged();
}

namespace {

// An independent check of one eviction, from what the layer shows before
// and after (not from its own requantization statistics): every surviving
// token is matched to its old row by position; a token in the window is
// its old row up to float16 rounding; a quantized key is within half a step
// of its old value, the step being that of the new group computed here from
// the old values of the group's members (with the slack of float16
// parameters: zero rounded down, scale rounded up); a quantized value row
// is within half a step of its own old row's range.
template <class W>
void check_eviction_changes(const quantized_layer<W>& layer, const std::vector<head_snapshot>& before) {
  const auto& cfg = layer.config();
  const index_t g = cfg.group_size, d = layer.head_dim(), vg = cfg.value_group == 0 ? d : cfg.value_group;
  const float kmax = static_cast<float>((1 << cfg.key_bits) - 1), vmax = static_cast<float>((1 << cfg.value_bits) - 1);
  // Half a step of [lo, hi], widened for float16 parameters (zero rounded
  // down, scale rounded up: 2^-9 of the magnitude) and for a survivor that
  // passes through the float16 window before it is quantized again (its
  // float16 rounding, 2^-11 of the magnitude, on top of the half step).
  auto half_step = [](float lo, float hi, float qmax) {
    const float magnitude = std::max(std::fabs(lo), std::fabs(hi));
    return 0.5f * ((hi - lo) + 0x1p-9f * magnitude) / qmax * (1.0f + 0x1p-9f) + 0x1p-11f * magnitude + 1e-6f;
  };
  for (index_t h = 0; h < layer.kv_heads(); ++h) {
    const auto after = snapshot(layer, h);
    const auto& old = before[static_cast<std::size_t>(h)];
    const auto n = static_cast<index_t>(after.positions.size());
    std::vector<index_t> from(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) {
      const auto it = std::lower_bound(old.positions.begin(), old.positions.end(), after.positions[static_cast<std::size_t>(i)]);
      ASSERT_TRUE(it != old.positions.end() && *it == after.positions[static_cast<std::size_t>(i)]) << "a token appeared";
      from[static_cast<std::size_t>(i)] = static_cast<index_t>(it - old.positions.begin());
    }
    auto old_key = [&](index_t i, index_t c) { return old.keys[static_cast<std::size_t>(from[static_cast<std::size_t>(i)] * d + c)]; };
    auto old_value = [&](index_t i, index_t c) { return old.values[static_cast<std::size_t>(from[static_cast<std::size_t>(i)] * d + c)]; };
    for (index_t i = after.quantized; i < n; ++i)
      for (index_t c = 0; c < d; ++c) {
        ASSERT_LE(std::fabs(after.keys[static_cast<std::size_t>(i * d + c)] - old_key(i, c)), std::fabs(old_key(i, c)) * 0x1p-11f);
        ASSERT_LE(std::fabs(after.values[static_cast<std::size_t>(i * d + c)] - old_value(i, c)), std::fabs(old_value(i, c)) * 0x1p-11f);
      }
    for (index_t j = 0; j < after.quantized / g; ++j)
      for (index_t c = 0; c < d; ++c) {
        float lo = old_key(j * g, c), hi = lo;
        for (index_t i = j * g; i < (j + 1) * g; ++i) {
          lo = std::min(lo, old_key(i, c));
          hi = std::max(hi, old_key(i, c));
        }
        for (index_t i = j * g; i < (j + 1) * g; ++i)
          ASSERT_LE(std::fabs(after.keys[static_cast<std::size_t>(i * d + c)] - old_key(i, c)), half_step(lo, hi, kmax))
              << "head " << h << " group " << j << " token " << after.positions[static_cast<std::size_t>(i)] << " c " << c;
      }
    for (index_t i = 0; i < after.quantized; ++i) {
      const bool was_quantized = from[static_cast<std::size_t>(i)] < old.quantized;
      for (index_t k = 0; k < d / vg; ++k) {
        float lo = old_value(i, k * vg), hi = lo;
        for (index_t c = k * vg; c < (k + 1) * vg; ++c) {
          lo = std::min(lo, old_value(i, c));
          hi = std::max(hi, old_value(i, c));
        }
        for (index_t c = k * vg; c < (k + 1) * vg; ++c) {
          const float now = after.values[static_cast<std::size_t>(i * d + c)];
          // A quantized row moves with its codes; a row that passes through
          // the window (a broken group's survivor, quantized again when the
          // window overflows) is requantized from its old values.
          ASSERT_LE(std::fabs(now - old_value(i, c)), half_step(lo, hi, vmax))
              << "head " << h << " token " << after.positions[static_cast<std::size_t>(i)] << " c " << c
              << (was_quantized ? " (was quantized)" : " (was in the window)");
        }
      }
    }
  }
}

// A decode loop: prefill, then one token per step with make_room /
// append / attention / observe, as an engine would run it.
template <class Cache>
void decode_with_controller(Cache& cache, const kv_rows& k, const kv_rows& v, kvcrush::eviction_settings settings,
                            index_t prefill, std::vector<index_t>& max_lengths) {
  kvcrush::eviction_controller<Cache> controller(cache, settings);
  kvcrush::workspace ws;
  const index_t heads = k.heads, d = k.dim, n = k.tokens;
  std::vector<float> probs(static_cast<std::size_t>(heads * n));
  const auto queries = quant_test::random_queries(heads, d, 99, 0.3f);
  max_lengths.assign(static_cast<std::size_t>(cache.layers()), 0);
  for (index_t l = 0; l < cache.layers(); ++l) cache.append(l, k.slice(0, prefill), v.slice(0, prefill));
  for (index_t t = prefill; t < n; ++t) {
    for (index_t l = 0; l < cache.layers(); ++l) {
      std::vector<head_snapshot> before;
      for (index_t h = 0; h < heads; ++h) before.push_back(snapshot(cache.layer(l), h));
      if (controller.make_room(l, 1, ws)) check_eviction_changes(cache.layer(l), before);
      cache.append(l, k.slice(t, 1), v.slice(t, 1));
      const auto& layer = cache.layer(l);
      const index_t len = layer.length();
      max_lengths[static_cast<std::size_t>(l)] = std::max(max_lengths[static_cast<std::size_t>(l)], len);
      for (index_t h = 0; h < heads; ++h) {
        float* row = probs.data() + h * len;
        kvcrush::key_scores(layer, h, kvcrush::make_vector_view(queries.data() + h * d, d), kvcrush::make_vector_view(row, len));
        kvcrush::simd::softmax_in_place(row, len, 0.125f);
      }
      controller.observe(l, kvcrush::make_matrix_view<const float>(probs.data(), heads, len));
    }
  }
}

}  // namespace

TEST(QuantEviction, ControllerDrivesAQuantizedCacheTokenByToken) {
  const index_t layers = 2, heads = 2, d = 64, n = 400, g = 16;
  const auto cfg = make_config(4, g, 32);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 16), v = quant_test::model_like_values(heads, n, d, 17);
  kvcrush::quantized_cache<kvcrush::float16> cache(layers, heads, d, 256, cfg);
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o+kvcrush");
  settings.budgets = {kvcrush::layer_budget{128, 4, 32}};
  settings.slack = 24;
  std::vector<index_t> max_lengths;
  decode_with_controller(cache, k, v, settings, 100, max_lengths);
  for (index_t l = 0; l < layers; ++l) {
    const auto& layer = cache.layer(l);
    EXPECT_LE(max_lengths[static_cast<std::size_t>(l)], 128 + 24);
    check_invariants(layer);
    EXPECT_GT(layer.requantization().groups, 0);  // token eviction breaks groups
    // The layer's own max_change_over_bound is not the oracle: every
    // eviction was checked from the outside by check_eviction_changes.
    // The sink and the newest tokens are still there.
    EXPECT_EQ(layer.positions()(0, 0), 0);
    EXPECT_EQ(layer.positions()(1, layer.length() - 1), n - 1);
  }
}

TEST(QuantEviction, ControllerInBlockModeNeverRequantizes) {
  const index_t layers = 1, heads = 2, d = 64, n = 500, g = 32;
  const auto cfg = make_config(2, g, 64);
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 18), v = quant_test::model_like_values(heads, n, d, 19);
  kvcrush::quantized_cache<kvcrush::float16> cache(layers, heads, d, 320, cfg);
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o+kvcrush");
  settings.policy.layout.block_size = g;  // whole groups
  settings.budgets = {kvcrush::layer_budget{192, 32, 64}};
  settings.slack = 64;
  std::vector<index_t> max_lengths;
  decode_with_controller(cache, k, v, settings, 150, max_lengths);
  const auto& layer = cache.layer(0);
  check_invariants(layer);
  EXPECT_LE(max_lengths[0], 192 + 64);
  EXPECT_EQ(layer.requantization().groups, 0);
  EXPECT_EQ(layer.requantization().dequantized_tokens, 0);
  EXPECT_EQ(layer.positions()(0, layer.length() - 1), n - 1);
}
