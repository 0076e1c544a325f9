// The whole keep-set selection against SPEC written plainly, over random
// configurations: shared and per-head, token and block granularity, every
// anchor, rule and threshold, separate signature rows, ties and ±inf; plus
// the composition properties and every bad-input path.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "kvcrush/select/keep.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
using kvcrush::index_t;

namespace {

struct scenario {
  kvcrush::keep_config cfg;
  index_t heads = 1;
  index_t tokens = 0;
  index_t sig_heads = 0;  // 0: signatures from S
  std::vector<float> scores;
  std::vector<float> sig_scores;
};

spec::Rows rows_of(const std::vector<float>& flat, index_t rows, index_t tokens) {
  spec::Rows out(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(tokens)));
  for (index_t r = 0; r < rows; ++r)
    for (index_t t = 0; t < tokens; ++t) out[r][t] = flat[r * tokens + t];
  return out;
}

scenario random_scenario(std::mt19937& rng) {
  auto pick = [&](long lo, long hi) { return std::uniform_int_distribution<long>(lo, hi)(rng); };
  scenario s;
  auto& c = s.cfg;
  s.heads = std::vector<index_t>{1, 2, 3, 4, 8, 32, 65}[pick(0, 6)];
  const bool blocks = pick(0, 3) == 0;
  // Sizes that divide the 512-token tiles of head-major bits (2, 4, 16,
  // 32, 128) and sizes that do not (3, 48).
  c.block_size = blocks ? std::vector<index_t>{2, 3, 4, 16, 32, 48, 128}[pick(0, 6)] : 1;
  const index_t b = c.block_size;
  c.sink = b * pick(0, 3);
  c.recent = b * pick(0, 4);
  c.budget = c.sink + c.recent + b * pick(0, 40);
  s.tokens = pick(0, 3) == 0 ? pick(0, c.budget + 3) : c.budget + pick(1, 400);
  c.crush_fraction = std::vector<double>{0.0, 0.1, 0.25, 0.5, 0.75, 1.0}[pick(0, 5)];
  c.anchor = static_cast<kvcrush::anchor_mode>(pick(0, 5));
  c.representative = static_cast<kvcrush::representative_rule>(pick(0, 3));
  c.threshold = pick(0, 3) == 0 ? kvcrush::threshold_mode::mean : kvcrush::threshold_mode::median;
  c.seed = static_cast<std::uint64_t>(pick(0, 1000));
  c.per_head = pick(0, 2) == 0;
  c.rank_importance = pick(0, 5) != 0;
  if (!c.rank_importance) c.crush_fraction = 1.0;
  const bool mean_mode = c.threshold == kvcrush::threshold_mode::mean;
  // Mean mode keeps values away from the mean (SPEC 4.1): no infinities, and
  // the coarse grid makes exact-mean hits rare enough to check below.
  const double inf_rate = mean_mode ? 0.0 : 0.02;
  const int levels = static_cast<int>(pick(2, 40));
  s.scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(s.heads * s.tokens), static_cast<std::uint32_t>(pick(0, 1 << 30)), levels, inf_rate);
  if (c.block_size > 1) {
    // A block holding +inf and -inf tokens has NaN importance (an error).
    for (auto& v : s.scores) v = std::isinf(v) ? std::numeric_limits<float>::infinity() : v;
  }
  if (!c.per_head) {
    // +inf and -inf of one token in different heads would make its summed
    // importance NaN, which is an error; move infinities to head 0.
    for (index_t t = 0; t < s.tokens; ++t)
      for (index_t h = 1; h < s.heads; ++h) {
        float& v = s.scores[h * s.tokens + t];
        if (std::isinf(v)) v = 0.5f;
      }
  }
  if (pick(0, 3) == 0) {
    s.sig_heads = s.heads * std::vector<index_t>{1, 2, 4}[pick(0, 2)];
    s.sig_scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(s.sig_heads * s.tokens),
                                               static_cast<std::uint32_t>(pick(0, 1 << 30)), levels, inf_rate);
  }
  return s;
}

