// The adaptive KVCrush split (docs/SEMANTICS.md, "Adaptive KVCrush split"):
// a hand-computed case, the plain reference of spec_reference.hpp over
// random inputs in shared, per-head, block and head-wise-budget modes, the
// mass = 1 and zero-mass rules, the equivalence with the fixed split, every
// ISA against the scalar build, bad input, and the policy-level plumbing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcrush/policy/mixed_precision.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/select/keep.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
using kvcrush::index_t;

namespace {

using Keep = std::vector<std::vector<long>>;

spec::Rows rows_of(const std::vector<float>& flat, index_t rows, index_t tokens) {
  spec::Rows out(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(tokens)));
  for (index_t r = 0; r < rows; ++r)
    for (index_t t = 0; t < tokens; ++t) out[r][t] = flat[static_cast<std::size_t>(r * tokens + t)];
  return out;
}

// The library's keep sets (rows of positions or block indices).
template <class Isa = isa::active>
Keep run(const std::vector<float>& scores, index_t heads, index_t tokens, const kvcrush::keep_config& cfg,
         kvcrush::workspace& ws, const std::vector<index_t>& rest = {}) {
  const index_t rows = cfg.per_head ? heads : 1;
  index_t width = kvcrush::keep_count(cfg, tokens) + 2;
  for (index_t r : rest) width = std::max(width, cfg.sink + cfg.recent + r + 2);
  std::vector<index_t> out(static_cast<std::size_t>(rows * width), -1);
  std::vector<index_t> counts(static_cast<std::size_t>(rows), -1);
  const auto view = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto out_view = kvcrush::make_matrix_view(out.data(), rows, width);
  if (rest.empty()) {
    const index_t count = kvcrush::select_keep<Isa>(view, cfg, out_view, ws);
    for (auto& c : counts) c = count;
  } else {
    kvcrush::select_keep_ragged<Isa>(view, cfg, kvcrush::make_vector_view(rest.data(), heads), out_view,
                                     kvcrush::make_vector_view(counts.data(), rows), ws);
  }
  Keep result(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    const auto begin = out.begin() + r * width;
    result[static_cast<std::size_t>(r)].assign(begin, begin + counts[static_cast<std::size_t>(r)]);
  }
  return result;
}

kvcrush::keep_config adaptive(index_t budget, index_t sink, index_t recent, double mass) {
  kvcrush::keep_config cfg;
  cfg.budget = budget;
  cfg.sink = sink;
  cfg.recent = recent;
  cfg.split = kvcrush::crush_split::adaptive;
  cfg.crush_mass = mass;
  cfg.crush_fraction = 0.3;  // unused by the adaptive split
  return cfg;
}

// Non-negative scores on a coarse grid (ties), some exact zeros, some +inf.
std::vector<float> mass_scores(std::size_t n, std::mt19937& rng, int levels, double inf_rate, double zero_rate) {
  std::uniform_int_distribution<int> level(0, levels - 1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> out(n);
  for (auto& v : out) {
    const double x = u(rng);
    if (x < inf_rate) {
      v = std::numeric_limits<float>::infinity();
    } else if (x < inf_rate + zero_rate) {
      v = 0.0f;
    } else {
      v = static_cast<float>(level(rng) + 1) / static_cast<float>(levels) * 0.37f;
    }
  }
  return out;
}

}  // namespace

