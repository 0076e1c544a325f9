// Score sources (SPEC 5) against the definitions computed plainly here.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/scores/simple_sources.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "test_support.hpp"

using kvcrush::index_t;

namespace {

std::vector<float> plain_pool(const std::vector<float>& in, index_t kernel, kvcrush::pooling_mode mode) {
  const index_t n = static_cast<index_t>(in.size());
  std::vector<float> out(in.size());
  for (index_t t = 0; t < n; ++t) {
    if (mode == kvcrush::pooling_mode::avg) {
      float sum = 0.0f;
      for (index_t j = -kernel / 2; j <= kernel / 2; ++j) sum += (t + j >= 0 && t + j < n) ? in[t + j] : 0.0f;
      out[t] = sum / static_cast<float>(kernel);
    } else {
      float best = -std::numeric_limits<float>::infinity();
      for (index_t j = -kernel / 2; j <= kernel / 2; ++j)
        if (t + j >= 0 && t + j < n) best = std::max(best, in[t + j]);
      out[t] = best;
    }
  }
  return out;
}

// rows (G, n) -> one row.
std::vector<float> plain_reduce(const std::vector<std::vector<float>>& rows, kvcrush::gqa_reduction mode) {
  std::vector<float> out = rows[0];
  for (std::size_t g = 1; g < rows.size(); ++g)
    for (std::size_t t = 0; t < out.size(); ++t)
      out[t] = mode == kvcrush::gqa_reduction::max ? std::max(out[t], rows[g][t]) : out[t] + rows[g][t];
  if (mode == kvcrush::gqa_reduction::mean)
    for (auto& v : out) v /= static_cast<float>(rows.size());
  return out;
}

// Random causal window attention (Hq, W, N): row w is a distribution over
// keys 0..N-W+w.
std::vector<float> random_window_attention(index_t hq, index_t w, index_t n, std::uint32_t seed) {
  auto a = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), seed, 0.0f, 1.0f);
  for (index_t q = 0; q < hq; ++q)
    for (index_t i = 0; i < w; ++i) {
      float* row = a.data() + (q * w + i) * n;
      float sum = 0;
      for (index_t t = 0; t < n; ++t) {
        if (t > n - w + i) row[t] = 0;
        sum += row[t];
      }
      for (index_t t = 0; t < n; ++t) row[t] /= sum;
    }
  return a;
}

// SPEC 5 window scores, written plainly: per query head, window sums, pooled
// outside the window, window tokens unpooled; then GQA reduction.
std::vector<std::vector<float>> plain_window_scores(const std::vector<float>& a, index_t hq, index_t w, index_t n,
                                                    index_t h, const kvcrush::window_options& opt,
                                                    std::vector<std::vector<float>>* per_query = nullptr) {
  std::vector<std::vector<float>> pooled(static_cast<std::size_t>(hq));
  for (index_t q = 0; q < hq; ++q) {
    std::vector<float> raw(static_cast<std::size_t>(n));
    for (index_t t = 0; t < n; ++t) {
      float sum = a[(q * w + 0) * n + t];
      for (index_t i = 1; i < w; ++i) sum += a[(q * w + i) * n + t];
      raw[t] = sum;
    }
    std::vector<float> outside(raw.begin(), raw.begin() + (n - w));
    auto p = plain_pool(outside, opt.kernel, opt.pooling);
    p.insert(p.end(), raw.begin() + (n - w), raw.end());
    pooled[q] = p;
  }
  if (per_query) *per_query = pooled;
  std::vector<std::vector<float>> out;
  const index_t group = hq / h;
  for (index_t k = 0; k < h; ++k)
    out.push_back(plain_reduce({pooled.begin() + k * group, pooled.begin() + (k + 1) * group}, opt.gqa));
  return out;
}

}  // namespace

TEST(Pooling, MatchesPlainDefinition) {
  for (index_t n = 0; n <= 20; ++n) {
    const auto in = kvcrush_test::random_floats(static_cast<std::size_t>(n), static_cast<std::uint32_t>(n));
    for (index_t kernel : {1, 3, 7, 21}) {
      for (auto mode : {kvcrush::pooling_mode::avg, kvcrush::pooling_mode::max}) {
        std::vector<float> out(static_cast<std::size_t>(n));
        kvcrush::pool_rows(kvcrush::make_matrix_view(in.data(), 1, n), kernel, mode, kvcrush::make_matrix_view(out.data(), 1, n));
        EXPECT_EQ(out, plain_pool(in, kernel, mode)) << "n=" << n << " kernel=" << kernel;
      }
    }
  }
  std::vector<float> x(5), y(5);
  EXPECT_THROW(kvcrush::pool_rows(kvcrush::make_matrix_view<const float>(x.data(), 1, 5), 4, kvcrush::pooling_mode::avg,
                                  kvcrush::make_matrix_view(y.data(), 1, 5)),
               std::invalid_argument);
}

