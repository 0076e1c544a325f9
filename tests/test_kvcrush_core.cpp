// KVCrush building blocks against SPEC written plainly (spec_reference.hpp):
// order statistics, signatures, anchors, distances, representatives, and the
// OpenVINO GenAI block-mode vectors.
#include <gtest/gtest.h>

#include <random>

#include <algorithm>
#include <limits>
#include <vector>

#include "kvcrush/select/anchor.hpp"
#include "kvcrush/select/buckets.hpp"
#include "kvcrush/select/hamming.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/order_statistics.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
using kvcrush::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

template <class Isa>
void check_kth(const std::vector<float>& v, index_t k) {
  std::vector<float> a(v.size() + 64), b(v.size() + 64);
  const auto r = kvcrush::impl::kth_largest<Isa>(v.data(), static_cast<index_t>(v.size()), k, a.data(), b.data());
  auto sorted = v;
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const float expected = sorted[static_cast<std::size_t>(k - 1)];
  const auto above = std::count_if(v.begin(), v.end(), [&](float x) { return x > expected; });
  ASSERT_FALSE(r.has_nan);
  ASSERT_EQ(r.value, expected) << Isa::name << " n=" << v.size() << " k=" << k;
  ASSERT_EQ(r.above, above) << Isa::name << " n=" << v.size() << " k=" << k;
}

template <class Isa>
void sweep_kth() {
  for (long n : {1L, 2L, 3L, 17L, 100L, 511L, 512L, 513L, 1000L, 4097L, 20000L, 70001L}) {
    const auto nn = static_cast<std::size_t>(n);
    const std::vector<std::vector<float>> inputs = {
        kvcrush_test::random_floats(nn, static_cast<std::uint32_t>(n)),
        kvcrush_test::tricky_floats(nn, static_cast<std::uint32_t>(n), 5),
        kvcrush_test::tricky_floats(nn, static_cast<std::uint32_t>(n) + 1, 1000, 0.3),
        std::vector<float>(nn, 0.5f),  // all equal
    };
    for (const auto& v : inputs) {
      for (index_t k : {index_t{1}, n / 2 > 0 ? n / 2 : 1, n - n / 7, index_t{n}}) check_kth<Isa>(v, k);
    }
  }
  // Sorted and reverse-sorted inputs defeat naive sampling.
  std::vector<float> ramp(30000);
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>(i);
  check_kth<Isa>(ramp, 15000);
  std::reverse(ramp.begin(), ramp.end());
  check_kth<Isa>(ramp, 3);
  // A spike: almost all values equal, a few larger and smaller.
  std::vector<float> spike(10000, 1.0f);
  spike[17] = 2.0f;
  spike[9000] = -inf;
  check_kth<Isa>(spike, 2);
  check_kth<Isa>(spike, 9999);
  check_kth<Isa>(spike, 10000);
}

}  // namespace

TEST(OrderStatistics, KthLargestIsExact) {
  sweep_kth<isa::scalar>();
  kvcrush_test::for_each_simd_isa([](auto tag) { sweep_kth<decltype(tag)>(); });
}

TEST(OrderStatistics, KthLargestReportsNaN) {
  for (std::size_t n : {10u, 5000u}) {
    auto v = kvcrush_test::random_floats(n, 3);
    v[n / 3] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> a(n + 64), b(n + 64);
    EXPECT_TRUE(kvcrush::impl::kth_largest<isa::active>(v.data(), static_cast<index_t>(n), 2, a.data(), b.data()).has_nan);
  }
}

// Found by fuzzing (tests/fuzz/corpus/select/regression-kth-largest-nan):
// without NaN detection, the partitions silently dropped NaN values, the
// rank ran past the values left, and the search went on with a rank beyond
// its set (a float-to-integer conversion of NaN, then reads past the
// values). The sample positions (step / 2 + j * step) hold numbers so that
// the sample alone does not reveal the NaN; everything else is NaN, so
// fewer numbers than the rank remain.
template <class Isa>
void kth_with_hidden_nan() {
  for (const index_t n : {index_t{200}, index_t{5000}}) {
    const index_t step = n / 64;  // kth_largest's sample stride up to 8192 values
    std::vector<float> v(static_cast<std::size_t>(n), std::numeric_limits<float>::quiet_NaN());
    index_t numbers = 0;
    for (index_t i = step / 2; i < n; i += step, ++numbers) v[static_cast<std::size_t>(i)] = static_cast<float>(i % 7);
    for (const index_t k : {numbers + 1, n / 2, n}) {
      std::vector<float> a(static_cast<std::size_t>(n) + 64), b(static_cast<std::size_t>(n) + 64);
      const auto r = kvcrush::impl::kth_largest<Isa>(v.data(), n, k, a.data(), b.data(), /*detect_nan=*/false);
      EXPECT_TRUE(r.has_nan || r.value != r.value) << Isa::name << " n=" << n << " k=" << k;
    }
  }
}

