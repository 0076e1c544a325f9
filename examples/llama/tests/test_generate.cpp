// Generation: llama2.c's sampler (its generator's numbers, its inverse-CDF
// draw, reproducibility for a seed), the generation loop's token counts, and
// decode-time eviction through kvcrush's eviction_controller (the cache held
// to the budget, the rows StreamingLLM must keep, no change while the budget
// covers everything, AdaKV's ragged heads).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "decode_eviction.hpp"
#include "engine.hpp"
#include "generate.hpp"
#include "llama_test_support.hpp"
#include "tokenizer.hpp"

namespace {

using kvcrush::index_t;
using kvcrush_llama::engine;
using kvcrush_llama::model;
using kvcrush_llama::sampler;

TEST(Sampler, GeneratorIsLlama2cXorshift) {
  // Values of llama2.c's random_u32 for seeds 1 and 42, computed separately
  // (Python, 64-bit wrap-around) from its definition.
  sampler one(1.0f, 1), answer(1.0f, 42);
  for (std::uint32_t expected : {1206177355u, 2882512552u, 3117485455u, 1303648416u}) EXPECT_EQ(one.next_u32(), expected);
  for (std::uint32_t expected : {1456360119u, 3359763283u, 3393612768u, 4054632243u}) EXPECT_EQ(answer.next_u32(), expected);
  sampler coin(1.0f, 1);
  EXPECT_EQ(coin.next_f32(), static_cast<float>(1206177355u >> 8) / 16777216.0f);
}

TEST(Sampler, DrawsByCumulativeProbability) {
  const float p[] = {0.25f, 0.5f, 0.25f};
  EXPECT_EQ(sampler::sample_mult(p, 3, 0.0f), 0);
  EXPECT_EQ(sampler::sample_mult(p, 3, 0.2499f), 0);
  EXPECT_EQ(sampler::sample_mult(p, 3, 0.25f), 1);
  EXPECT_EQ(sampler::sample_mult(p, 3, 0.74f), 1);
  EXPECT_EQ(sampler::sample_mult(p, 3, 0.9f), 2);
  EXPECT_EQ(sampler::sample_mult(p, 3, 1.0f), 2) << "rounding below the coin: the last token";
  // Temperature 0 is the argmax; a very low one is too; the same seed draws
  // the same tokens, and a flat distribution reaches every token.
  Eigen::VectorXf logits(4);
  logits << 0.1f, 3.0f, -1.0f, 2.9f;
  sampler greedy(0.0f, 0);
  EXPECT_EQ(greedy(logits), 1);
  sampler cold(1e-3f, 3);
  EXPECT_EQ(cold(logits), 1);
  sampler a(1.0f, 9), b(1.0f, 9);
  Eigen::VectorXf flat = Eigen::VectorXf::Zero(4);
  std::vector<int> seen(4, 0);
  for (int i = 0; i < 400; ++i) {
    const int x = a(flat);
    EXPECT_EQ(x, b(flat));
    seen[static_cast<std::size_t>(x)] += 1;
  }
  for (int n : seen) EXPECT_GT(n, 60) << "a flat distribution is sampled roughly evenly";
  EXPECT_THROW(sampler(1.0f, 0), std::invalid_argument) << "xorshift never leaves state 0";
  EXPECT_THROW(sampler(-1.0f, 1), std::invalid_argument);
}

struct generated {
  std::vector<int> tokens;
  std::string text;
  index_t peak = 0;   // rows in the longest head
  double mean_peak = 0;  // rows in a layer, mean over its KV heads
  index_t selections = 0;
  std::vector<std::vector<index_t>> last_positions;  // layer 0's cache positions per KV head at the end
};

// Generates `positions` positions from the prompt, with decode-time eviction
// when a plan is given, checking after every token that no layer holds more
// than budget + slack rows.
generated run(const model& m, const kvcrush_llama::tokenizer& vocabulary, const std::string& prompt, index_t positions,
              const kvcrush_llama::eviction_plan* plan, float temperature = 0.0f, std::uint64_t seed = 1) {
  const index_t capacity = plan ? std::min(positions, kvcrush_llama::eviction_capacity(*plan)) : positions;
  engine e(m, kvcrush_llama::make_store(m.config(), plan, capacity, false));
  std::unique_ptr<kvcrush_llama::decode_eviction> eviction;
  if (plan) eviction = kvcrush_llama::make_decode_eviction(e, *plan);
  e.set_observer(eviction.get());
  kvcrush::workspace ws;
  sampler pick(temperature, seed);
  generated out;
  out.tokens = kvcrush_llama::generate(
      e, vocabulary, vocabulary.encode(prompt, true, false), positions, pick,
      [&] {
        if (eviction) eviction->before_token(ws);
        for (index_t l = 0; l < m.config().n_layers; ++l) {
          for (index_t h = 0; h < m.config().n_kv_heads; ++h) EXPECT_LT(e.cache().length(l, h), capacity + 1);
        }
      },
      [&](std::string_view piece) { out.text += piece; });
  if (eviction) {
    out.peak = eviction->peak_head_rows();
    out.mean_peak = eviction->peak_mean_rows();
    out.selections = eviction->selections();
  }
  auto* store = dynamic_cast<kvcrush_llama::contiguous_store*>(&e.cache());
  if (store == nullptr) return out;  // AdaKV's per-head store
  const auto p = store->cache().positions(0);
  for (index_t h = 0; h < p.extent(0); ++h) {
    out.last_positions.emplace_back();
    for (index_t t = 0; t < store->cache().length(0); ++t) out.last_positions.back().push_back(p(h, t));
  }
  return out;
}

TEST(Generate, CountsPromptAndGeneratedTokens) {
  LLAMA_REQUIRE_SHARED_MODEL();
  const model m = model::load(llama_test::shared_model().string());
  const auto vocabulary = kvcrush_llama::tokenizer::load(llama_test::shared_tokenizer().string(), 512);
  const auto prompt = vocabulary.encode("Lily liked", true, false);
  // kvcrush-llama's --steps N runs prompt - 1 + N positions: N new tokens.
  const auto g = run(m, vocabulary, "Lily liked", static_cast<index_t>(prompt.size()) - 1 + 30, nullptr);
  ASSERT_EQ(g.tokens.size(), prompt.size() + 30);
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), g.tokens.begin()));
  // Sampling: the same seed gives the same text, another seed another one.
  const auto s1 = run(m, vocabulary, "", 80, nullptr, 1.0f, 5);
  const auto s2 = run(m, vocabulary, "", 80, nullptr, 1.0f, 5);
  const auto s3 = run(m, vocabulary, "", 80, nullptr, 1.0f, 6);
  EXPECT_EQ(s1.text, s2.text);
  EXPECT_NE(s1.text, s3.text);
  EXPECT_NE(s1.text, run(m, vocabulary, "", 80, nullptr).text) << "temperature 1 is not greedy";
}

