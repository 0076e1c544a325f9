// Every SIMD kernel against the scalar kernel, bit for bit, on sizes that hit
// every tail, unaligned and padded inputs, ties, ±inf and all-equal rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/simd/hamming.hpp"
#include "kvcrush/simd/bits.hpp"
#include "kvcrush/simd/column_counts.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/simd/head_bits_distances.hpp"
#include "kvcrush/simd/kept_positions.hpp"
#include "kvcrush/simd/partition.hpp"
#include "kvcrush/simd/signature.hpp"
#if KVCRUSH_HAS_AVX2
#include "kvcrush/simd/sort64_avx2.hpp"
#include "kvcrush/simd/sort64_avx512.hpp"
#endif
#include "test_support.hpp"

namespace isa = kvcrush::isa;
namespace simd = kvcrush::simd;
using kvcrush::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST(PartitionKernel, MatchesScalarOnEveryTail) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    for (long n : kvcrush_test::tail_sizes()) {
      for (int offset = 0; offset < 4; ++offset) {  // unaligned starts
        auto data = kvcrush_test::tricky_floats(static_cast<std::size_t>(n + offset), static_cast<std::uint32_t>(n * 7 + offset));
        const float* src = data.data() + offset;
        const std::pair<float, float> brackets[] = {{-0.25f, 0.5f}, {0.0f, 0.0f}, {-inf, inf}, {inf, inf},
                                                    {0.25f, -0.25f}, {-inf, -0.5f}};
        for (auto [lo, hi] : brackets) {
          std::vector<float> expected(static_cast<std::size_t>(n) + 1, 7.0f), got(static_cast<std::size_t>(n) + 1, 7.0f);
          const auto e = simd::partition_kernel<isa::scalar>::run(src, n, lo, hi, expected.data());
          const auto g = simd::partition_kernel<Isa>::run(src, n, lo, hi, got.data());
          ASSERT_EQ(g.above, e.above) << Isa::name << " n=" << n;
          ASSERT_EQ(g.below, e.below) << Isa::name << " n=" << n;
          ASSERT_EQ(g.inside, e.inside) << Isa::name << " n=" << n;
          for (index_t i = 0; i < e.inside; ++i) ASSERT_TRUE(same_bits(got[i], expected[i])) << Isa::name << " n=" << n << " i=" << i;
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(PartitionKernel, WithoutBelowCountMatchesScalarOnNaNFreeInput) {
  // The form the order statistics use on every later pass (and on the first
  // when the caller checks NaN elsewhere): same above count and packed values.
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    for (long n : kvcrush_test::tail_sizes()) {
      for (int offset = 0; offset < 4; ++offset) {
        auto data = kvcrush_test::tricky_floats(static_cast<std::size_t>(n + offset),
                                                static_cast<std::uint32_t>(n * 5 + offset), 40);
        const float* src = data.data() + offset;
        const std::pair<float, float> brackets[] = {{-0.25f, 0.5f}, {0.0f, 0.0f}, {-inf, inf}, {inf, inf}, {-inf, -0.5f}};
        for (auto [lo, hi] : brackets) {
          std::vector<float> expected(static_cast<std::size_t>(n) + 1, 7.0f), got(expected.size(), 7.0f);
          const auto e = simd::partition_kernel<isa::scalar>::run<false>(src, n, lo, hi, expected.data());
          const auto g = simd::partition_kernel<Isa>::template run<false>(src, n, lo, hi, got.data());
          ASSERT_EQ(g.above, e.above) << Isa::name << " n=" << n;
          ASSERT_EQ(g.inside, e.inside) << Isa::name << " n=" << n;
          for (index_t i = 0; i < e.inside; ++i) ASSERT_TRUE(same_bits(got[i], expected[i])) << Isa::name << " n=" << n << " i=" << i;
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(BitHelpers, NonzeroBytesAndTrailingZeros) {
  // Every pattern of zero and nonzero bytes, the nonzero ones drawn from the
  // values that break naive tricks (0x01, 0x7f, 0x80, 0xff).
  const std::uint8_t nonzero[] = {0x01, 0x7f, 0x80, 0xff, 0x02};
  for (unsigned pattern = 0; pattern < 256; ++pattern) {
    std::uint64_t x = 0;
    for (int byte = 0; byte < 8; ++byte) {
      if (pattern >> byte & 1u) x |= std::uint64_t{nonzero[(pattern + byte) % 5]} << (8 * byte);
    }
    ASSERT_EQ(simd::nonzero_bytes8(x), pattern) << std::hex << x;
    if (pattern != 0) {
      unsigned lowest = 0;
      while (!(pattern >> lowest & 1u)) ++lowest;
      ASSERT_EQ(simd::count_trailing_zeros64(x) / 8, lowest) << std::hex << x;
    }
  }
  for (unsigned bit = 0; bit < 64; ++bit) {
    EXPECT_EQ(simd::count_trailing_zeros64(std::uint64_t{1} << bit | std::uint64_t{1} << 63), bit);
  }
}

TEST(PartitionKernel, ScalarCountsAreRight) {
  const std::vector<float> v = {1, 2, 3, inf, -inf, 2, 0, std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> out(v.size());
  const auto c = simd::partition_kernel<isa::scalar>::run(v.data(), 8, 1.0f, 2.0f, out.data());
  EXPECT_EQ(c.above, 2);   // 3, inf
  EXPECT_EQ(c.below, 2);   // -inf, 0
  EXPECT_EQ(c.inside, 3);  // 1, 2, 2 (NaN in no class)
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], 2.0f);
}

namespace {

struct signature_case {
  index_t heads, tokens, pad, begin, end;
  bool sums;
  bool with_sig;
};

struct signature_output {
  std::vector<std::uint64_t> sig;
  std::vector<float> sums;
  std::vector<index_t> counts;
  bool nan;
};

template <class Isa>
signature_output run_signature(const std::vector<float>& scores, const signature_case& c,
                               const std::vector<float>& thresholds, bool inclusive) {
  signature_output out;
  const index_t words = kvcrush::signature_words(c.heads);
  const auto n = static_cast<std::size_t>(c.end - c.begin);
  out.sig.assign(n * static_cast<std::size_t>(words) + 1, 0xdeadbeefull);
  out.sums.assign(n + 1, -7.0f);
  out.counts.assign(static_cast<std::size_t>(c.heads), 5);
  simd::signature_job job;
  job.scores = scores.data() + 1;  // rows start unaligned
  job.row_stride = c.tokens + c.pad;
  job.heads = c.heads;
  job.begin = c.begin;
  job.end = c.end;
  job.thresholds = c.with_sig ? thresholds.data() : nullptr;
  job.inclusive = inclusive;
  job.signatures = c.with_sig ? out.sig.data() : nullptr;
  job.words = words;
  job.bit_counts = out.counts.data();
  job.sums = c.sums ? out.sums.data() : nullptr;
  out.nan = simd::signature_kernel<Isa>::run(job);
  return out;
}

}  // namespace

TEST(SignatureKernel, MatchesScalarForEveryHeadCountAndTail) {
  std::vector<signature_case> cases;
  for (index_t heads : {1, 7, 8, 32, 64, 65, 128}) {
    for (long tokens : kvcrush_test::tail_sizes()) {
      if (tokens > 200 && heads > 8) continue;  // keep the sweep quick; 4097 runs for small H
      cases.push_back({heads, tokens, 0, 0, tokens, true, true});
      cases.push_back({heads, tokens, 3, tokens / 3, tokens - tokens / 5, false, true});
      cases.push_back({heads, tokens, 5, 0, tokens, true, false});
    }
  }
  cases.push_back({32, 4097, 16, 5, 4090, true, true});
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (const auto& c : cases) {
      const auto seed = static_cast<std::uint32_t>(c.heads * 1000 + c.tokens);
      auto scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(c.heads * (c.tokens + c.pad) + 1), seed);
      // Thresholds on the grid (many ties), at +-inf, and NaN (no bits).
      std::vector<float> thresholds(static_cast<std::size_t>(c.heads));
      for (index_t h = 0; h < c.heads; ++h) {
        const float options[] = {0.0f, 0.25f, -0.5f, inf, -inf, 1.0f, std::numeric_limits<float>::quiet_NaN()};
        thresholds[h] = options[h % 7];
      }
      if (c.heads == 7) std::fill(scores.begin(), scores.end(), 0.25f);  // all-equal rows
      for (bool inclusive : {true, false}) {
        const auto e = run_signature<isa::scalar>(scores, c, thresholds, inclusive);
        const auto g = run_signature<Isa>(scores, c, thresholds, inclusive);
        const std::string where = std::string(Isa::name) + " H=" + std::to_string(c.heads) + " N=" +
                                  std::to_string(c.tokens) + (inclusive ? " >=" : " >");
        ASSERT_EQ(g.sig, e.sig) << where;
        ASSERT_EQ(g.counts, e.counts) << where;
        ASSERT_EQ(g.nan, e.nan) << where;
        for (std::size_t i = 0; i < e.sums.size(); ++i) ASSERT_TRUE(same_bits(g.sums[i], e.sums[i])) << where << " sum " << i;
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(SignatureKernel, ScalarSetsTheRightBits) {
  // Two heads, five tokens.
  const std::vector<float> scores = {0.0f, 3, 1, 2, 3, 0, 5, 5, 1, 5, 5};
  const std::vector<float> thresholds = {2.0f, 5.0f};
  std::vector<std::uint64_t> sig(5);
  std::vector<index_t> counts(2, 0);
  std::vector<float> sums(5);
  simd::signature_job job;
  job.scores = scores.data() + 1;
  job.row_stride = 5;
  job.heads = 2;
  job.begin = 0;
  job.end = 5;
  job.thresholds = thresholds.data();
  job.signatures = sig.data();
  job.words = 1;
  job.bit_counts = counts.data();
  job.sums = sums.data();
  job.inclusive = true;
  EXPECT_FALSE(simd::signature_kernel<isa::scalar>::run(job));
  // head 0: 3 1 2 3 0 >= 2 -> tokens 0, 2, 3; head 1: 5 5 1 5 5 >= 5 -> 0, 1, 3, 4
  EXPECT_EQ(sig, (std::vector<std::uint64_t>{0b11, 0b10, 0b01, 0b11, 0b10}));
  EXPECT_EQ(counts, (std::vector<index_t>{3, 4}));
  EXPECT_EQ(sums, (std::vector<float>{8, 6, 3, 8, 5}));
  job.inclusive = false;
  counts = {0, 0};
  EXPECT_FALSE(simd::signature_kernel<isa::scalar>::run(job));
  EXPECT_EQ(sig, (std::vector<std::uint64_t>{0b01, 0b00, 0b00, 0b01, 0b00}));
  EXPECT_EQ(counts, (std::vector<index_t>{2, 0}));
}

TEST(SignatureKernel, ReportsNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto check = [&](auto tag) {
    using Isa = decltype(tag);
    for (bool sums : {false, true}) {
      std::vector<float> scores(3 * 40, 1.0f);
      scores[2 * 40 + 37] = nan;
      std::vector<float> out_sums(40);
      simd::signature_job job;
      job.scores = scores.data();
      job.row_stride = 40;
      job.heads = 3;
      job.begin = 0;
      job.end = 40;
      job.sums = sums ? out_sums.data() : nullptr;
      EXPECT_TRUE(simd::signature_kernel<Isa>::run(job)) << Isa::name;
      // +inf and -inf in different heads: the summed importance is NaN.
      scores[2 * 40 + 37] = 1.0f;
      scores[0 * 40 + 3] = inf;
      scores[1 * 40 + 3] = -inf;
      EXPECT_EQ(simd::signature_kernel<Isa>::run(job), sums) << Isa::name;
    }
  };
  check(isa::scalar{});
  kvcrush_test::for_each_simd_isa(check);
}

TEST(OrderStatisticsKernel, SmallArraysMatchTheRankCount) {
  // Every n up to the kernel's 64, every pair of ranks, values with heavy
  // ties and infinities, and a NaN in the array (ranks then count the
  // NaN-free part, and an unreachable rank gives v[0]).
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    for (long n = 1; n <= 64; ++n) {
      for (int variant = 0; variant < 3; ++variant) {
        auto v = kvcrush_test::tricky_floats(static_cast<std::size_t>(n), static_cast<std::uint32_t>(n * 3 + variant),
                                             variant == 0 ? 3 : 1000);
        if (variant == 2) v[static_cast<std::size_t>(n / 2)] = std::numeric_limits<float>::quiet_NaN();
        for (index_t r_a = 0; r_a < n; ++r_a) {
          const index_t r_b = n - 1 - r_a;
          float ea, eb, ga, gb;
          kvcrush::impl::small_order_statistics<isa::scalar>(v.data(), n, r_a, r_b, ea, eb);
          kvcrush::impl::small_order_statistics<Isa>(v.data(), n, r_a, r_b, ga, gb);
          ASSERT_TRUE(same_bits(ga, ea) || (ga == 0.0f && ea == 0.0f)) << Isa::name << " n=" << n << " r=" << r_a;
          ASSERT_TRUE(same_bits(gb, eb) || (gb == 0.0f && eb == 0.0f)) << Isa::name << " n=" << n << " r=" << r_b;
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(MedianSignatures, EveryIsaMatchesScalarAcrossTilesHeadsAndSums) {
  // The AVX2 and AVX-512 kernels make median signatures one head at a time
  // and transpose 512-token tiles; sizes straddle the tiles, heads every block
  // shape, rows padded and started unaligned, with the head-order sums.
  kvcrush::workspace ws_scalar, ws_simd;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t heads : {1, 7, 8, 31, 32, 33, 64, 65, 96, 128}) {
      for (index_t tokens : {2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 511, 512, 513, 1000, 1537}) {
        const index_t stride = tokens + 5;
        const index_t begin = tokens > 20 ? 3 : 0;
        const index_t end = tokens > 20 ? tokens - 2 : tokens;
        const index_t n = end - begin;
        const index_t words = kvcrush::signature_words(heads);
        for (bool with_sums : {false, true}) {
          // Infinities only without sums: +inf + -inf would make a sum NaN.
          const auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride),
                                                        static_cast<std::uint32_t>(heads * 1000 + tokens),
                                                        heads % 2 ? 5 : 4000, with_sums ? 0.0 : 0.02);
          const kvcrush::impl::score_rows rows{flat.data(), stride, heads, tokens};
          std::vector<std::uint64_t> es(static_cast<std::size_t>(n * words)), gs(es.size(), ~0ull);
          std::vector<float> esum(static_cast<std::size_t>(n)), gsum(esum.size());
          std::vector<index_t> ec(static_cast<std::size_t>(heads)), gc(ec.size());
          const bool eok = kvcrush::impl::build_signatures<isa::scalar>(
              rows, begin, end, kvcrush::threshold_mode::median, es.data(), ec.data(), with_sums ? esum.data() : nullptr,
              ws_scalar);
          const bool gok = kvcrush::impl::build_signatures<Isa>(rows, begin, end, kvcrush::threshold_mode::median,
                                                                gs.data(), gc.data(),
                                                                with_sums ? gsum.data() : nullptr, ws_simd);
          ASSERT_TRUE(eok);
          ASSERT_TRUE(gok);
          ASSERT_EQ(gs, es) << Isa::name << " H=" << heads << " N=" << tokens << " sums=" << with_sums;
          ASSERT_EQ(gc, ec) << Isa::name << " H=" << heads << " N=" << tokens;
          if (with_sums) {
            for (index_t t = 0; t < n; ++t) ASSERT_TRUE(same_bits(gsum[t], esum[t])) << Isa::name << " t=" << t;
          }
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

#if KVCRUSH_HAS_AVX2
TEST(SortNetwork, ColumnNetworkSortsEveryZeroOneInput) {
  // The 0-1 principle: a comparator network sorts every input iff it sorts
  // every input of zeros and ones; 256 such inputs, one per lane pattern.
  for (unsigned pattern = 0; pattern < 256; ++pattern) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_set1_ps(static_cast<float>(pattern >> i & 1u));
    simd::impl::sort64_avx2::sort_columns(r);
    for (int i = 1; i < 8; ++i) ASSERT_LE(_mm256_cvtss_f32(r[i - 1]), _mm256_cvtss_f32(r[i])) << pattern;
  }
}

TEST(SortNetwork, Sorts64FloatsAsStdSort) {
  // Random values, heavy ties, infinities, zeros of both signs; the
  // bitonic merges are checked on every run boundary by the final order.
  std::mt19937 rng(8);
  for (int trial = 0; trial < 3000; ++trial) {
    auto v = trial % 2 ? kvcrush_test::tricky_floats(64, static_cast<std::uint32_t>(trial), trial % 3 ? 4 : 1000, 0.1)
                       : kvcrush_test::random_floats(64, static_cast<std::uint32_t>(trial));
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(v.data() + 8 * i);
    simd::impl::sort64_avx2::sort(r);
    float got[64];
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(got + 8 * i, r[i]);
    std::sort(v.begin(), v.end());
    for (int i = 0; i < 64; ++i) ASSERT_EQ(got[i], v[static_cast<std::size_t>(i)]) << "trial " << trial << " at " << i;
  }
}

#if KVCRUSH_HAS_AVX512
TEST(SortNetwork, Avx512SortsOneTwoAndFourRegistersAsStdSort) {
  // The bitonic network on 16, 32 and 64 values: random values, heavy ties,
  // infinities and zeros of both signs (compared with ==, as the network
  // may swap -0 and +0).
  auto check = [](auto regs_tag, int trial) {
    constexpr int regs = decltype(regs_tag)::value;
    constexpr std::size_t count = 16 * regs;
    auto v = trial % 2 ? kvcrush_test::tricky_floats(count, static_cast<std::uint32_t>(trial), trial % 3 ? 4 : 1000, 0.1)
                       : kvcrush_test::random_floats(count, static_cast<std::uint32_t>(trial));
    __m512 r[4];
    for (int i = 0; i < regs; ++i) r[i] = _mm512_loadu_ps(v.data() + 16 * i);
    simd::impl::sort64_avx512::sort<regs>(r);
    float got[count];
    for (int i = 0; i < regs; ++i) _mm512_storeu_ps(got + 16 * i, r[i]);
    std::sort(v.begin(), v.end());
    for (std::size_t i = 0; i < count; ++i) ASSERT_EQ(got[i], v[i]) << regs << " registers, trial " << trial << " at " << i;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    check(std::integral_constant<int, 1>{}, trial);
    check(std::integral_constant<int, 2>{}, trial);
    check(std::integral_constant<int, 4>{}, trial);
  }
}
#endif

TEST(MedianSignatures, EveryTransposeAgreesWithAPlainOne) {
  // Random head-major bits (tile layout of head_bits.hpp) transposed by the
  // AVX2 kernel and by both AVX-512 paths (GFNI when compiled, vpmovw2m),
  // against a bit-by-bit transpose; every word count, partial tiles and groups.
  std::mt19937_64 rng(5);
  int kernels_run = 0;
  for (index_t heads : {1, 9, 32, 33, 64, 70, 128, 160}) {
    for (index_t n : {1, 7, 8, 9, 15, 16, 17, 100, 256, 511, 512, 513, 1030}) {
      const index_t stride = simd::head_bits_stride(heads), words = kvcrush::signature_words(heads);
      const index_t size = simd::head_bits_size(heads, n);
      kvcrush::workspace ws;  // 64-byte aligned, as the kernels need
      std::uint16_t* const bits = ws.head_bits(static_cast<std::size_t>(size + 32 * stride));
      for (index_t i = 0; i < size + 32 * stride; ++i) bits[i] = static_cast<std::uint16_t>(rng());
      // Padding heads and the tokens past n are zero, as the kernels leave them.
      auto bit_of = [&](index_t h, index_t t) -> std::uint64_t {
        const index_t g = t / 16;
        return (bits[static_cast<std::size_t>(((g / 32) * stride + h) * 32 + g % 32)] >> (t % 16)) & 1u;
      };
      for (index_t tile = 0; tile * 512 < n; ++tile) {
        for (index_t h = 0; h < stride; ++h) {
          for (index_t gi = 0; gi < 32; ++gi) {
            const index_t g = tile * 32 + gi;
            auto& slot = bits[static_cast<std::size_t>((tile * stride + h) * 32 + gi)];
            if (h >= heads || g * 16 >= n) slot = 0;
            else if (g * 16 + 16 > n) slot = static_cast<std::uint16_t>(slot & ((1u << (n - g * 16)) - 1u));
          }
        }
      }
      std::vector<std::uint64_t> expected(static_cast<std::size_t>(n * words) + 3, 0);
      for (index_t t = 0; t < n; ++t)
        for (index_t h = 0; h < heads; ++h) expected[t * words + h / 64] |= bit_of(h, t) << (h % 64);
      // The kernels write the n * words signature words and nothing past them.
      auto check = [&](const char* what, auto transpose) {
        std::vector<std::uint64_t> got(expected.size(), 0);
        transpose(got.data());
        ASSERT_EQ(got, expected) << what << " H=" << heads << " N=" << n;
        ++kernels_run;
      };
      if (kvcrush::isa::cpu_supports<isa::avx2>()) {
        check("avx2", [&](std::uint64_t* out) {
          simd::head_bits_kernel<isa::avx2>::transpose(bits, stride, n, out, words, bits + size);
        });
      }
#if KVCRUSH_HAS_AVX512
      if (kvcrush::isa::cpu_supports<isa::avx512>()) {
        check(KVCRUSH_HEAD_BITS_GFNI ? "avx512 gfni" : "avx512", [&](std::uint64_t* out) {
          simd::head_bits_kernel<isa::avx512>::transpose(bits, stride, n, out, words, bits + size);
        });
        check("avx512 vpmovw2m", [&](std::uint64_t* out) {
          simd::head_bits_kernel<isa::avx512>::transpose_without_gfni(bits, stride, n, out, words, bits + size);
        });
      }
#endif
    }
  }
  if (kernels_run == 0) GTEST_SKIP() << "this machine runs none of the compiled transposes";
}
#endif

TEST(HammingDistance, HeadMajorBitsCountAsTokenMajorPopcounts) {
  // The bit-sliced distances from head-major bits against a popcount per
  // token, every plane count (1 to 255 heads), partial tiles and chunks,
  // random 512-bit patterns per head (block mode's anchors), one-bit
  // patterns (token mode's) and all ones; the kernels write dist[0, n) and
  // nothing past it.
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    std::mt19937_64 rng(11);
    constexpr index_t pattern_words = simd::head_pattern_words;
    for (index_t heads : {1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 200, 255}) {
      for (index_t n : {1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 255, 256, 257, 511, 512, 513, 1030, 2000}) {
        for (int pattern_kind = 0; pattern_kind < 3; ++pattern_kind) {
          const index_t stride = simd::head_bits_stride(heads);
          const index_t size = simd::head_bits_size(heads, n);
          kvcrush::workspace ws;
          std::uint16_t* const bits = ws.head_bits(static_cast<std::size_t>(size));
          for (index_t i = 0; i < size; ++i) bits[i] = static_cast<std::uint16_t>(rng());
          std::vector<std::uint64_t> patterns(static_cast<std::size_t>(heads * pattern_words));
          for (index_t h = 0; h < heads; ++h) {
            const std::uint64_t one_bit = rng() % 2 ? ~std::uint64_t{0} : 0;
            for (index_t w = 0; w < pattern_words; ++w) {
              patterns[static_cast<std::size_t>(h * pattern_words + w)] =
                  pattern_kind == 0 ? rng() : pattern_kind == 1 ? one_bit : ~std::uint64_t{0};
            }
          }
          std::vector<std::uint32_t> expected(static_cast<std::size_t>(n) + 5, 0xdeadbeef);
          for (index_t t = 0; t < n; ++t) {
            const index_t g = t / 16, m = t % 512;
            std::uint32_t d = 0;
            for (index_t h = 0; h < heads; ++h) {
              const auto bit = (bits[static_cast<std::size_t>(((g / 32) * stride + h) * 32 + g % 32)] >> (t % 16)) & 1u;
              d += bit != ((patterns[static_cast<std::size_t>(h * pattern_words + m / 64)] >> (m % 64)) & 1u);
            }
            expected[static_cast<std::size_t>(t)] = d;
          }
          std::vector<std::uint32_t> got(expected.size(), 0xdeadbeef);
          simd::head_bits_distances_kernel<Isa>::run(bits, heads, stride, n, patterns.data(), got.data());
          ASSERT_EQ(got, expected) << Isa::name << " H=" << heads << " N=" << n << " patterns " << pattern_kind;
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(MedianSignatures, BracketedPassMatchesScalarOnLongRows) {
  // Rows of 2048 tokens and more take the one-pass route (bracketed_median.hpp)
  // where the kernels have it: a sampled bracket, bits above it, the inside
  // settled by its own order statistic. Every outcome of the bracket is
  // forced: it holds the median (smooth scores), ties fill it (few levels,
  // constant rows), the sample sees other scores than the rest of the row
  // (both ways, in every head or in every other one, so that a head whose
  // settle waits for the next head's pass meets a next head that misses and
  // the other way round), infinities, and unaligned rows with the head-order
  // sums.
  enum class shape { smooth, few_levels, constant, sample_high, sample_low, odd_heads_missed, ascending, heavy_tail };
  kvcrush::workspace ws_scalar, ws_simd;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t heads : {1, 2, 3, 8, 9, 32, 33}) {
      for (index_t tokens : {2048, 2049, 2111, 4096, 5003, 16384, 16447, 40000}) {
        if (heads > 3 && tokens > 16447) continue;
        for (shape form : {shape::smooth, shape::few_levels, shape::constant, shape::sample_high, shape::sample_low,
                           shape::odd_heads_missed, shape::ascending, shape::heavy_tail}) {
          const index_t stride = tokens + 3;
          const index_t begin = 1, end = tokens;
          const index_t n = end - begin;
          const index_t words = kvcrush::signature_words(heads);
          const auto seed = static_cast<std::uint32_t>(heads * 7919 + tokens * 31 + static_cast<int>(form));
          std::vector<float> flat =
              form == shape::few_levels ? kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride), seed, 3, 0.0)
                                        : kvcrush_test::random_floats(static_cast<std::size_t>(heads * stride), seed);
          // The sampled positions of a head's row (bracketed_median_bits):
          // runs of 16 at a stride of n / runs.
          const index_t runs = n >= 16384 ? 64 : 16, step = n / runs;
          for (index_t h = 0; h < heads; ++h) {
            float* row = flat.data() + h * stride + begin;
            for (index_t t = 0; t < n; ++t) {
              const bool sampled = t < runs * step && t % step < 16;
              switch (form) {
                case shape::constant: row[t] = 0.25f; break;
                case shape::sample_high: row[t] = sampled ? 100.0f + row[t] : row[t]; break;
                case shape::sample_low: row[t] = sampled ? -100.0f + row[t] : row[t]; break;
                case shape::odd_heads_missed: row[t] = sampled && h % 2 ? 100.0f + row[t] : row[t]; break;
                case shape::ascending: row[t] = static_cast<float>(t % 977) * 0.5f; break;
                case shape::heavy_tail: row[t] = std::exp(8.0f * row[t]) * 1e-3f; break;
                default: break;
              }
            }
            if (form == shape::smooth && h > 0) {
              row[n / 3] = h % 2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
              row[n / 2] = -std::numeric_limits<float>::infinity();
            }
          }
          const kvcrush::impl::score_rows rows{flat.data(), stride, heads, tokens + 0};
          for (bool with_sums : {false, true}) {
            std::vector<std::uint64_t> es(static_cast<std::size_t>(n * words)), gs(es.size(), ~0ull);
            std::vector<float> esum(static_cast<std::size_t>(n)), gsum(esum.size());
            std::vector<index_t> ec(static_cast<std::size_t>(heads)), gc(ec.size());
            const bool eok = kvcrush::impl::build_signatures<isa::scalar>(
                rows, begin, end, kvcrush::threshold_mode::median, es.data(), ec.data(),
                with_sums ? esum.data() : nullptr, ws_scalar);
            const bool gok = kvcrush::impl::build_signatures<Isa>(rows, begin, end, kvcrush::threshold_mode::median,
                                                                  gs.data(), gc.data(),
                                                                  with_sums ? gsum.data() : nullptr, ws_simd);
            // Opposite infinities in one token of two heads make its sum NaN.
            const bool sum_nan = with_sums && form == shape::smooth && heads >= 3;
            ASSERT_EQ(eok, !sum_nan) << "H=" << heads << " N=" << tokens << " sums=" << with_sums;
            ASSERT_EQ(gok, eok) << Isa::name << " H=" << heads << " N=" << tokens;
            if (!eok) continue;
            ASSERT_EQ(gs, es) << Isa::name << " H=" << heads << " N=" << tokens << " shape " << static_cast<int>(form)
                              << " sums=" << with_sums;
            ASSERT_EQ(gc, ec);
            if (with_sums) {
              for (index_t t = 0; t < n; ++t) ASSERT_TRUE(same_bits(gsum[t], esum[t])) << Isa::name << " t=" << t;
            }
          }
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(MedianSignatures, BracketedPassReportsNaN) {
  // NaN anywhere in a long row, inside or outside the sample, with and
  // without sums, in the first, a middle and the last head.
  kvcrush::workspace ws;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    const index_t heads = 5, tokens = 20000;
    for (index_t at : {index_t{0}, index_t{5}, index_t{2 * tokens + 777}, index_t{4 * tokens + 19999}}) {
      auto flat = kvcrush_test::random_floats(static_cast<std::size_t>(heads * tokens), 21);
      flat[static_cast<std::size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
      const kvcrush::impl::score_rows rows{flat.data(), tokens, heads, tokens};
      std::vector<std::uint64_t> sig(static_cast<std::size_t>(tokens));
      std::vector<float> sums(static_cast<std::size_t>(tokens));
      for (float* s : {static_cast<float*>(nullptr), sums.data()}) {
        EXPECT_FALSE(kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median,
                                                          sig.data(), nullptr, s, ws))
            << Isa::name << " at " << at;
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(FewHeadSignatures, EveryIsaTransposesLikeScalar) {
  // Head-major bits of 2 to 8 heads to one signature word per token: the
  // AVX2 8 x 8 bit transposes and AVX-512's GF(2) affine transposes of 512
  // tokens per step must give the scalar words for every head count and for
  // sizes around the 8-, 16- and 512-token steps. Every bit of the array is
  // random, padding heads and groups past n included: only heads < H and
  // tokens < n may count, and nothing may be written past n.
  std::mt19937_64 rng(41);
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t heads = 2; heads <= 8; ++heads) {
      for (index_t n : {1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 511, 512, 513, 1000, 1024, 1537, 4099}) {
        const index_t stride = kvcrush::simd::head_bits_stride(heads);
        std::vector<std::uint16_t> bits(static_cast<std::size_t>(kvcrush::simd::head_bits_size(heads, n)));
        for (auto& b : bits) b = static_cast<std::uint16_t>(rng());
        std::vector<std::uint64_t> expected(static_cast<std::size_t>(n) + 8, 77), got(expected.size(), 77);
        kvcrush::simd::transpose_few_heads<isa::scalar>(bits.data(), heads, stride, n, expected.data());
        kvcrush::simd::transpose_few_heads<Isa>(bits.data(), heads, stride, n, got.data());
        ASSERT_EQ(got, expected) << Isa::name << " H=" << heads << " N=" << n;
        for (index_t t = 0; t < n; ++t) ASSERT_EQ(expected[t] >> heads, 0u) << "bits of padding heads at " << t;
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(HeadSums, EveryIsaAddsInRowOrder) {
  // The importance sums over heads: blocks of 1024 tokens swept eight, four
  // or one row at a time (and AVX-512's token-major kernel at 2-8 heads)
  // must all equal the plain row-order sum bit for bit. Head counts cover
  // every mix of sweeps; strides cover packed rows, padded rows and rows a
  // multiple of 4 KiB apart; ranges start unaligned; infinities and
  // cancellations make the order visible; a NaN anywhere is reported.
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t heads : {1, 2, 3, 4, 5, 8, 9, 12, 13, 16, 17, 32, 33}) {
      for (index_t tokens : {1, 37, 1024, 1100, 3000}) {
        for (index_t pad : {index_t{0}, index_t{5}, 1024 - tokens % 1024}) {
          const index_t stride = tokens + pad;
          auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * stride),
                                                  static_cast<std::uint32_t>(heads * 7919 + tokens), 50, 0.0);
          for (std::size_t i = 0; i < flat.size(); i += 7) flat[i] *= 1e7f;  // large terms: order matters
          if (heads >= 2 && tokens > 10) flat[static_cast<std::size_t>(stride + 10)] = std::numeric_limits<float>::infinity();
          const kvcrush::impl::score_rows rows{flat.data(), stride, heads, tokens};
          const index_t begin = tokens > 3 ? 3 : 0;
          std::vector<float> expected(static_cast<std::size_t>(tokens - begin)), got(expected.size(), -1.0f);
          for (index_t t = begin; t < tokens; ++t) {
            float sum = rows.row(0)[t];
            for (index_t h = 1; h < heads; ++h) sum += rows.row(h)[t];
            expected[static_cast<std::size_t>(t - begin)] = sum;
          }
          ASSERT_TRUE(kvcrush::impl::sum_rows<Isa>(rows, begin, tokens, got.data()));
          for (std::size_t t = 0; t < got.size(); ++t) {
            ASSERT_TRUE(same_bits(got[t], expected[t])) << Isa::name << " H=" << heads << " N=" << tokens
                                                        << " stride " << stride << " t=" << t;
          }
          if (tokens > 10) {
            flat[static_cast<std::size_t>((heads - 1) * stride + tokens - 1)] = std::numeric_limits<float>::quiet_NaN();
            EXPECT_FALSE(kvcrush::impl::sum_rows<Isa>(rows, begin, tokens, got.data())) << Isa::name << " H=" << heads;
          }
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(KeptPositions, EveryIsaMatchesScalarAndWritesNothingPastTheCount) {
  // Flags to keep-set positions: sizes around the 32- and 64-flag steps,
  // densities from none to all, odd offsets; guard entries after the count
  // must stay untouched (the output row may be exactly as long as the count).
  std::mt19937 rng(29);
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t n : {0, 1, 7, 31, 32, 33, 63, 64, 65, 127, 1000, 4099}) {
      for (unsigned keep_one_in : {0u, 1u, 2u, 4u, 9u}) {
        std::vector<std::uint8_t> flags(static_cast<std::size_t>(n));
        for (auto& f : flags) f = keep_one_in == 0 ? 0 : static_cast<std::uint8_t>(rng() % keep_one_in == 0 ? 1 + rng() % 2 : 0);
        const index_t offset = 3 + n % 5;
        std::vector<index_t> expected(static_cast<std::size_t>(n) + 8, -7), got(expected.size(), -7);
        const index_t e = kvcrush::simd::kept_positions_scalar(flags.data(), n, offset, expected.data());
        index_t kept = 0;
        for (auto f : flags) kept += f != 0;
        ASSERT_EQ(e, kept);
        std::vector<index_t> exact(static_cast<std::size_t>(kept) + 8, -7);
        const index_t g = kvcrush::simd::kept_positions<Isa>(flags.data(), n, offset, exact.data());
        ASSERT_EQ(g, e) << Isa::name << " n " << n;
        for (std::size_t i = 0; i < exact.size(); ++i) {
          ASSERT_EQ(exact[i], expected[i]) << Isa::name << " n " << n << " at " << i;
        }
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(MedianSignatures, ReportNaNInAnyHeadOrSum) {
  kvcrush::workspace ws;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    const index_t heads = 40, tokens = 700;
    for (index_t at : {index_t{0}, index_t{17}, index_t{39 * tokens + 699}, index_t{5 * tokens + 512}}) {
      auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * tokens), 11, 6, 0.0);
      flat[static_cast<std::size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
      const kvcrush::impl::score_rows rows{flat.data(), tokens, heads, tokens};
      std::vector<std::uint64_t> sig(static_cast<std::size_t>(tokens));
      std::vector<float> sums(static_cast<std::size_t>(tokens));
      EXPECT_FALSE(kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median, sig.data(),
                                                        nullptr, nullptr, ws))
          << Isa::name << " at " << at;
      EXPECT_FALSE(kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median, sig.data(),
                                                        nullptr, sums.data(), ws))
          << Isa::name << " at " << at;
    }
    // +inf and -inf in one token of two heads: the sum is NaN, the scores are not.
    auto flat = kvcrush_test::tricky_floats(static_cast<std::size_t>(heads * tokens), 12, 6, 0.0);
    flat[100] = std::numeric_limits<float>::infinity();
    flat[static_cast<std::size_t>(tokens + 100)] = -std::numeric_limits<float>::infinity();
    const kvcrush::impl::score_rows rows{flat.data(), tokens, heads, tokens};
    std::vector<std::uint64_t> sig(static_cast<std::size_t>(tokens));
    std::vector<float> sums(static_cast<std::size_t>(tokens));
    EXPECT_TRUE(kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median, sig.data(),
                                                     nullptr, nullptr, ws));
    EXPECT_FALSE(kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median, sig.data(),
                                                      nullptr, sums.data(), ws));
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(HammingKernel, MatchesScalarForEveryWordCountAndTail) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    for (index_t words : {1, 2, 3, 4, 8, 9}) {
      for (long n : kvcrush_test::tail_sizes()) {
        std::mt19937_64 rng(static_cast<std::uint64_t>(words * 100000 + n));
        std::vector<std::uint64_t> sig(static_cast<std::size_t>(n * words) + 1);
        for (auto& w : sig) w = rng();
        std::vector<std::uint64_t> anchor(static_cast<std::size_t>(words));
        for (auto& w : anchor) w = rng();
        std::vector<std::uint32_t> e(static_cast<std::size_t>(n) + 1, 99), g(static_cast<std::size_t>(n) + 1, 99);
        // sig + 1: signatures start off a 64-byte boundary.
        simd::hamming_kernel<isa::scalar>::run(sig.data() + 1, n, words, anchor.data(), e.data());
        simd::hamming_kernel<Isa>::run(sig.data() + 1, n, words, anchor.data(), g.data());
        ASSERT_EQ(g, e) << Isa::name << " words=" << words << " n=" << n;
      }
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(HammingKernel, ScalarCountsDifferingBits) {
  const std::vector<std::uint64_t> sig = {0, ~0ull, 0b1011, 0x8000000000000001ull, 5, 0};
  const std::vector<std::uint64_t> anchor = {0b0011};
  std::vector<std::uint32_t> d(6);
  simd::hamming_kernel<isa::scalar>::run(sig.data(), 6, 1, anchor.data(), d.data());
  EXPECT_EQ(d, (std::vector<std::uint32_t>{2, 62, 1, 2, 2, 2}));
  // Two words per signature.
  const std::vector<std::uint64_t> anchor2 = {0, ~0ull};
  std::vector<std::uint32_t> d2(3);
  simd::hamming_kernel<isa::scalar>::run(sig.data(), 3, 2, anchor2.data(), d2.data());
  EXPECT_EQ(d2, (std::vector<std::uint32_t>{0, 3 + 62, 2 + 64}));
}

// Column bit counts against counting one bit at a time, with row counts
// around the 255-row chunks of the byte counters and word counts around the
// vector widths.
TEST(ColumnCountKernel, EveryIsaCountsEveryBitOfEveryColumn) {
  auto check = [](auto tag) {
    using Isa = decltype(tag);
    for (index_t words : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17}) {
      for (long n : {0L, 1L, 2L, 254L, 255L, 256L, 511L, 600L}) {
        std::mt19937_64 rng(static_cast<std::uint64_t>(words * 1000 + n));
        std::vector<std::uint64_t> rows(static_cast<std::size_t>(n * words) + 1);
        // Dense, sparse and all-ones words, so that byte counters reach 255.
        for (std::size_t i = 0; i < rows.size(); ++i) {
          const std::uint64_t r = rng();
          rows[i] = i % 3 == 0 ? r : i % 3 == 1 ? (r & rng() & rng()) : ~std::uint64_t{0};
        }
        std::vector<index_t> expected(static_cast<std::size_t>(64 * words), 0);
        for (long r = 0; r < n; ++r)
          for (index_t w = 0; w < words; ++w)
            for (int bit = 0; bit < 64; ++bit)
              expected[static_cast<std::size_t>(w * 64 + bit)] += (rows[static_cast<std::size_t>(r * words + w) + 1] >> bit) & 1u;
        // Counts are added to what is there.
        std::vector<index_t> got(expected.size(), 5);
        // rows + 1: rows start off a 64-byte boundary.
        simd::column_count_kernel<Isa>::run(rows.data() + 1, n, words, got.data());
        for (auto& c : got) c -= 5;
        ASSERT_EQ(got, expected) << Isa::name << " words=" << words << " n=" << n;
        // Rows further apart than their words (head-major tiles): the words
        // between rows are all ones and must not be counted.
        const index_t row_stride = words + 3;
        std::vector<std::uint64_t> spaced(static_cast<std::size_t>(n * row_stride) + 1, ~std::uint64_t{0});
        for (long r = 0; r < n; ++r)
          for (index_t w = 0; w < words; ++w)
            spaced[static_cast<std::size_t>(r * row_stride + w) + 1] = rows[static_cast<std::size_t>(r * words + w) + 1];
        std::vector<index_t> strided(expected.size(), 0);
        simd::column_count_kernel<Isa>::run_strided(spaced.data() + 1, n, words, row_stride, strided.data());
        ASSERT_EQ(strided, expected) << Isa::name << " strided, words=" << words << " n=" << n;
      }
    }
  };
  check(isa::scalar{});
  const int isas = kvcrush_test::for_each_simd_isa(check);
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build (scalar checked)";
}