TEST(OrderStatistics, KthLargestWithoutNaNDetectionStaysInItsSet) {
  kth_with_hidden_nan<isa::scalar>();
  kvcrush_test::for_each_simd_isa([](auto tag) { kth_with_hidden_nan<decltype(tag)>(); });
}

TEST(OrderStatistics, TopKBreaksTiesByPosition) {
  const std::vector<float> v = {1, 3, 3, 2, 3, 3, 0};
  std::vector<std::uint8_t> flags(v.size(), 0);
  std::vector<float> a(80), b(80);
  ASSERT_TRUE(kvcrush::impl::mark_top_k<isa::active>(v.data(), 7, 3, flags.data(), 1, a.data(), b.data()));
  EXPECT_EQ(flags, (std::vector<std::uint8_t>{0, 1, 1, 0, 1, 0, 0}));
  for (long n : {50L, 3000L}) {
    const auto x = kvcrush_test::tricky_floats(static_cast<std::size_t>(n), 11, 4);
    for (long k : {0L, 1L, n / 3, n}) {
      std::vector<std::uint8_t> f(static_cast<std::size_t>(n), 0);
      std::vector<float> aa(static_cast<std::size_t>(n) + 64), bb(static_cast<std::size_t>(n) + 64);
      ASSERT_TRUE(kvcrush::impl::mark_top_k<isa::active>(x.data(), n, k, f.data(), 1, aa.data(), bb.data()));
      const auto expected = spec::top_k(spec::range(0, n), [&](long t) { return x[t]; }, k);
      std::vector<long> got;
      for (long t = 0; t < n; ++t) {
        if (f[t]) got.push_back(t);
      }
      ASSERT_EQ(got, expected) << "n=" << n << " k=" << k;
    }
  }
}

namespace {

spec::Rows to_rows(const std::vector<float>& flat, index_t heads, index_t tokens, index_t stride) {
  spec::Rows rows(static_cast<std::size_t>(heads), std::vector<float>(static_cast<std::size_t>(tokens)));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) rows[h][t] = flat[h * stride + t];
  return rows;
}

}  // namespace

TEST(Signatures, MatchSpecForEveryHeadCount) {
  kvcrush::workspace ws;
  for (index_t heads : {1, 7, 8, 32, 64, 65, 128}) {
    for (index_t tokens : {1, 2, 9, 64, 333}) {
      for (auto mode : {kvcrush::threshold_mode::median, kvcrush::threshold_mode::mean}) {
        const index_t stride = tokens + 3;  // padded rows
        // Mean mode: keep values away from the mean (SPEC 4.1) by using a
        // coarse grid without infinities.
        auto flat = mode == kvcrush::threshold_mode::median
                        ? kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride), 5, 6)
                        : kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride), 5, 6, 0.0);
        const index_t begin = tokens > 4 ? 2 : 0;
        const index_t end = tokens > 4 ? tokens - 1 : tokens;
        kvcrush::matrix_view<const float> scores = kvcrush::make_matrix_view(flat.data(), heads, tokens, stride);
        const index_t words = kvcrush::signature_words(heads);
        std::vector<std::uint64_t> sig(static_cast<std::size_t>((end - begin) * words) + 1);
        std::vector<index_t> counts(static_cast<std::size_t>(heads));
        kvcrush::compute_signatures(scores, begin, end, mode, kvcrush::make_matrix_view(sig.data(), end - begin, words),
                                    ws, kvcrush::make_vector_view(counts.data(), heads));
        const auto expected = spec::signatures(to_rows(flat, heads, tokens, stride), begin, end, mode);
        for (index_t t = 0; t < end - begin; ++t) {
          for (index_t h = 0; h < heads; ++h) {
            ASSERT_EQ((sig[t * words + h / 64] >> (h % 64)) & 1u, static_cast<unsigned>(expected[t][h]))
                << "H=" << heads << " N=" << tokens << " t=" << t << " h=" << h << " mode=" << kvcrush::to_string(mode);
          }
          if (heads % 64) {
            ASSERT_EQ(sig[t * words + words - 1] >> (heads % 64), 0u) << "unused bits stay 0";
          }
        }
        for (index_t h = 0; h < heads; ++h) {
          long count = 0;
          for (const auto& s : expected) count += s[h];
          ASSERT_EQ(counts[h], count);
          if (mode == kvcrush::threshold_mode::median) {
            ASSERT_EQ(count, (end - begin) / 2);
          }
        }
      }
    }
  }
}