TEST(Generate, DecodeTimeEvictionHoldsTheBudget) {
  LLAMA_REQUIRE_SHARED_MODEL();
  const model m = model::load(llama_test::shared_model().string());
  const auto vocabulary = kvcrush_llama::tokenizer::load(llama_test::shared_tokenizer().string(), 512);
  const auto full = run(m, vocabulary, "", 150, nullptr);

  // A budget covering every position: nothing is evicted, the text is the
  // full cache's.
  kvcrush_llama::eviction_plan roomy;
  roomy.policy = kvcrush::policy_config::parse("h2o");
  roomy.budget = {150, 4, 16};
  const auto untouched = run(m, vocabulary, "", 150, &roomy);
  EXPECT_EQ(untouched.text, full.text);
  EXPECT_EQ(untouched.selections, 0);

  // Every policy the controller takes, at 48 tokens: never above the budget
  // (the engine's cache is allocated at budget + slack and refuses more).
  for (const char* name : {"h2o", "snapkv", "tova", "knorm", "random", "pyramidkv", "h2o+kvcrush", "snapkv+kvcrush",
                           "keydiff", "expected_attention", "rkv", "rkv+kvcrush"}) {
    kvcrush_llama::eviction_plan plan;
    plan.policy = kvcrush::policy_config::parse(name);
    plan.policy.expected_attention.rope_interleaved = true;
    plan.budget = kvcrush_llama::plan_budget(plan.policy, 48, 4, 16);
    plan.slack = 3;
    const auto g = run(m, vocabulary, "", 150, &plan);
    EXPECT_EQ(g.tokens.size(), 151u) << name;
    EXPECT_LE(g.peak, 51) << name;
    EXPECT_GT(g.selections, 0) << name;
    EXPECT_EQ(g.text.substr(0, 60), full.text.substr(0, 60)) << name << ": the first 48 tokens are unaffected";
  }

  // StreamingLLM keeps exactly the sink and the most recent tokens.
  kvcrush_llama::eviction_plan streaming;
  streaming.policy = kvcrush::policy_config::parse("streaming");
  streaming.budget = kvcrush_llama::plan_budget(streaming.policy, 20, 4, 16);
  EXPECT_EQ(streaming.budget.recent, 16);
  const auto s = run(m, vocabulary, "", 100, &streaming);
  std::vector<index_t> expected = {0, 1, 2, 3};
  for (index_t p = 100 - 16; p < 100; ++p) expected.push_back(p);
  for (const auto& head : s.last_positions) EXPECT_EQ(head, expected);
  EXPECT_NE(s.text, full.text.substr(0, s.text.size())) << "a 20-token window changes the story";

  // AdaKV: the controller's head-wise mode. With a budget covering everything
  // nothing changes; with slack the heads get different shares, whose mean
  // the budget bounds (plus slack), and the layer's total budget is kept.
  kvcrush_llama::eviction_plan ada;
  ada.policy = kvcrush::policy_config::parse("snapkv+adakv");
  ada.budget = {150, 4, 16};
  EXPECT_EQ(run(m, vocabulary, "", 150, &ada).text, full.text);
  for (const char* name : {"snapkv+adakv", "h2o+adakv+kvcrush", "knorm+adakv", "rkv+adakv", "expected_attention+adakv"}) {
    ada.policy = kvcrush::policy_config::parse(name);
    ada.budget = {48, 4, 16};
    ada.slack = 12;
    const auto g = run(m, vocabulary, "", 150, &ada);
    EXPECT_EQ(g.tokens.size(), 151u) << name;
    EXPECT_LE(g.mean_peak, 60.0) << name;
    EXPECT_GT(g.peak, 60) << name << ": some head holds more than the mean";
    EXPECT_LE(g.peak, 48 + 2 * 12) << name << ": the capacity make_store allocated";
    EXPECT_GT(g.selections, 0) << name;
  }

  // What the controllers refuse.
  engine e(m, 64);
  EXPECT_THROW((void)kvcrush_llama::make_decode_eviction(e, ada), std::invalid_argument) << "AdaKV needs per-head";
  EXPECT_THROW((void)kvcrush_llama::make_store(m.config(), &ada, 64, true), std::invalid_argument) << "not paged";
  engine paged(m, std::make_unique<kvcrush_llama::paged_store>(5, 4, 8, 64, 16));
  kvcrush_llama::eviction_plan norms;
  norms.policy = kvcrush::policy_config::parse("knorm");
  norms.budget = {48, 4, 16};
  EXPECT_THROW((void)kvcrush_llama::make_decode_eviction(paged, norms), std::invalid_argument);
  for (const char* name : {"keydiff", "expected_attention", "rkv"}) {  // they read the keys too
    norms.policy = kvcrush::policy_config::parse(name);
    EXPECT_THROW((void)kvcrush_llama::make_decode_eviction(paged, norms), std::invalid_argument) << name;
  }
}

}  // namespace