// Mean mode is only specified for values away from the mean.
bool mean_is_ambiguous(const scenario& s) {
  if (s.cfg.threshold != kvcrush::threshold_mode::mean) return false;
  const index_t b = s.cfg.block_size;
  const index_t begin = s.cfg.sink, end = (s.tokens / b) * b - s.cfg.recent;
  const auto& flat = s.sig_heads ? s.sig_scores : s.scores;
  const index_t rows = s.sig_heads ? s.sig_heads : s.heads;
  for (index_t h = 0; h < rows; ++h) {
    double sum = 0;
    for (index_t t = begin; t < end; ++t) sum += flat[h * s.tokens + t];
    const double mean = sum / static_cast<double>(end - begin);
    for (index_t t = begin; t < end; ++t) {
      if (std::abs(flat[h * s.tokens + t] - mean) < 1e-6) return true;
    }
  }
  return false;
}

template <class Isa>
std::vector<std::vector<long>> run(const scenario& s, kvcrush::workspace& ws) {
  const index_t rows = s.cfg.per_head ? s.heads : 1;
  const index_t count = kvcrush::keep_count(s.cfg, s.tokens);
  std::vector<index_t> out(static_cast<std::size_t>(rows * (count + 2)), -1);
  kvcrush::matrix_view<const float> scores = kvcrush::make_matrix_view(s.scores.data(), s.heads, s.tokens);
  kvcrush::matrix_view<const float> sig_scores;
  if (s.sig_heads) sig_scores = kvcrush::make_matrix_view(s.sig_scores.data(), s.sig_heads, s.tokens);
  const index_t got = kvcrush::select_keep<Isa>(scores, s.cfg, kvcrush::make_matrix_view(out.data(), rows, count + 2),
                                                ws, sig_scores);
  EXPECT_EQ(got, count);
  std::vector<std::vector<long>> result(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    result[r].assign(out.begin() + r * (count + 2), out.begin() + r * (count + 2) + count);
    EXPECT_EQ(out[r * (count + 2) + count], -1) << "nothing written past the keep set";
  }
  return result;
}

std::string describe(const scenario& s) {
  const auto& c = s.cfg;
  return "H=" + std::to_string(s.heads) + " N=" + std::to_string(s.tokens) + " B=" + std::to_string(c.budget) +
         " s=" + std::to_string(c.sink) + " r=" + std::to_string(c.recent) + " b=" + std::to_string(c.block_size) +
         " crush=" + std::to_string(c.crush_fraction) + " anchor=" + std::string(kvcrush::to_string(c.anchor)) +
         " rule=" + std::string(kvcrush::to_string(c.representative)) + " threshold=" +
         std::string(kvcrush::to_string(c.threshold)) + (c.per_head ? " per-head" : " shared") +
         (c.rank_importance ? "" : " streaming") + " sig_heads=" + std::to_string(s.sig_heads);
}

}  // namespace

TEST(SelectKeep, MatchesSpecOnRandomConfigurations) {
  std::mt19937 rng(20260101);
  kvcrush::workspace ws;
  int checked = 0;
  for (int iteration = 0; iteration < 600; ++iteration) {
    const scenario s = random_scenario(rng);
    if (mean_is_ambiguous(s)) continue;
    const auto sig_rows = s.sig_heads ? rows_of(s.sig_scores, s.sig_heads, s.tokens) : rows_of(s.scores, s.heads, s.tokens);
    const auto expected = spec::keep(rows_of(s.scores, s.heads, s.tokens), sig_rows, s.cfg);
    const auto got = run<isa::active>(s, ws);
    ASSERT_EQ(got, expected) << describe(s);
    kvcrush_test::for_each_simd_isa([&](auto tag) {
      // Every compiled ISA gives the same keep sets as the scalar kernels.
      ASSERT_EQ(run<decltype(tag)>(s, ws), run<isa::scalar>(s, ws)) << decltype(tag)::name << " " << describe(s);
    });
    ++checked;
  }
  EXPECT_GT(checked, 500);
}