TEST(Signatures, StridedColumnsAndAllIsasAgree) {
  // A transposed (token-major) score buffer viewed as (heads, tokens).
  const index_t heads = 33, tokens = 1000;
  const auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * tokens), 9);
  kvcrush::matrix_view<const float> transposed(flat.data(), {heads, tokens}, {1, heads});
  kvcrush::workspace ws;
  std::vector<std::uint64_t> expected(static_cast<std::size_t>(tokens)), got(static_cast<std::size_t>(tokens));
  kvcrush::compute_signatures<isa::scalar>(transposed, 0, tokens, kvcrush::threshold_mode::median,
                                           kvcrush::make_matrix_view(expected.data(), tokens, 1), ws);
  spec::Rows rows(heads, std::vector<float>(tokens));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) rows[h][t] = flat[t * heads + h];
  const auto reference = spec::signatures(rows, 0, tokens, kvcrush::threshold_mode::median);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < heads; ++h) ASSERT_EQ((expected[t] >> h) & 1u, static_cast<unsigned>(reference[t][h]));
  kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (auto mode : {kvcrush::threshold_mode::median, kvcrush::threshold_mode::mean}) {
      std::vector<std::uint64_t> e(static_cast<std::size_t>(tokens)), g(static_cast<std::size_t>(tokens));
      kvcrush::compute_signatures<isa::scalar>(transposed, 0, tokens, mode, kvcrush::make_matrix_view(e.data(), tokens, 1), ws);
      kvcrush::compute_signatures<Isa>(transposed, 0, tokens, mode, kvcrush::make_matrix_view(g.data(), tokens, 1), ws);
      ASSERT_EQ(g, e) << Isa::name << " " << kvcrush::to_string(mode);
    }
  });
}

TEST(Signatures, RejectBadInput) {
  kvcrush::workspace ws;
  std::vector<float> flat(4 * 10, 1.0f);
  std::vector<std::uint64_t> sig(10);
  auto scores = kvcrush::make_matrix_view<const float>(flat.data(), 4, 10);
  auto out = kvcrush::make_matrix_view(sig.data(), 10, 1);
  const auto median = kvcrush::threshold_mode::median;
  EXPECT_THROW(kvcrush::compute_signatures(kvcrush::make_matrix_view<const float>(flat.data(), 0, 10), 0, 10, median, out, ws),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::compute_signatures(scores, 0, 11, median, out, ws), std::invalid_argument);
  EXPECT_THROW(kvcrush::compute_signatures(scores, 5, 4, median, out, ws), std::invalid_argument);
  EXPECT_THROW(kvcrush::compute_signatures(scores, 0, 9, median, out, ws), std::invalid_argument);
  flat[13] = std::numeric_limits<float>::quiet_NaN();
  try {
    kvcrush::compute_signatures(scores, 0, 10, median, out, ws);
    FAIL() << "NaN accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos);
  }
  EXPECT_THROW(kvcrush::compute_signatures(scores, 0, 10, kvcrush::threshold_mode::mean, out, ws), std::invalid_argument);
}

