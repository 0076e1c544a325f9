// The engine's quantized and mixed-precision stores: the tiered store's union
// in position order through demotion and eviction, its attention against
// the dequantized rows, byte accounting, both stores against the float32
// engine, and refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "engine.hpp"
#include "llama_test_support.hpp"
#include "quantized_stores.hpp"

namespace {

using kvcrush::float16;
using kvcrush::index_t;
using kvcrush_llama::engine;
using kvcrush_llama::model;

model small_model() {
  const auto c = llama_test::small_config(true);
  return model(c, llama_test::random_weights(c, 23));
}

kvcrush::quant_config quant(int bits, index_t window) {
  kvcrush::quant_config q;
  q.key_bits = q.value_bits = bits;
  q.group_size = 16;
  q.window = window;
  return q;
}

int token_at(int i) { return (i * 7 + 3) % 32; }

// An engine on a tiered store whose low tier has `bits`, fed `tokens`
// tokens; store() is the engine's store.
struct tiered_engine {
  kvcrush_llama::tiered_store* tiers;
  engine e;
  tiered_engine(const model& m, int bits, int tokens)
      : tiers(nullptr), e(m, make(m, bits, tiers)) {
    for (int i = 0; i < tokens; ++i) e.forward(token_at(i));
  }
  kvcrush_llama::tiered_store& store() { return *tiers; }

 private:
  static std::unique_ptr<kvcrush_llama::kv_store> make(const model& m, int bits, kvcrush_llama::tiered_store*& out) {
    const auto& c = m.config();
    auto s = std::make_unique<kvcrush_llama::tiered_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 64, quant(bits, 0));
    out = s.get();
    return s;
  }
};

// Union positions of one layer.
std::vector<index_t> positions_of(const kvcrush_llama::tiered_store& s, index_t l) {
  std::vector<index_t> out;
  for (index_t u = 0; u < s.length(l); ++u) out.push_back(s.position(l, u));
  return out;
}

}  // namespace

TEST(QuantizedStores, BothStayCloseToTheFloat32Engine) {
  const model m = small_model();
  const auto& c = m.config();
  engine reference(m, 64);
  engine int8(m, std::make_unique<kvcrush_llama::quantized_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 64, quant(8, 16)));
  engine half(m, std::make_unique<kvcrush_llama::tiered_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 64, quant(4, 0)));
  for (int i = 0; i < 60; ++i) {
    const Eigen::VectorXf expected = reference.forward(token_at(i));
    const Eigen::VectorXf a = int8.forward(token_at(i)), b = half.forward(token_at(i));
    const float scale = expected.cwiseAbs().maxCoeff();
    // float16 rows: ~1e-3 relative; int8 codes over groups of 16 tokens: ~1e-2.
    ASSERT_LT((b - expected).cwiseAbs().maxCoeff(), 5e-3f * scale) << "float16 tier, token " << i;
    ASSERT_LT((a - expected).cwiseAbs().maxCoeff(), 5e-2f * scale) << "int8, token " << i;
  }
  // 60 tokens, window 16: groups of 16 formed while the window reached 32.
  const auto& q = dynamic_cast<kvcrush_llama::quantized_store&>(int8.cache()).cache();
  EXPECT_EQ(q.layer(0).groups(0), 2);
  EXPECT_EQ(int8.cache().memory(0), q.memory(0));
  EXPECT_EQ(half.cache().memory(1), kvcrush::plain_memory<float16>(c.n_kv_heads, 60, c.head_dim()));
}

TEST(TieredStore, UnionStaysInPositionOrderThroughDemotionAndEviction) {
  const model m = small_model();
  const auto& c = m.config();
  tiered_engine run(m, 2, 30);
  kvcrush_llama::tiered_store& s = run.store();
  engine& e = run.e;
  // Demote every odd row, then rows 0 and 2 (older than the low tier's).
  std::vector<index_t> odd;
  for (index_t u = 1; u < 30; u += 2) odd.push_back(u);
  s.demote(0, odd);
  s.demote(0, {0, 2});
  EXPECT_EQ(s.high_tokens(0), 13);
  EXPECT_EQ(s.low_tokens(0), 17);  // one group of 16 + one float16 leftover
  EXPECT_EQ(s.low().layer(0).groups(0), 1);
  std::vector<index_t> expected(30);
  for (index_t t = 0; t < 30; ++t) expected[static_cast<std::size_t>(t)] = t;
  EXPECT_EQ(positions_of(s, 0), expected);
  for (index_t u = 0; u < 30; ++u) EXPECT_EQ(s.is_low(0, u), u % 2 == 1 || u == 0 || u == 2) << u;
  EXPECT_EQ(s.memory(0).kv_bytes(), kvcrush::plain_memory<float16>(c.n_kv_heads, 13, c.head_dim()).kv_bytes() +
                                        s.low().memory(0).kv_bytes());
  // Eviction over the union keeps positions, whichever tier they are in.
  const std::vector<index_t> keep = {0, 1, 4, 5, 9, 20, 28, 29};
  s.evict(0, kvcrush::keep_view::shared(keep.data(), static_cast<index_t>(keep.size())));
  EXPECT_EQ(positions_of(s, 0), keep);
  EXPECT_EQ(s.high_tokens(0) + s.low_tokens(0), 8);
  EXPECT_TRUE(s.is_low(0, 0) && s.is_low(0, 1) && !s.is_low(0, 2) && s.is_low(0, 3));
  // Decoding goes on: new rows enter the float16 tier at the end.
  EXPECT_TRUE(e.forward(token_at(30)).allFinite());
  EXPECT_EQ(s.position(0, 8), 30);
  EXPECT_FALSE(s.is_low(0, 8));
  EXPECT_EQ(positions_of(s, 1).size(), 31u);  // layer 1 untouched
}