// E = positions 1..8 with scores 4 1 2 1 0 3 0 5 (mass 16); B_rest = 4.
TEST(AdaptiveSplit, HandComputedCase) {
  kvcrush::workspace ws;
  const std::vector<float> scores{9, 4, 1, 2, 1, 0, 3, 0, 5, 9};
  // mass 0.5: ranked 5 (pos 8), 4 (pos 1): 9 >= 8 after two -> B_imp = 2,
  // and the 2 representatives come from the other six evictable tokens.
  auto cfg = adaptive(6, 1, 1, 0.5);
  cfg.anchor = kvcrush::anchor_mode::zeros;
  cfg.representative = kvcrush::representative_rule::bucket_start;
  const auto got = run(scores, 1, 10, cfg, ws);
  ASSERT_EQ(got.size(), 1u);
  // Signature (one head, median over 8 tokens: top 4 = pos 8, 1, 6, 3 set);
  // candidates by (distance to zeros, position): 2 4 5 7 (d 0), 3 6 (d 1);
  // bucket_start with n = 6, k = 2 takes C[0] = 2 and C[3] = 7.
  EXPECT_EQ(got[0], (std::vector<long>{0, 1, 2, 7, 8, 9}));
  auto fixed = cfg;
  fixed.split = kvcrush::crush_split::fixed;
  fixed.crush_fraction = 0.5;
  EXPECT_EQ(run(scores, 1, 10, fixed, ws), got) << "the same split as the fixed fraction 0.5";
  // mass 0.9: 5 4 3 2 1 = 15 >= 14.4 needs five, capped at B_rest = 4:
  // importance only (positions 8 1 6 3).
  cfg.crush_mass = 0.9;
  EXPECT_EQ(run(scores, 1, 10, cfg, ws)[0], (std::vector<long>{0, 1, 3, 6, 8, 9}));
  // mass 0.25: 5 >= 4 -> one importance pick (8) and three representatives.
  cfg.crush_mass = 0.25;
  fixed.crush_fraction = 0.75;
  EXPECT_EQ(run(scores, 1, 10, cfg, ws), run(scores, 1, 10, fixed, ws));
  EXPECT_EQ(spec::adaptive_importance({4, 1, 2, 1, 0, 3, 0, 5}, 4, 0.25), 1);
  EXPECT_EQ(spec::adaptive_importance({4, 1, 2, 1, 0, 3, 0, 5}, 8, 1.0), 6) << "every non-zero unit";
}

TEST(AdaptiveSplit, MatchesReferenceOnRandomInputs) {
  std::mt19937 rng(20261205);
  auto pick = [&](long lo, long hi) { return std::uniform_int_distribution<long>(lo, hi)(rng); };
  kvcrush::workspace ws;
  int evicting = 0, mixed = 0;
  for (int iteration = 0; iteration < 500; ++iteration) {
    const index_t heads = std::vector<index_t>{1, 2, 3, 4, 7, 8, 65}[static_cast<std::size_t>(pick(0, 6))];
    const index_t b = pick(0, 3) == 0 ? std::vector<index_t>{2, 3, 4, 16}[static_cast<std::size_t>(pick(0, 3))] : 1;
    auto cfg = adaptive(0, b * pick(0, 3), b * pick(0, 4),
                        std::vector<double>{0.01, 0.3, 0.5, 0.9, 0.97, 1.0}[static_cast<std::size_t>(pick(0, 5))]);
    cfg.block_size = b;
    cfg.budget = cfg.sink + cfg.recent + b * pick(0, 40);
    cfg.per_head = pick(0, 1) == 0;
    cfg.anchor = static_cast<kvcrush::anchor_mode>(pick(0, 5));
    cfg.representative = static_cast<kvcrush::representative_rule>(pick(0, 3));
    cfg.seed = static_cast<std::uint64_t>(pick(0, 99));
    const index_t tokens = pick(0, 4) == 0 ? pick(0, cfg.budget + 3) : cfg.budget + pick(1, 333);
    const int levels = static_cast<int>(pick(1, 30));
    auto scores = mass_scores(static_cast<std::size_t>(heads * tokens), rng, levels, pick(0, 4) == 0 ? 0.02 : 0.0,
                              std::vector<double>{0.0, 0.3, 1.0}[static_cast<std::size_t>(pick(0, 2))]);
    // -0.0 is a zero of the mass and ties with +0.0 by position.
    if (pick(0, 1) == 0)
      for (auto& v : scores) v = v == 0.0f && pick(0, 1) == 0 ? -0.0f : v;
    if (pick(0, 5) == 0 && tokens > 0) {
      // One head's whole row of zeros (a zero-mass row in per-head mode).
      const index_t h = pick(0, heads - 1);
      for (index_t t = 0; t < tokens; ++t) scores[static_cast<std::size_t>(h * tokens + t)] = 0.0f;
    }
    std::vector<index_t> rest;
    std::vector<long> rest_long;
    const index_t units = tokens / b;
    const bool evicts = units > cfg.budget / b;
    if (cfg.per_head && b == 1 && evicts && pick(0, 2) == 0) {
      // Head-wise budgets (AdaKV): each head its own B_rest.
      for (index_t h = 0; h < heads; ++h) {
        rest.push_back(pick(0, units - cfg.sink - cfg.recent));
        rest_long.push_back(rest.back());
      }
    }
    const auto S = rows_of(scores, heads, tokens);
    const auto expected = spec::keep(S, S, cfg, rest_long);
    const auto got = run(scores, heads, tokens, cfg, ws, rest);
    const std::string what = "iteration " + std::to_string(iteration) + " H=" + std::to_string(heads) +
                             " N=" + std::to_string(tokens) + " B=" + std::to_string(cfg.budget) +
                             " b=" + std::to_string(b) + " mass=" + std::to_string(cfg.crush_mass) +
                             (cfg.per_head ? " per-head" : " shared") + (rest.empty() ? "" : " ragged");
    ASSERT_EQ(got, expected) << what;
    kvcrush_test::for_each_simd_isa([&](auto tag) {
      ASSERT_EQ((run<decltype(tag)>(scores, heads, tokens, cfg, ws, rest)),
                (run<isa::scalar>(scores, heads, tokens, cfg, ws, rest)))
          << decltype(tag)::name << " " << what;
    });
    if (evicts) {
      ++evicting;
      // Count the rows where the rule actually split (neither all importance
      // nor all representatives), so that the test is known to reach them.
      const long rest0 = rest.empty() ? cfg.budget / b - cfg.sink / b - cfg.recent / b : rest_long[0];
      std::vector<float> e;
      for (index_t u = cfg.sink / b; u < units - cfg.recent / b; ++u) {
        float sum = 0.0f;
        for (index_t i = 0; i < b; ++i) {
          float v = S[0][static_cast<std::size_t>(u * b + i)];
          if (!cfg.per_head)
            for (index_t h = 1; h < heads; ++h) v += S[static_cast<std::size_t>(h)][static_cast<std::size_t>(u * b + i)];
          sum = i == 0 ? v : sum + v;
        }
        e.push_back(sum);
      }
      const long k = spec::adaptive_importance(e, rest0, cfg.crush_mass);
      mixed += k > 0 && k < rest0;
    }
  }
  EXPECT_GT(evicting, 300);
  EXPECT_GT(mixed, 60);
}