TEST(Anchors, MatchSpec) {
  std::mt19937_64 rng(1);
  for (index_t bits : {1, 7, 64, 65, 130}) {
    const index_t total = 11;
    std::vector<spec::Bits> sigs(total, spec::Bits(bits));
    std::vector<index_t> counts(bits, 0);
    for (auto& s : sigs)
      for (index_t b = 0; b < bits; ++b) {
        s[b] = static_cast<int>(rng() & 1u);
        counts[b] += s[b];
      }
    for (auto mode : {kvcrush::anchor_mode::mean, kvcrush::anchor_mode::inv_mean, kvcrush::anchor_mode::zeros,
                      kvcrush::anchor_mode::ones, kvcrush::anchor_mode::alternating, kvcrush::anchor_mode::random}) {
      std::vector<std::uint64_t> a(static_cast<std::size_t>(kvcrush::signature_words(bits)));
      kvcrush::make_anchor(mode, bits, counts.data(), total, 42, a.data());
      const auto expected = spec::anchor(mode, sigs, static_cast<std::size_t>(bits), 42);
      for (index_t b = 0; b < bits; ++b) ASSERT_EQ((a[b / 64] >> (b % 64)) & 1u, static_cast<unsigned>(expected[b]));
      if (bits % 64) {
        ASSERT_EQ(a.back() >> (bits % 64), 0u);
      }
    }
  }
  // The random anchor is deterministic per seed and differs across seeds.
  std::uint64_t a1 = 0, a2 = 0, a3 = 0;
  kvcrush::make_anchor(kvcrush::anchor_mode::random, 64, nullptr, 0, 7, &a1);
  kvcrush::make_anchor(kvcrush::anchor_mode::random, 64, nullptr, 0, 7, &a2);
  kvcrush::make_anchor(kvcrush::anchor_mode::random, 64, nullptr, 0, 8, &a3);
  EXPECT_EQ(a1, a2);
  EXPECT_NE(a1, a3);
}

TEST(Representatives, IndexFormulasMatchSpec) {
  for (auto rule : {kvcrush::representative_rule::bucket_center, kvcrush::representative_rule::bucket_start,
                    kvcrush::representative_rule::linspace, kvcrush::representative_rule::stride}) {
    for (index_t n = 1; n <= 40; ++n) {
      for (index_t k = 1; k <= n; ++k) {
        index_t previous = -1;
        for (index_t i = 0; i < k; ++i) {
          const index_t p = kvcrush::representative_index(rule, i, n, k);
          ASSERT_EQ(p, spec::representative(rule, i, n, k)) << kvcrush::to_string(rule) << " n=" << n << " k=" << k;
          ASSERT_GT(p, previous) << "representatives are distinct and ordered";
          ASSERT_LT(p, n);
          previous = p;
        }
      }
    }
  }
  // The SPEC's worked cases: 10 candidates, 3 representatives.
  using R = kvcrush::representative_rule;
  EXPECT_EQ(kvcrush::representative_index(R::bucket_start, 1, 10, 3), 3);
  EXPECT_EQ(kvcrush::representative_index(R::bucket_center, 0, 10, 3), 1);
  EXPECT_EQ(kvcrush::representative_index(R::bucket_center, 2, 10, 3), 7);
  EXPECT_EQ(kvcrush::representative_index(R::linspace, 2, 10, 3), 9);
  EXPECT_EQ(kvcrush::representative_index(R::stride, 2, 10, 3), 6);
}

TEST(Representatives, CountingSortOrdersByDistanceThenPosition) {
  // Candidates are the items with flag 0; distances up to 4.
  const std::vector<std::uint32_t> dist = {3, 0, 4, 0, 2, 3, 1, 0, 2, 4};
  std::vector<std::uint8_t> flags = {0, 0, 1, 0, 0, 0, 0, 1, 0, 0};
  std::vector<index_t> histogram(kvcrush::representative_histogram_size(4)), order(10);
  // Ordered candidates: (0,1) (0,3) (1,6) (2,4) (2,8) (3,0) (3,5) (4,9); stride k=4 -> 0,2,4,6.
  kvcrush::impl::mark_representatives(dist.data(), flags.data(), 10, 0, 2, 4,
                                        kvcrush::representative_rule::stride, 4, histogram.data(), order.data());
  EXPECT_EQ(flags, (std::vector<std::uint8_t>{0, 2, 1, 0, 0, 2, 2, 1, 2, 0}));
}