TEST(GqaReduction, MatchesPlainDefinition) {
  const index_t n = 37;
  for (index_t h : {1, 2, 4}) {
    for (index_t group : {1, 2, 3}) {
      const index_t hq = h * group;
      const auto q = kvcrush_test::random_floats(static_cast<std::size_t>(hq * n), 3);
      for (auto mode : {kvcrush::gqa_reduction::mean, kvcrush::gqa_reduction::max, kvcrush::gqa_reduction::sum}) {
        std::vector<float> out(static_cast<std::size_t>(h * n));
        kvcrush::reduce_query_heads(kvcrush::make_matrix_view(q.data(), hq, n), mode, kvcrush::make_matrix_view(out.data(), h, n));
        for (index_t k = 0; k < h; ++k) {
          std::vector<std::vector<float>> rows;
          for (index_t g = 0; g < group; ++g) rows.emplace_back(q.begin() + (k * group + g) * n, q.begin() + (k * group + g + 1) * n);
          EXPECT_EQ(std::vector<float>(out.begin() + k * n, out.begin() + (k + 1) * n), plain_reduce(rows, mode));
        }
      }
    }
  }
  std::vector<float> q(6 * 4), out(4 * 4);
  EXPECT_THROW(kvcrush::reduce_query_heads(kvcrush::make_matrix_view<const float>(q.data(), 6, 4), kvcrush::gqa_reduction::mean,
                                           kvcrush::make_matrix_view(out.data(), 4, 4)),
               std::invalid_argument);
}

TEST(WindowScores, MatchSpecFromProbabilities) {
  kvcrush::workspace ws;
  for (auto [hq, h, w, n] : {std::tuple<index_t, index_t, index_t, index_t>{8, 4, 4, 50}, {4, 4, 1, 9}, {6, 2, 7, 7},
                            {2, 1, 3, 130}}) {
    const auto a = random_window_attention(hq, w, n, static_cast<std::uint32_t>(n));
    for (auto pool : {kvcrush::pooling_mode::avg, kvcrush::pooling_mode::max}) {
      for (auto gqa : {kvcrush::gqa_reduction::mean, kvcrush::gqa_reduction::max, kvcrush::gqa_reduction::sum}) {
        for (index_t kernel : {1, 5, 7}) {
          kvcrush::window_options opt{pool, kernel, gqa};
          std::vector<float> s(static_cast<std::size_t>(h * n)), per_q(static_cast<std::size_t>(hq * n));
          kvcrush::window_scores(kvcrush::strided_view<const float, 3>(a.data(), {hq, w, n}), opt,
                                 kvcrush::make_matrix_view(s.data(), h, n), ws,
                                 kvcrush::make_matrix_view(per_q.data(), hq, n));
          std::vector<std::vector<float>> expected_q;
          const auto expected = plain_window_scores(a, hq, w, n, h, opt, &expected_q);
          for (index_t k = 0; k < h; ++k)
            ASSERT_EQ(std::vector<float>(s.begin() + k * n, s.begin() + (k + 1) * n), expected[k]);
          for (index_t q = 0; q < hq; ++q)
            ASSERT_EQ(std::vector<float>(per_q.begin() + q * n, per_q.begin() + (q + 1) * n), expected_q[q]);
        }
      }
    }
  }
}