// mass = 1: every unit with non-zero mass is an importance pick (as far as
// the budget goes); zero-mass units are left to KVCrush. A zero-mass row
// gives everything to KVCrush.
TEST(AdaptiveSplit, FullMassAndZeroMass) {
  kvcrush::workspace ws;
  const index_t tokens = 40;
  std::vector<float> scores(static_cast<std::size_t>(tokens), 0.0f);
  const std::vector<index_t> hot{3, 9, 10, 22, 31};
  for (index_t t : hot) scores[static_cast<std::size_t>(t)] = static_cast<float>(t % 7 + 1);
  auto cfg = adaptive(20, 2, 2, 1.0);
  const auto got = run(scores, 1, tokens, cfg, ws);
  auto fixed = cfg;
  fixed.split = kvcrush::crush_split::fixed;
  fixed.crush_fraction = kvcrush::crush_fraction_for(16 - 5, 16);
  EXPECT_EQ(got, run(scores, 1, tokens, fixed, ws));
  for (index_t t : hot) EXPECT_TRUE(std::binary_search(got[0].begin(), got[0].end(), t)) << t;
  // The budget caps the importance picks.
  cfg.budget = 7;  // B_rest = 3 < 5 non-zero tokens
  fixed.budget = 7;
  fixed.crush_fraction = 0.0;
  EXPECT_EQ(run(scores, 1, tokens, cfg, ws), run(scores, 1, tokens, fixed, ws));
  // Zero mass: no importance picks at all, whatever the mass target.
  std::vector<float> zeros(static_cast<std::size_t>(3 * tokens), 0.0f);
  for (double mass : {0.01, 0.9, 1.0}) {
    for (bool per_head : {false, true}) {
      auto z = adaptive(20, 2, 2, mass);
      z.per_head = per_head;
      auto all_crush = z;
      all_crush.split = kvcrush::crush_split::fixed;
      all_crush.crush_fraction = 1.0;
      EXPECT_EQ(run(zeros, 3, tokens, z, ws), run(zeros, 3, tokens, all_crush, ws)) << mass << " " << per_head;
    }
  }
  // +inf units are all needed, before any finite one.
  std::vector<float> inf_scores(static_cast<std::size_t>(tokens), 1.0f);
  inf_scores[5] = inf_scores[17] = inf_scores[30] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(spec::adaptive_importance(std::vector<float>(inf_scores.begin() + 2, inf_scores.end() - 2), 16, 0.01),
            4);
  auto inf_cfg = adaptive(20, 2, 2, 0.01);
  fixed = inf_cfg;
  fixed.split = kvcrush::crush_split::fixed;
  fixed.crush_fraction = kvcrush::crush_fraction_for(12, 16);
  EXPECT_EQ(run(inf_scores, 1, tokens, inf_cfg, ws), run(inf_scores, 1, tokens, fixed, ws));
}