TEST(Representatives, IncrementalIndicesEqualTheFormula) {
  for (auto rule : {kvcrush::representative_rule::bucket_center, kvcrush::representative_rule::bucket_start,
                    kvcrush::representative_rule::linspace, kvcrush::representative_rule::stride}) {
    for (index_t n : {1, 2, 3, 7, 10, 64, 97, 1000, 65537}) {
      for (index_t k : {1, 2, 3, 5, 9, 64, 333, 1000, 40000}) {
        if (k > n) continue;
        std::vector<index_t> got;
        kvcrush::for_each_representative_index(rule, n, k, [&](index_t p) { got.push_back(p); });
        ASSERT_EQ(static_cast<index_t>(got.size()), k);
        for (index_t i = 0; i < k; ++i)
          ASSERT_EQ(got[static_cast<std::size_t>(i)], kvcrush::representative_index(rule, i, n, k)) << n << " " << k << " " << i;
      }
    }
  }
}

TEST(Representatives, MatchAStableSortForEverySizeAndRule) {
  // The counting sort runs on quarters of the range at once; sizes around
  // multiples of 4 and heavy ties check that the order stays stable.
  std::mt19937 rng(5);
  for (index_t n = 1; n <= 70; ++n) {
    for (index_t max_distance : {0, 1, 3, 64}) {
      std::vector<std::uint32_t> dist(static_cast<std::size_t>(n));
      std::vector<std::uint8_t> flags(static_cast<std::size_t>(n));
      for (index_t t = 0; t < n; ++t) {
        dist[static_cast<std::size_t>(t)] = static_cast<std::uint32_t>(rng() % static_cast<unsigned>(max_distance + 1));
        flags[static_cast<std::size_t>(t)] = static_cast<std::uint8_t>(rng() % 3 == 0);  // 0: candidate
      }
      std::vector<index_t> sorted;
      for (index_t t = 0; t < n; ++t)
        if (flags[static_cast<std::size_t>(t)] == 0) sorted.push_back(t);
      std::stable_sort(sorted.begin(), sorted.end(), [&](index_t a, index_t b) {
        return dist[static_cast<std::size_t>(a)] < dist[static_cast<std::size_t>(b)];
      });
      const auto candidates = static_cast<index_t>(sorted.size());
      for (auto rule : {kvcrush::representative_rule::bucket_center, kvcrush::representative_rule::bucket_start,
                        kvcrush::representative_rule::linspace, kvcrush::representative_rule::stride}) {
        for (index_t k = 1; k <= candidates; k += 1 + candidates / 5) {
          std::vector<std::uint8_t> expected = flags, got = flags;
          for (index_t i = 0; i < k; ++i)
            expected[static_cast<std::size_t>(sorted[static_cast<std::size_t>(kvcrush::representative_index(rule, i, candidates, k))])] = 2;
          std::vector<index_t> histogram(kvcrush::representative_histogram_size(max_distance)), order(static_cast<std::size_t>(n));
          kvcrush::impl::mark_representatives(dist.data(), got.data(), n, 0, 2, k, rule, max_distance, histogram.data(),
                                              order.data());
          ASSERT_EQ(got, expected) << "n " << n << " max_distance " << max_distance << " k " << k;
        }
      }
    }
  }
}