TEST(SelectKeep, LongRowsMatchScalarOnEveryIsa) {
  // Rows past 2048 evictable tokens take the bracketed medians, and the
  // distances come from head-major bits where a kernel does:
  // every compiled ISA against the scalar kernels, with heavy ties (five
  // levels) in a third of the cases, token and block mode, every anchor.
  std::mt19937 rng(20261205);
  kvcrush::workspace ws;
  const int isas = kvcrush_test::for_each_simd_isa([](auto) {});
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
  for (int iteration = 0; iteration < 32; ++iteration) {
    scenario s = random_scenario(rng);
    s.heads = std::vector<index_t>{1, 3, 8, 32, 65}[static_cast<std::size_t>(iteration % 5)];
    // Token mode and blocks of 16, 32, 64 and 512 tokens (head-major
    // distances), and of 24 (token-major signatures); the mean anchor
    // (counts per block position) for every size in half of the rounds.
    const index_t b = std::vector<index_t>{1, 16, 1, 32, 64, 24, 1, 512}[static_cast<std::size_t>(iteration % 8)];
    s.cfg.block_size = b;
    s.cfg.sink = b * (iteration % 2);
    s.cfg.recent = b * (iteration % 3);
    s.tokens = s.cfg.sink + s.cfg.recent + (2100 + 397 * iteration) / b * b + iteration % 3;
    s.cfg.budget = s.cfg.sink + s.cfg.recent + s.tokens / 4 / b * b;
    s.cfg.crush_fraction = 0.5;
    s.cfg.rank_importance = true;
    s.cfg.threshold = kvcrush::threshold_mode::median;
    s.cfg.anchor = (iteration / 8) % 2 == 0 ? kvcrush::anchor_mode::mean
                                            : static_cast<kvcrush::anchor_mode>(iteration % 6);
    const int levels = iteration % 3 == 0 ? 5 : 100000;
    s.scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(s.heads * s.tokens),
                                           static_cast<std::uint32_t>(iteration), levels, 0.0);
    s.sig_heads = 0;
    s.sig_scores.clear();
    const auto expected = run<isa::scalar>(s, ws);
    kvcrush_test::for_each_simd_isa([&](auto tag) {
      ASSERT_EQ(run<decltype(tag)>(s, ws), expected) << decltype(tag)::name << " " << describe(s);
    });
  }
}

TEST(SelectKeep, CompositionProperties) {
  std::mt19937 rng(7);
  kvcrush::workspace ws;
  for (int iteration = 0; iteration < 200; ++iteration) {
    scenario s = random_scenario(rng);
    s.cfg.block_size = 1;
    s.cfg.sink = std::min<index_t>(s.cfg.sink, 2);
    const auto result = run<isa::active>(s, ws);
    const auto& c = s.cfg;
    for (const auto& row : result) {
      ASSERT_EQ(static_cast<index_t>(row.size()), std::min(c.budget, s.tokens)) << "exactly B kept";
      ASSERT_TRUE(std::is_sorted(row.begin(), row.end()));
      ASSERT_EQ(std::set<long>(row.begin(), row.end()).size(), row.size()) << "no duplicates";
      const std::set<long> kept(row.begin(), row.end());
      for (long t = 0; t < std::min(c.sink, s.tokens); ++t) ASSERT_TRUE(kept.count(t)) << "sink kept";
      for (long t = std::max<long>(s.tokens - c.recent, 0); t < s.tokens; ++t) ASSERT_TRUE(kept.count(t)) << "recent kept";
    }
  }
}

TEST(SelectKeep, RepresentativesComeOnlyFromCandidates) {
  // With crush on, the kept set minus the crush-free keep set must be
  // exactly B_crush tokens, none of them importance picks.
  std::mt19937 rng(99);
  kvcrush::workspace ws;
  for (int iteration = 0; iteration < 100; ++iteration) {
    scenario s = random_scenario(rng);
    s.cfg.block_size = 1;
    s.cfg.rank_importance = true;
    s.cfg.crush_fraction = 0.5;
    s.tokens = s.cfg.budget + 50;
    s.scores = kvcrush_test::random_floats(static_cast<std::size_t>(s.heads * s.tokens), static_cast<std::uint32_t>(iteration));
    s.sig_heads = 0;
    const auto with_crush = run<isa::active>(s, ws);
    const auto split = kvcrush::split_budget(s.cfg.budget - s.cfg.sink - s.cfg.recent, 0.5);
    // Importance picks alone: B_imp tokens, i.e. the budget without the crush part.
    scenario base = s;
    base.cfg.crush_fraction = 0.0;
    base.cfg.budget = s.cfg.budget - split.crush;
    const auto importance_only = run<isa::active>(base, ws);
    for (std::size_t r = 0; r < with_crush.size(); ++r) {
      std::vector<long> extra;
      std::set_difference(with_crush[r].begin(), with_crush[r].end(), importance_only[r].begin(),
                          importance_only[r].end(), std::back_inserter(extra));
      ASSERT_EQ(static_cast<index_t>(extra.size()), split.crush) << describe(s);
      for (long t : extra) {
        ASSERT_GE(t, s.cfg.sink);
        ASSERT_LT(t, s.tokens - s.cfg.recent);
      }
    }
  }
}