TEST(WindowScores, ComputedFromQueriesMatchesExplicitSoftmax) {
  kvcrush::workspace ws;
  const index_t hq = 4, h = 2, w = 5, n = 40, d = 8;
  const auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * d), 1, -2, 2);
  const auto keys = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 2, -2, 2);
  // Explicit attention in double, then the probability path.
  std::vector<float> a(static_cast<std::size_t>(hq * w * n), 0.0f);
  for (index_t q = 0; q < hq; ++q)
    for (index_t i = 0; i < w; ++i) {
      const index_t visible = n - w + i + 1;
      std::vector<double> logits(static_cast<std::size_t>(visible));
      double peak = -1e300, total = 0;
      for (index_t t = 0; t < visible; ++t) {
        double dot = 0;
        for (index_t j = 0; j < d; ++j) dot += double(queries[(q * w + i) * d + j]) * keys[((q / 2) * n + t) * d + j];
        logits[t] = dot / std::sqrt(double(d));
        peak = std::max(peak, logits[t]);
      }
      for (auto& l : logits) total += (l = std::exp(l - peak));
      for (index_t t = 0; t < visible; ++t) a[(q * w + i) * n + t] = static_cast<float>(logits[t] / total);
    }
  kvcrush::window_options opt;
  std::vector<float> expected(static_cast<std::size_t>(h * n)), expected_q(static_cast<std::size_t>(hq * n));
  kvcrush::window_scores(kvcrush::strided_view<const float, 3>(a.data(), {hq, w, n}), opt,
                         kvcrush::make_matrix_view(expected.data(), h, n), ws, kvcrush::make_matrix_view(expected_q.data(), hq, n));
  // Keys in both layouts and in float16.
  std::vector<float> token_major(keys.size());
  std::vector<kvcrush::float16> halves(keys.size());
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t)
      for (index_t j = 0; j < d; ++j) token_major[(t * h + k) * d + j] = keys[(k * n + t) * d + j];
  for (std::size_t i = 0; i < keys.size(); ++i) halves[i] = kvcrush::to_float16(keys[i]);
  auto check = [&](auto key_view, double tolerance) {
    std::vector<float> s(static_cast<std::size_t>(h * n)), sq(static_cast<std::size_t>(hq * n));
    kvcrush::window_scores_from_queries(kvcrush::strided_view<const float, 3>(queries.data(), {hq, w, d}), key_view, opt,
                                        kvcrush::make_matrix_view(s.data(), h, n), ws, kvcrush::make_matrix_view(sq.data(), hq, n));
    for (std::size_t i = 0; i < s.size(); ++i) ASSERT_NEAR(s[i], expected[i], tolerance) << i;
    for (std::size_t i = 0; i < sq.size(); ++i) ASSERT_NEAR(sq[i], expected_q[i], tolerance) << i;
  };
  check(kvcrush::kv_view<const float>(kvcrush::make_head_token_dim(keys.data(), h, n, d)), 1e-5);
  check(kvcrush::kv_view<const float>(kvcrush::make_token_head_dim(token_major.data(), n, h, d)), 1e-5);
  check(kvcrush::kv_view<const kvcrush::float16>(kvcrush::make_head_token_dim(halves.data(), h, n, d)), 5e-3);
}