TEST(Representatives, ClassPassesEqualTheCountingSort) {
  // The SIMD kernels' class passes (mark_representatives_by_class) against
  // the counting sort: sizes around the 64-item blocks, one class to 200,
  // few or many candidates, every rule, k from 1 to every candidate.
  std::mt19937 rng(17);
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t n : {64, 65, 127, 128, 129, 1000, 4099, 40000}) {
      for (index_t max_distance : {0, 1, 8, 32, 64, 200}) {
        for (unsigned candidate_in : {1u, 2u, 8u}) {  // one item in candidate_in is a candidate
          std::vector<std::uint32_t> dist(static_cast<std::size_t>(n));
          std::vector<std::uint8_t> flags(static_cast<std::size_t>(n));
          for (index_t t = 0; t < n; ++t) {
            // Binomial-like distances (the shape of real ones), sometimes uniform.
            std::uint32_t d = 0;
            if (t % 3 == 0) {
              d = static_cast<std::uint32_t>(rng() % static_cast<unsigned>(max_distance + 1));
            } else {
              for (index_t b = 0; b < max_distance; ++b) d += rng() & 1u;
            }
            dist[static_cast<std::size_t>(t)] = d;
            flags[static_cast<std::size_t>(t)] = static_cast<std::uint8_t>(rng() % candidate_in == 0 ? 0 : 1);
          }
          index_t candidates = 0;
          for (auto f : flags) candidates += f == 0;
          for (auto rule : {kvcrush::representative_rule::bucket_center, kvcrush::representative_rule::bucket_start,
                            kvcrush::representative_rule::linspace, kvcrush::representative_rule::stride}) {
            for (index_t k : {index_t{1}, candidates / 8, candidates / 2, candidates}) {
              if (k < 1 || k > candidates) continue;
              std::vector<std::uint8_t> expected = flags, got = flags;
              std::vector<index_t> histogram(kvcrush::representative_histogram_size(max_distance));
              std::vector<index_t> order(static_cast<std::size_t>(n) + 1);
              kvcrush::impl::mark_representatives(dist.data(), expected.data(), n, 0, 2, k, rule, max_distance,
                                                  histogram.data(), order.data());
              kvcrush::impl::select_representatives<Isa>(dist.data(), got.data(), n, 0, 2, k, rule, max_distance,
                                                         histogram.data(), order.data());
              ASSERT_EQ(got, expected) << Isa::name << " n " << n << " max_distance " << max_distance << " k " << k;
            }
          }
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << kvcrush::isa::name() << " build";
}

// OpenVINO GenAI's KVCrush unit-test vectors (block mode, one head).
TEST(OpenVinoVectors, MeanAnchorOfBlockIndicators) {
  const std::vector<int> indicators = {1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0};
  std::vector<std::uint64_t> token_sig(indicators.begin(), indicators.end());
  std::vector<std::uint64_t> block_sig(5);
  const std::uint64_t* blocks =
      kvcrush::impl::concatenate_block_signatures(token_sig.data(), 1, 1, 5, 4, block_sig.data());
  std::vector<index_t> counts(64, 0);
  kvcrush::impl::count_block_bits<kvcrush::isa::active>(blocks, 5, 1, counts.data());
  EXPECT_EQ(std::vector<index_t>(counts.begin(), counts.begin() + 4), (std::vector<index_t>{3, 2, 3, 0}));
  std::uint64_t anchor = 0;
  kvcrush::make_anchor(kvcrush::anchor_mode::mean, 4, counts.data(), 5, 0, &anchor);
  EXPECT_EQ(anchor, 0b0101u) << "anchor {1,0,1,0}: bit i is block position i";
}

TEST(OpenVinoVectors, BlockDistancesToAnchor) {
  const std::vector<std::uint64_t> token_sig = {1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0};
  std::vector<std::uint64_t> block_sig(3);
  const std::uint64_t* blocks =
      kvcrush::impl::concatenate_block_signatures(token_sig.data(), 1, 1, 3, 4, block_sig.data());
  const std::uint64_t anchor = 0b0101;  // {1,0,1,0}
  std::vector<std::uint32_t> d(3);
  kvcrush::hamming_distances(kvcrush::make_matrix_view<const std::uint64_t>(blocks, 3, 1),
                             kvcrush::make_vector_view<const std::uint64_t>(&anchor, 1),
                             kvcrush::make_vector_view(d.data(), 3));
  EXPECT_EQ(d, (std::vector<std::uint32_t>{0, 4, 2}));
}

TEST(OpenVinoVectors, StrideRepresentatives) {
  // Four candidate blocks whose distance equals their index.
  const std::vector<std::uint32_t> dist = {0, 1, 2, 3};
  std::vector<index_t> histogram(kvcrush::representative_histogram_size(4)), order(4);
  for (auto [budget, expected] : {std::pair<index_t, std::vector<std::uint8_t>>{2, {2, 0, 2, 0}},
                                  std::pair<index_t, std::vector<std::uint8_t>>{4, {2, 2, 2, 2}}}) {
    std::vector<std::uint8_t> flags(4, 0);
    kvcrush::impl::mark_representatives(dist.data(), flags.data(), 4, 0, 2, budget,
                                          kvcrush::representative_rule::stride, 4, histogram.data(), order.data());
    EXPECT_EQ(flags, expected) << "budget " << budget;
  }
}

TEST(Hamming, PublicApiChecksShapes) {
  std::vector<std::uint64_t> sig(6), anchor(2);
  std::vector<std::uint32_t> d(3);
  auto s = kvcrush::make_matrix_view<const std::uint64_t>(sig.data(), 3, 2);
  EXPECT_THROW(kvcrush::hamming_distances(s, kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), 1),
                                          kvcrush::make_vector_view(d.data(), 3)),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::hamming_distances(s, kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), 2),
                                          kvcrush::make_vector_view(d.data(), 2)),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::hamming_distances(kvcrush::make_matrix_view<const std::uint64_t>(sig.data(), 3, 0),
                                          kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), 0),
                                          kvcrush::make_vector_view(d.data(), 3)),
               std::invalid_argument);
  sig = {1, 2, 3, 4, 5, 6};
  anchor = {0, 0};
  kvcrush::hamming_distances(s, kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), 2),
                             kvcrush::make_vector_view(d.data(), 3));
  EXPECT_EQ(d, (std::vector<std::uint32_t>{2, 3, 4}));
}

