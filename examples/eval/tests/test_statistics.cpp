// The evaluation's bootstrap intervals and the pairing of X+kvcrush rows
// with X (statistics.hpp, report.hpp).
#include <gtest/gtest.h>

#include <vector>

#include "report.hpp"
#include "statistics.hpp"

namespace {

using kvcrush_eval::accuracy;

// A chunk of `positions` predictions, `agree` of them matching the full
// cache, with the given summed negative log-likelihoods and KL.
accuracy chunk(long positions, long agree, double nll_full, double nll, double kl) {
  accuracy a;
  a.positions = positions;
  a.agree = agree;
  a.nll_full = nll_full;
  a.nll = nll;
  a.kl = kl;
  return a;
}

TEST(Bootstrap, IdenticalChunksGiveAPointInterval) {
  const std::vector<accuracy> chunks(7, chunk(100, 80, 200.0, 210.0, 5.0));
  const auto ci = kvcrush_eval::bootstrap(chunks);
  EXPECT_DOUBLE_EQ(ci.agreement.low, 0.8);
  EXPECT_DOUBLE_EQ(ci.agreement.high, 0.8);
  EXPECT_DOUBLE_EQ(ci.kl.low, 0.05);
  EXPECT_DOUBLE_EQ(ci.kl.high, 0.05);
  EXPECT_NEAR(ci.perplexity_change.low, std::exp(2.1) / std::exp(2.0) - 1.0, 1e-12);
}

TEST(Bootstrap, TwoOppositeChunksSpanTheWholeRange) {
  // Resamples of two chunks are {A, A}, {A, B}, {B, B} with probabilities
  // 1/4, 1/2, 1/4: the 2.5% and 97.5% points are the extremes.
  const std::vector<accuracy> chunks{chunk(10, 10, 1.0, 1.0, 0.0), chunk(10, 0, 1.0, 1.0, 0.0)};
  const auto ci = kvcrush_eval::bootstrap(chunks);
  EXPECT_DOUBLE_EQ(ci.agreement.low, 0.0);
  EXPECT_DOUBLE_EQ(ci.agreement.high, 1.0);
}

TEST(Bootstrap, IntervalsNarrowWithMoreChunksAndContainThePoint) {
  std::vector<accuracy> few, many;
  for (int i = 0; i < 64; ++i) {
    const accuracy c = chunk(50, 30 + (i * 7) % 15, 100.0, 100.0 + (i % 5), 1.0 + 0.1 * (i % 3));
    if (i < 8) few.push_back(c);
    many.push_back(c);
  }
  const auto narrow = kvcrush_eval::bootstrap(many), wide = kvcrush_eval::bootstrap(few);
  accuracy all;
  for (const auto& c : many) all.merge(c);
  EXPECT_LE(narrow.agreement.low, all.agreement());
  EXPECT_GE(narrow.agreement.high, all.agreement());
  EXPECT_LT(narrow.agreement.high - narrow.agreement.low, wide.agreement.high - wide.agreement.low);
  EXPECT_LE(narrow.kl.low, all.mean_kl());
  EXPECT_GE(narrow.kl.high, all.mean_kl());
}

TEST(Bootstrap, ReproducibleForASeed) {
  std::vector<accuracy> chunks;
  for (int i = 0; i < 9; ++i) chunks.push_back(chunk(40, 10 + 3 * i, 80.0, 85.0 + i, 2.0 + i));
  const auto a = kvcrush_eval::bootstrap(chunks), b = kvcrush_eval::bootstrap(chunks);
  EXPECT_EQ(a.agreement.low, b.agreement.low);
  EXPECT_EQ(a.kl.high, b.kl.high);
  const auto other = kvcrush_eval::bootstrap(chunks, 2000, 12345);
  EXPECT_TRUE(other.agreement.low != a.agreement.low || other.agreement.high != a.agreement.high ||
              other.kl.low != a.kl.low || other.kl.high != a.kl.high);
}

TEST(Bootstrap, PercentilesAreTheDocumentedOrderStatistics) {
  std::vector<double> values;
  for (int i = 1999; i >= 0; --i) values.push_back(i);
  const auto i = kvcrush_eval::detail::percentile_95(values);
  EXPECT_EQ(i.low, 49.0);    // floor(0.025 * 1999)
  EXPECT_EQ(i.high, 1950.0);  // ceil(0.975 * 1999)
}

TEST(Bootstrap, PairingRemovesTheChunkToChunkSpread) {
  // b's chunks vary a lot; a agrees on exactly 5 more of every 50 positions.
  std::vector<accuracy> a, b;
  for (int i = 0; i < 12; ++i) {
    b.push_back(chunk(50, 10 + 3 * i, 100.0, 110.0, 3.0));
    a.push_back(chunk(50, 15 + 3 * i, 100.0, 110.0, 3.0));
  }
  const auto paired = kvcrush_eval::bootstrap_paired(a, b);
  EXPECT_NEAR(paired.agreement.low, 0.1, 1e-12);
  EXPECT_NEAR(paired.agreement.high, 0.1, 1e-12);
  const auto separate = kvcrush_eval::bootstrap(a);
  EXPECT_GT(separate.agreement.high - separate.agreement.low, 0.1);
  const auto self = kvcrush_eval::bootstrap_paired(b, b);
  EXPECT_EQ(self.kl.low, 0.0);
  EXPECT_EQ(self.kl.high, 0.0);
}

TEST(Bootstrap, RejectsMismatchedOrEmptyInput) {
  const std::vector<accuracy> one(1, chunk(10, 5, 1.0, 1.0, 0.0)), two(2, chunk(10, 5, 1.0, 1.0, 0.0));
  EXPECT_THROW(kvcrush_eval::bootstrap_paired(one, two), std::invalid_argument);
  EXPECT_THROW(kvcrush_eval::bootstrap({}), std::invalid_argument);
  EXPECT_THROW(kvcrush_eval::bootstrap(one, 1), std::invalid_argument);
}

kvcrush_eval::result_row row(const std::string& text, const std::string& policy, double budget,
                             const std::vector<accuracy>& chunks, const std::string& precision = "") {
  kvcrush_eval::result_row r;
  r.text = text;
  r.policy = policy;
  r.budget = budget;
  r.precision = precision;
  r.chunks = chunks;
  for (const auto& c : chunks) r.acc.merge(c);
  return r;
}

TEST(Report, KvcrushRowsArePairedWithTheirBaseOnTheSameTextAndBudget) {
  const std::vector<accuracy> base{chunk(50, 20, 100, 110, 3), chunk(50, 30, 100, 120, 4)};
  const std::vector<accuracy> crushed{chunk(50, 25, 100, 108, 2), chunk(50, 31, 100, 119, 4)};
  std::vector<kvcrush_eval::result_row> rows{
      row("t", "snapkv", 0.25, base),          row("t", "snapkv+kvcrush", 0.25, crushed),
      row("t", "snapkv", 0.5, crushed),        row("u", "snapkv+kvcrush", 0.25, crushed),
      row("t", "h2o+kvcrush", 0.25, crushed),  row("t", "snapkv+kvcrush", 0.25, crushed, "crush-int4")};
  kvcrush_eval::add_statistics(rows);
  EXPECT_EQ(rows[1].paired_with, "snapkv");
  EXPECT_NEAR(rows[1].paired.agreement, (56.0 - 50.0) / 100.0, 1e-12);
  EXPECT_LE(rows[1].paired_ci.agreement.low, rows[1].paired.agreement);
  EXPECT_GE(rows[1].paired_ci.agreement.high, rows[1].paired.agreement);
  EXPECT_TRUE(rows[3].paired_with.empty());  // no snapkv row for text u
  EXPECT_TRUE(rows[4].paired_with.empty());  // no h2o row
  EXPECT_TRUE(rows[5].paired_with.empty());  // equal-byte rows are not paired
  EXPECT_LE(rows[0].ci.agreement.low, rows[0].acc.agreement());
  const std::string table = kvcrush_eval::csv(rows);
  EXPECT_NE(table.find(",top1_diff,top1_diff_low,top1_diff_high,"), std::string::npos);
  EXPECT_NE(table.find("snapkv+kvcrush,,0.250000"), std::string::npos);
  EXPECT_NE(kvcrush_eval::markdown(rows, false).find("| snapkv+kvcrush − snapkv | 1/4 | +6.00"), std::string::npos);
}

}  // namespace