TEST(SelectKeep, StridedAndPaddedScores) {
  const index_t heads = 6, tokens = 300, stride = 317;
  auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride), 17, 9, 0.0);
  kvcrush::keep_config cfg;
  cfg.budget = 64;
  cfg.sink = 4;
  cfg.recent = 8;
  cfg.crush_fraction = 0.5;
  kvcrush::workspace ws;
  std::vector<index_t> padded_out(64), packed_out(64), transposed_out(64);
  kvcrush::select_keep(kvcrush::make_matrix_view<const float>(flat.data(), heads, tokens, stride), cfg,
                       kvcrush::make_vector_view(padded_out.data(), 64), ws);
  std::vector<float> packed(static_cast<std::size_t>(heads * tokens)), transposed(static_cast<std::size_t>(heads * tokens));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) {
      packed[h * tokens + t] = flat[h * stride + t];
      transposed[t * heads + h] = flat[h * stride + t];
    }
  kvcrush::select_keep(kvcrush::make_matrix_view<const float>(packed.data(), heads, tokens), cfg,
                       kvcrush::make_vector_view(packed_out.data(), 64), ws);
  kvcrush::select_keep(kvcrush::matrix_view<const float>(transposed.data(), {heads, tokens}, {1, heads}), cfg,
                       kvcrush::make_vector_view(transposed_out.data(), 64), ws);
  EXPECT_EQ(padded_out, packed_out);
  EXPECT_EQ(transposed_out, packed_out);
}

TEST(SelectKeep, WarmWorkspaceDoesNotAllocate) {
  kvcrush::workspace ws;
  const index_t heads = 8, tokens = 5000;
  auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(heads * tokens), 5);
  std::vector<index_t> out(static_cast<std::size_t>(heads * 1000));
  kvcrush::keep_config cfg;
  cfg.budget = 1000;
  cfg.sink = 4;
  cfg.recent = 32;
  cfg.crush_fraction = 0.25;
  auto view = kvcrush::make_matrix_view<const float>(scores.data(), heads, tokens);
  ws.reserve(heads, tokens, 0, 4);
  const auto before = ws.allocations();
  for (bool per_head : {false, true}) {
    for (index_t block : {1, 4}) {
      cfg.per_head = per_head;
      cfg.block_size = block;
      kvcrush::select_keep(view, cfg, kvcrush::make_matrix_view(out.data(), per_head ? heads : 1, 1000), ws);
    }
  }
  EXPECT_EQ(ws.allocations(), before) << "reserve() covers every mode";
  // Smaller calls never allocate either.
  kvcrush::select_keep(kvcrush::make_matrix_view<const float>(scores.data(), heads, 2000), cfg,
                       kvcrush::make_matrix_view(out.data(), heads, 1000), ws);
  EXPECT_EQ(ws.allocations(), before);
}

TEST(SelectKeep, NothingEvictedWhenItFits) {
  kvcrush::workspace ws;
  std::vector<float> scores(3 * 10, 1.0f);
  kvcrush::keep_config cfg;
  cfg.budget = 10;
  cfg.crush_fraction = 0.5;
  std::vector<index_t> out(10);
  EXPECT_EQ(kvcrush::select_keep(kvcrush::make_matrix_view<const float>(scores.data(), 3, 10), cfg,
                                 kvcrush::make_vector_view(out.data(), 10), ws),
            10);
  for (index_t i = 0; i < 10; ++i) EXPECT_EQ(out[i], i);
  // Block mode: the partial block is kept on top of the budget.
  cfg.block_size = 4;
  cfg.budget = 8;
  std::vector<float> long_scores(1 * 23, 1.0f);
  for (std::size_t i = 0; i < long_scores.size(); ++i) long_scores[i] = static_cast<float>(i % 5);
  std::vector<index_t> blocks(4, -1);
  EXPECT_EQ(kvcrush::keep_count(cfg, 23), 3);
  EXPECT_EQ(kvcrush::select_keep(kvcrush::make_matrix_view<const float>(long_scores.data(), 1, 23), cfg,
                                 kvcrush::make_vector_view(blocks.data(), 4), ws),
            3);
  EXPECT_EQ(blocks[2], 5) << "the last partial block (index 5 of 23 tokens) is always kept";
}