TEST(TieredStore, AttentionReadsBothTiersAsTheirDequantizedRows) {
  const model m = small_model();
  const auto& c = m.config();
  tiered_engine run(m, 4, 45);
  kvcrush_llama::tiered_store& s = run.store();
  std::vector<index_t> rows;
  for (index_t u = 0; u < 45; ++u)
    if (u % 3 != 2) rows.push_back(u);
  s.demote(1, rows);  // 30 rows: one group + 14 float16 leftovers in the low tier
  const index_t d = c.head_dim(), n = s.length(1), low_n = s.low_tokens(1);
  const auto& low = s.low().layer(1);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (index_t h = 0; h < c.n_kv_heads; ++h) {
    std::vector<float> lk(static_cast<std::size_t>(low_n * d)), lv(lk.size());
    low.dequantize_keys(h, kvcrush::make_matrix_view(lk.data(), low_n, d));
    low.dequantize_values(h, kvcrush::make_matrix_view(lv.data(), low_n, d));
    // Union row u: a float16 row of the high tier or a dequantized low one.
    std::vector<std::vector<float>> keys(static_cast<std::size_t>(n)), values(keys.size());
    index_t hi = 0;
    for (index_t u = 0; u < n; ++u) {
      if (s.is_low(1, u)) {
        index_t j = 0;
        while (low.positions()(0, j) != s.position(1, u)) ++j;
        keys[static_cast<std::size_t>(u)].assign(lk.begin() + j * d, lk.begin() + (j + 1) * d);
        values[static_cast<std::size_t>(u)].assign(lv.begin() + j * d, lv.begin() + (j + 1) * d);
      } else {
        for (index_t x = 0; x < d; ++x) {
          keys[static_cast<std::size_t>(u)].push_back(kvcrush::to_float(s.high().keys(1)(h, hi, x)));
          values[static_cast<std::size_t>(u)].push_back(kvcrush::to_float(s.high().values(1)(h, hi, x)));
        }
        ++hi;
      }
    }
    std::vector<float> q(static_cast<std::size_t>(d)), scores(static_cast<std::size_t>(n)), p(scores.size()), out(q.size());
    for (auto& x : q) x = uniform(rng);
    for (auto& x : p) x = uniform(rng) + 1.0f;
    s.key_scores(1, h, q.data(), scores.data());
    s.value_sum(1, h, p.data(), out.data());
    std::vector<double> expected_out(static_cast<std::size_t>(d), 0.0);
    for (index_t u = 0; u < n; ++u) {
      double dot = 0.0;
      for (index_t x = 0; x < d; ++x) {
        dot += q[static_cast<std::size_t>(x)] * keys[static_cast<std::size_t>(u)][static_cast<std::size_t>(x)];
        expected_out[static_cast<std::size_t>(x)] += p[static_cast<std::size_t>(u)] * values[static_cast<std::size_t>(u)][static_cast<std::size_t>(x)];
      }
      ASSERT_NEAR(scores[static_cast<std::size_t>(u)], dot, 1e-4 * (1.0 + std::abs(dot))) << "head " << h << " row " << u;
    }
    for (index_t x = 0; x < d; ++x)
      ASSERT_NEAR(out[static_cast<std::size_t>(x)], expected_out[static_cast<std::size_t>(x)], 1e-4 * (1.0 + std::abs(expected_out[static_cast<std::size_t>(x)])));
  }
}

TEST(QuantizedStores, RefuseWhatTheyCannotHold) {
  const model m = small_model();
  const auto& c = m.config();
  tiered_engine run(m, 4, 8);
  kvcrush_llama::tiered_store& s = run.store();
  s.demote(0, {1, 2});
  const std::vector<index_t> rows = {0, 1, 2, 3};
  const std::vector<index_t> counts = {2, 2};
  const auto per_head = kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(rows.data(), 2, 2),
                                                   kvcrush::make_vector_view<const index_t>(counts.data(), 2));
  EXPECT_THROW(s.evict(0, per_head), std::invalid_argument);
  EXPECT_THROW(s.demote(0, {1}), std::invalid_argument);     // already quantized
  EXPECT_THROW(s.demote(0, {5, 3}), std::invalid_argument);  // not ascending
  EXPECT_THROW(s.evict_blocks(0, kvcrush::make_vector_view<const index_t>(rows.data(), 1), 4), std::invalid_argument);
  EXPECT_THROW(s.for_each_run(0, 0, [](const kvcrush_llama::row_run&) {}), std::logic_error);
  const std::vector<index_t> outside = {0, 9};
  EXPECT_THROW(s.evict(0, kvcrush::keep_view::shared(outside.data(), 2)), std::invalid_argument);
  EXPECT_EQ(s.length(0), 8);  // nothing changed
  EXPECT_EQ(s.low_tokens(0), 2);
  kvcrush_llama::quantized_store q(c.n_layers, c.n_kv_heads, c.head_dim(), 64, quant(4, 16));
  EXPECT_THROW(q.evict(0, per_head), std::invalid_argument);
  EXPECT_THROW(q.for_each_run(0, 0, [](const kvcrush_llama::row_run&) {}), std::logic_error);
}