// Wherever the mass rule picks k importance units, the adaptive split equals
// the fixed split whose fraction gives B_rest - k representatives.
TEST(AdaptiveSplit, EqualsFixedSplitWithTheSameCount) {
  std::mt19937 rng(77);
  kvcrush::workspace ws;
  for (int iteration = 0; iteration < 200; ++iteration) {
    const index_t heads = 1 + iteration % 5, tokens = 64 + iteration;
    auto scores = mass_scores(static_cast<std::size_t>(heads * tokens), rng, 1 + iteration % 17, 0.0, 0.2);
    auto cfg = adaptive(32, 4, 8, std::min(1.0, 0.05 + 0.95 * (iteration % 20) / 19.0));
    cfg.block_size = iteration % 3 == 0 ? 4 : 1;
    const index_t b = cfg.block_size;
    std::vector<float> e;
    for (index_t u = cfg.sink / b; u < tokens / b - cfg.recent / b; ++u) {
      float sum = 0.0f;
      for (index_t i = 0; i < b; ++i) {
        float v = scores[static_cast<std::size_t>(u * b + i)];
        for (index_t h = 1; h < heads; ++h) v += scores[static_cast<std::size_t>(h * tokens + u * b + i)];
        sum = i == 0 ? v : sum + v;
      }
      e.push_back(sum);
    }
    const long rest = cfg.budget / b - cfg.sink / b - cfg.recent / b;
    const long k = spec::adaptive_importance(e, rest, cfg.crush_mass);
    auto fixed = cfg;
    fixed.split = kvcrush::crush_split::fixed;
    fixed.crush_fraction = kvcrush::crush_fraction_for(rest - k, rest);
    ASSERT_EQ(run(scores, heads, tokens, cfg, ws), run(scores, heads, tokens, fixed, ws)) << iteration;
  }
}

TEST(AdaptiveSplit, BadInputIsRefusedWithoutTouchingTheOutput) {
  kvcrush::workspace ws;
  std::vector<float> scores(2 * 50);
  for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>(i % 13);
  std::vector<index_t> out(100, -7);
  auto expect_error = [&](const kvcrush::keep_config& cfg, const std::vector<float>& s, const std::string& fragment) {
    try {
      kvcrush::select_keep(kvcrush::make_matrix_view(s.data(), 2, 50), cfg,
                           kvcrush::make_matrix_view(out.data(), cfg.per_head ? 2 : 1, 50), ws);
      ADD_FAILURE() << "accepted; expected an error about " << fragment;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    for (index_t v : out) ASSERT_EQ(v, -7) << "output untouched on error";
  };
  for (double mass : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()}) {
    expect_error(adaptive(20, 2, 4, mass), scores, "crush_mass must be in (0, 1]");
  }
  auto streaming = adaptive(20, 2, 4, 0.9);
  streaming.rank_importance = false;
  expect_error(streaming, scores, "StreamingLLM");
  auto bad_split = adaptive(20, 2, 4, 0.9);
  bad_split.split = static_cast<kvcrush::crush_split>(7);
  expect_error(bad_split, scores, "neither fixed nor adaptive");
  for (bool per_head : {false, true}) {
    for (float negative : {-0.25f, -std::numeric_limits<float>::infinity()}) {
      auto s = scores;
      s[60] = negative;  // head 1, token 10: evictable
      auto cfg = adaptive(20, 2, 4, 0.9);
      cfg.per_head = per_head;
      expect_error(cfg, s, "non-negative");
      cfg.budget = 6;  // B_rest = 0: still an attention mass required
      expect_error(cfg, s, "non-negative");
    }
    auto s = scores;
    s[30] = std::numeric_limits<float>::quiet_NaN();
    auto cfg = adaptive(20, 2, 4, 0.9);
    cfg.per_head = per_head;
    expect_error(cfg, s, "NaN");
  }
  // Negative scores in the protected regions are not part of the mass.
  auto s = scores;
  s[0] = -1.0f;
  s[99] = -1.0f;
  EXPECT_NO_THROW(run(s, 2, 50, adaptive(20, 2, 4, 0.9), ws));
  // The fixed split keeps accepting signed scores.
  s[60] = -3.0f;
  auto fixed = adaptive(20, 2, 4, 0.9);
  fixed.split = kvcrush::crush_split::fixed;
  EXPECT_NO_THROW(run(s, 2, 50, fixed, ws));
}