TEST(WindowScores, RejectBadInput) {
  kvcrush::workspace ws;
  std::vector<float> a(4 * 2 * 10, 0.1f), s(2 * 10);
  auto attention = kvcrush::strided_view<const float, 3>(a.data(), {4, 2, 10});
  auto out = kvcrush::make_matrix_view(s.data(), 2, 10);
  EXPECT_THROW(kvcrush::window_scores(attention, {kvcrush::pooling_mode::avg, 4, kvcrush::gqa_reduction::mean}, out, ws),
               std::invalid_argument);
  std::vector<float> s3(3 * 10);
  EXPECT_THROW(kvcrush::window_scores(attention, {}, kvcrush::make_matrix_view(s3.data(), 3, 10), ws), std::invalid_argument);
  EXPECT_THROW(kvcrush::window_scores(attention, {}, kvcrush::make_matrix_view(s.data(), 2, 9), ws), std::invalid_argument);
  a[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(kvcrush::window_scores(attention, {}, out, ws), std::invalid_argument);
}

TEST(H2O, AccumulatesStepByStep) {
  const index_t h = 2, hq = 4, steps = 30;
  kvcrush::h2o_accumulator acc(h, hq, 64);
  std::vector<std::vector<double>> expected(static_cast<std::size_t>(h));
  std::vector<std::vector<int>> seen(static_cast<std::size_t>(h));
  for (index_t step = 0; step < steps; ++step) {
    acc.append(1);
    const index_t len = step + 1;
    const auto probs = kvcrush_test::random_floats(static_cast<std::size_t>(hq * len), static_cast<std::uint32_t>(step), 0, 1);
    acc.accumulate(kvcrush::make_matrix_view(probs.data(), hq, len));
    for (index_t k = 0; k < h; ++k) {
      expected[k].push_back(0);
      seen[k].push_back(0);
      for (index_t t = 0; t < len; ++t) {
        const float reduced = (probs[(2 * k) * len + t] + probs[(2 * k + 1) * len + t]) / 2.0f;
        expected[k][t] = static_cast<float>(static_cast<float>(expected[k][t]) + reduced);
        seen[k][t] += 1;
      }
    }
  }
  std::vector<float> normalised(static_cast<std::size_t>(h * steps));
  acc.normalised_scores(kvcrush::make_matrix_view(normalised.data(), h, steps));
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < steps; ++t) {
      ASSERT_EQ(acc.scores()(k, t), static_cast<float>(expected[k][t]));
      ASSERT_EQ(acc.seen(k, t), steps - t);
      ASSERT_EQ(normalised[k * steps + t], static_cast<float>(expected[k][t]) / static_cast<float>(steps - t));
    }
  // Eviction: head 0 keeps rows {1, 4, 9}; head 1 keeps everything but row 0.
  const std::vector<index_t> keep = {1, 4, 9};
  const float before = acc.scores()(0, 9);
  acc.compact(0, keep.data(), 3);
  EXPECT_EQ(acc.length(0), 3);
  EXPECT_EQ(acc.scores()(0, 2), before);
  EXPECT_EQ(acc.seen(0, 2), steps - 9);
  std::vector<index_t> all_but_first;
  for (index_t t = 1; t < steps; ++t) all_but_first.push_back(t);
  acc.compact(1, all_but_first.data(), steps - 1);
  EXPECT_EQ(acc.length(1), steps - 1);
  // Attention rows now cover each head's own length.
  acc.append(1);
  std::vector<float> probs(static_cast<std::size_t>(hq * steps), 0.25f);
  acc.accumulate(kvcrush::make_matrix_view(probs.data(), hq, steps));
  EXPECT_EQ(acc.scores()(0, 3), 0.25f);
  const std::vector<index_t> bad = {2, 1};
  EXPECT_THROW(acc.compact(0, bad.data(), 2), std::invalid_argument);
  EXPECT_THROW(acc.accumulate(kvcrush::make_matrix_view(probs.data(), hq - 1, steps)), std::invalid_argument);
  kvcrush::h2o_accumulator tiny(1, 1, 2);
  tiny.append(2);
  EXPECT_THROW(tiny.append(1), std::invalid_argument);
  EXPECT_THROW(kvcrush::h2o_accumulator(2, 3, 10), std::invalid_argument);
}

TEST(H2O, PrefillEqualsIncremental) {
  const index_t hq = 2, n = 25;
  std::vector<float> a(static_cast<std::size_t>(hq * n * n), 0.0f);
  const auto noise = kvcrush_test::random_floats(a.size(), 5, 0, 1);
  for (index_t q = 0; q < hq; ++q)
    for (index_t i = 0; i < n; ++i)
      for (index_t t = 0; t <= i; ++t) a[(q * n + i) * n + t] = noise[(q * n + i) * n + t];
  kvcrush::h2o_accumulator prefilled(1, hq, n, kvcrush::gqa_reduction::sum);
  prefilled.prefill(kvcrush::strided_view<const float, 3>(a.data(), {hq, n, n}));
  kvcrush::h2o_accumulator stepped(1, hq, n, kvcrush::gqa_reduction::sum);
  for (index_t i = 0; i < n; ++i) {
    stepped.append(1);
    std::vector<float> row(static_cast<std::size_t>(hq * (i + 1)));
    for (index_t q = 0; q < hq; ++q)
      for (index_t t = 0; t <= i; ++t) row[q * (i + 1) + t] = a[(q * n + i) * n + t];
    stepped.accumulate(kvcrush::make_matrix_view(row.data(), hq, i + 1));
  }
  for (index_t t = 0; t < n; ++t) {
    ASSERT_EQ(prefilled.scores()(0, t), stepped.scores()(0, t));
    // S[t] = sum over queries i >= t of the reduced A[i][t].
    float plain = 0.0f;
    for (index_t i = t; i < n; ++i) plain += a[(0 * n + i) * n + t] + a[(1 * n + i) * n + t];
    ASSERT_NEAR(prefilled.scores()(0, t), plain, 1e-5f);
    ASSERT_EQ(prefilled.seen(0, t), n - t);
  }
}