TEST(SelectKeep, BadInputGetsClearErrors) {
  kvcrush::workspace ws;
  std::vector<float> scores(2 * 50, 0.5f);
  for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>(i % 13);
  auto view = kvcrush::make_matrix_view<const float>(scores.data(), 2, 50);
  std::vector<index_t> out(100, -7);
  auto out_view = kvcrush::make_vector_view(out.data(), 20);
  auto expect_error = [&](const kvcrush::keep_config& cfg, const std::string& fragment,
                          kvcrush::matrix_view<const float> s, kvcrush::matrix_view<const float> sig = {}) {
    try {
      kvcrush::select_keep(s, cfg, out_view, ws, sig);
      ADD_FAILURE() << "accepted; expected an error about " << fragment;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind("kvcrush: ", 0), 0u);
    }
    EXPECT_EQ(out[0], -7) << "output untouched on error";
  };
  kvcrush::keep_config ok;
  ok.budget = 20;
  ok.sink = 2;
  ok.recent = 4;
  ok.crush_fraction = 0.5;
  auto c = ok;
  c.budget = 5;
  expect_error(c, "below sink + recent", view);
  c = ok;
  c.budget = -1;
  expect_error(c, ">= 0", view);
  c = ok;
  c.crush_fraction = 1.5;
  expect_error(c, "crush_fraction", view);
  c.crush_fraction = std::numeric_limits<double>::quiet_NaN();
  expect_error(c, "crush_fraction", view);
  c = ok;
  c.block_size = 0;
  expect_error(c, "block_size", view);
  c = ok;
  c.block_size = 3;
  expect_error(c, "multiples of the block size", view);
  c = ok;
  c.rank_importance = false;
  expect_error(c, "StreamingLLM", view);
  expect_error(ok, "at least one head", kvcrush::make_matrix_view<const float>(scores.data(), 0, 50));
  expect_error(ok, "signature scores cover", view, kvcrush::make_matrix_view<const float>(scores.data(), 1, 49));
  c = ok;
  c.budget = 30;
  expect_error(c, "entries", view);  // output holds 20
  c = ok;
  c.per_head = true;
  try {
    kvcrush::select_keep(view, c, out_view, ws);
    ADD_FAILURE() << "per-head into a vector accepted";
  } catch (const std::invalid_argument&) {
  }
  // NaN anywhere: evictable region, protected region, signature rows, and a
  // token whose summed importance is +inf + -inf.
  for (std::size_t where : {10u, 1u, 49u, 60u}) {
    auto bad = scores;
    bad[where] = std::numeric_limits<float>::quiet_NaN();
    expect_error(ok, "NaN", kvcrush::make_matrix_view<const float>(bad.data(), 2, 50));
    auto per_head = ok;
    per_head.per_head = true;
    std::vector<index_t> rows(40, -7);
    EXPECT_THROW(kvcrush::select_keep(kvcrush::make_matrix_view<const float>(bad.data(), 2, 50), per_head,
                                      kvcrush::make_matrix_view(rows.data(), 2, 20), ws),
                 std::invalid_argument);
    expect_error(ok, "signature scores contain NaN", view, kvcrush::make_matrix_view<const float>(bad.data(), 2, 50));
  }
  auto inf_sum = scores;
  inf_sum[20] = std::numeric_limits<float>::infinity();
  inf_sum[50 + 20] = -std::numeric_limits<float>::infinity();
  expect_error(ok, "summed importance", kvcrush::make_matrix_view<const float>(inf_sum.data(), 2, 50));
  // Per head, +inf and -inf in different heads are fine.
  auto per_head = ok;
  per_head.per_head = true;
  std::vector<index_t> rows(40);
  EXPECT_NO_THROW(kvcrush::select_keep(kvcrush::make_matrix_view<const float>(inf_sum.data(), 2, 50), per_head,
                                       kvcrush::make_matrix_view(rows.data(), 2, 20), ws));
}