TEST(AdaptiveSplit, WarmWorkspaceDoesNotAllocate) {
  kvcrush::workspace ws;
  const index_t heads = 8, tokens = 3000;
  std::mt19937 rng(5);
  const auto scores = mass_scores(static_cast<std::size_t>(heads * tokens), rng, 50, 0.0, 0.1);
  std::vector<index_t> out(static_cast<std::size_t>(heads * 1000));
  std::vector<index_t> counts(static_cast<std::size_t>(heads));
  std::vector<index_t> rest(static_cast<std::size_t>(heads), 500);
  auto cfg = adaptive(1000, 4, 32, 0.9);
  const auto view = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  ws.reserve(heads, tokens, 0, 4);
  const auto before = ws.allocations();
  for (bool per_head : {false, true}) {
    for (index_t block : {1, 4}) {
      cfg.per_head = per_head;
      cfg.block_size = block;
      kvcrush::select_keep(view, cfg, kvcrush::make_matrix_view(out.data(), per_head ? heads : 1, 1000), ws);
    }
  }
  cfg.block_size = 1;
  kvcrush::select_keep_ragged(view, cfg, kvcrush::make_vector_view(rest.data(), heads),
                              kvcrush::make_matrix_view(out.data(), heads, 1000),
                              kvcrush::make_vector_view(counts.data(), heads), ws);
  EXPECT_EQ(ws.allocations(), before) << "reserve() covers the adaptive split";
}

// The policy layer: crush_options reach the selection; signed-score policies
// and StreamingLLM are refused up front; names parse and print.
TEST(AdaptiveSplit, PolicyOptions) {
  EXPECT_EQ(kvcrush::parse_crush_split("adaptive"), kvcrush::crush_split::adaptive);
  EXPECT_EQ(kvcrush::parse_crush_split("fixed"), kvcrush::crush_split::fixed);
  EXPECT_EQ(kvcrush::to_string(kvcrush::crush_split::adaptive), "adaptive");
  try {
    kvcrush::parse_crush_split("sometimes");
    ADD_FAILURE() << "accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected one of: fixed, adaptive"), std::string::npos) << e.what();
  }

  kvcrush::workspace ws;
  const index_t heads = 2, tokens = 60;
  std::mt19937 rng(9);
  const auto scores = mass_scores(static_cast<std::size_t>(heads * tokens), rng, 9, 0.0, 0.3);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const kvcrush::layer_budget budget{24, 2, 4};
  std::vector<index_t> positions(static_cast<std::size_t>(heads * 24)), counts(static_cast<std::size_t>(heads));
  auto select = [&](const kvcrush::policy_config& cfg) {
    const index_t rows = cfg.layout.per_head ? heads : 1;
    kvcrush::keep_sets out{kvcrush::make_matrix_view(positions.data(), rows, 24),
                           kvcrush::make_vector_view(counts.data(), rows)};
    kvcrush::select(cfg, in, budget, out, ws);
    return std::vector<index_t>(positions.begin(), positions.begin() + rows * 24);
  };
  for (bool per_head : {false, true}) {
    auto cfg = kvcrush::policy_config::parse("precomputed+kvcrush");
    cfg.layout.per_head = per_head;
    cfg.crush.split = kvcrush::crush_split::adaptive;
    cfg.crush.mass = 0.6;
    const auto got = select(cfg);
    kvcrush::keep_config kc = adaptive(24, 2, 4, 0.6);
    kc.per_head = per_head;
    const auto expected = run(scores, heads, tokens, kc, ws);
    std::vector<index_t> flat;
    for (const auto& row : expected) flat.insert(flat.end(), row.begin(), row.end());
    EXPECT_EQ(got, flat) << per_head;
  }
  auto bad = kvcrush::policy_config::parse("precomputed+kvcrush");
  bad.crush.split = kvcrush::crush_split::adaptive;
  bad.crush.mass = 0.0;
  EXPECT_THROW(select(bad), std::invalid_argument);
  for (const char* name : {"knorm+kvcrush", "keydiff+kvcrush", "rkv+kvcrush", "streaming+kvcrush"}) {
    auto cfg = kvcrush::policy_config::parse(name);
    cfg.crush.split = kvcrush::crush_split::adaptive;
    try {
      select(cfg);
      ADD_FAILURE() << name << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("adaptive KVCrush split"), std::string::npos) << e.what();
    }
  }
}