TEST(SimpleSources, TovaKeyNormRandom) {
  const index_t hq = 4, h = 2, n = 33, d = 6;
  const auto last = kvcrush_test::random_floats(static_cast<std::size_t>(hq * n), 8, 0, 1);
  std::vector<float> shared(static_cast<std::size_t>(n)), kv(static_cast<std::size_t>(h * n));
  kvcrush::tova_scores(kvcrush::make_matrix_view(last.data(), hq, n), kvcrush::make_matrix_view(shared.data(), 1, n),
                       kvcrush::make_matrix_view(kv.data(), h, n));
  for (index_t t = 0; t < n; ++t) {
    const float mean = (((last[t] + last[n + t]) + last[2 * n + t]) + last[3 * n + t]) / 4.0f;
    ASSERT_EQ(shared[t], mean);
    ASSERT_EQ(kv[t], (last[t] + last[n + t]) / 2.0f);
  }
  const auto keys = kvcrush_test::random_floats(static_cast<std::size_t>(n * h * d), 9);
  std::vector<float> norms(static_cast<std::size_t>(h * n));
  kvcrush::key_norm_scores(kvcrush::kv_view<const float>(kvcrush::make_token_head_dim(keys.data(), n, h, d)),
                           kvcrush::make_matrix_view(norms.data(), h, n));
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) {
      float squares = 0;
      for (index_t j = 0; j < d; ++j) squares = std::fma(keys[(t * h + k) * d + j], keys[(t * h + k) * d + j], squares);
      ASSERT_EQ(norms[k * n + t], -std::sqrt(squares));
    }
  std::vector<float> r1(static_cast<std::size_t>(h * n)), r2(r1.size()), r3(r1.size());
  kvcrush::random_scores(5, kvcrush::make_matrix_view(r1.data(), h, n));
  kvcrush::random_scores(5, kvcrush::make_matrix_view(r2.data(), h, n));
  kvcrush::random_scores(6, kvcrush::make_matrix_view(r3.data(), h, n));
  EXPECT_EQ(r1, r2);
  EXPECT_NE(r1, r3);
  for (float v : r1) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LT(v, 1.0f);
  }
}

TEST(H2O, CompactAllKeepsTheSameRowsOfEveryHead) {
  // compact_all(keep) is compact(h, keep) for every head: each head's sums
  // and counts of the kept tokens move to the front, in keep order, and
  // the head's length becomes the keep count. The expected values are the
  // scores read before compaction.
  const index_t h = 3, hq = 6, n = 12;
  kvcrush::h2o_accumulator acc(h, hq, 16);
  for (index_t step = 0; step < n; ++step) {
    acc.append(1);
    const auto probs = kvcrush_test::random_floats(static_cast<std::size_t>(hq * (step + 1)), static_cast<std::uint32_t>(step + 100), 0, 1);
    acc.accumulate(kvcrush::make_matrix_view(probs.data(), hq, step + 1));
  }
  std::vector<std::vector<float>> before(static_cast<std::size_t>(h));
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) before[k].push_back(acc.scores()(k, t));
  const std::vector<index_t> keep = {0, 3, 4, 9, 11};
  acc.compact_all(keep.data(), static_cast<index_t>(keep.size()));
  for (index_t k = 0; k < h; ++k) {
    ASSERT_EQ(acc.length(k), 5) << "head " << k;
    for (std::size_t i = 0; i < keep.size(); ++i) {
      EXPECT_EQ(acc.scores()(k, static_cast<index_t>(i)), before[k][static_cast<std::size_t>(keep[i])]) << k << " " << i;
      EXPECT_EQ(acc.seen(k, static_cast<index_t>(i)), n - keep[i]) << "token t was seen by queries t..n-1";
    }
  }
  // Tokens appended afterwards start from zero at the new end.
  acc.append(1);
  EXPECT_EQ(acc.length(2), 6);
  EXPECT_EQ(acc.scores()(2, 5), 0.0f);
  EXPECT_EQ(acc.seen(2, 5), 0);
  const std::vector<index_t> unordered = {2, 1};
  EXPECT_THROW(acc.compact_all(unordered.data(), 2), std::invalid_argument) << "keep rows must increase";
}