// Block signatures against a bit-by-bit concatenation, for signature widths
// that take each path (whole words, packed streams of 1..32-bit signatures,
// shifted words) and block sizes whose blocks do and do not end on word
// boundaries.
TEST(BlockSignatures, ConcatenationMatchesBitByBit) {
  for (index_t bits : {1, 2, 3, 4, 7, 8, 9, 16, 24, 32, 33, 63, 64, 65, 100, 128}) {
    for (index_t b : {1, 2, 3, 4, 8, 16, 32, 64}) {
      const index_t blocks = 5;
      const index_t token_words = kvcrush::signature_words(bits);
      const index_t block_words = kvcrush::signature_words(bits * b);
      std::mt19937_64 rng(static_cast<std::uint64_t>(bits * 1000 + b));
      std::vector<std::uint64_t> token_sig(static_cast<std::size_t>(blocks * b * token_words));
      for (std::size_t t = 0; t < token_sig.size(); ++t) {
        // Bits past `bits` stay zero, as the signature builders leave them.
        const index_t used = bits - 64 * static_cast<index_t>(t % static_cast<std::size_t>(token_words));
        token_sig[t] = used >= 64 ? rng() : rng() & ((std::uint64_t{1} << used) - 1);
      }
      std::vector<std::uint64_t> expected(static_cast<std::size_t>(blocks * block_words), 0);
      for (index_t j = 0; j < blocks; ++j)
        for (index_t i = 0; i < b; ++i)
          for (index_t bit = 0; bit < bits; ++bit) {
            const std::uint64_t word = token_sig[static_cast<std::size_t>((j * b + i) * token_words + bit / 64)];
            if ((word >> (bit % 64)) & 1u) {
              const index_t at = i * bits + bit;
              expected[static_cast<std::size_t>(j * block_words + at / 64)] |= std::uint64_t{1} << (at % 64);
            }
          }
      std::vector<std::uint64_t> scratch(expected.size() + 1, 0xdeadbeefull);
      const std::uint64_t* got = kvcrush::impl::concatenate_block_signatures(token_sig.data(), token_words, bits,
                                                                             blocks, b, scratch.data());
      ASSERT_EQ(std::vector<std::uint64_t>(got, got + expected.size()), expected) << "bits " << bits << " b " << b;
      // The mean anchor's counts of those block signatures.
      std::vector<index_t> counts(static_cast<std::size_t>(64 * block_words), -1);
      kvcrush::impl::count_block_bits<kvcrush::isa::active>(got, blocks, block_words, counts.data());
      for (index_t bit = 0; bit < 64 * block_words; ++bit) {
        index_t set = 0;
        for (index_t j = 0; j < blocks; ++j) set += (expected[static_cast<std::size_t>(j * block_words + bit / 64)] >> (bit % 64)) & 1u;
        ASSERT_EQ(counts[static_cast<std::size_t>(bit)], set) << "bits " << bits << " b " << b << " bit " << bit;
      }
    }
  }
}
