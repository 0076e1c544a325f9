// float16/bfloat16 conversions, checked against the IEEE definition written
// plainly here: every rounding boundary of both formats is visited.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kvcrush/float16.hpp"
#include "test_support.hpp"

using kvcrush::bfloat16;
using kvcrush::float16;

namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// binary16 value of a bit pattern, from the format's definition.
double half_value(std::uint16_t bits) {
  const int sign = (bits & 0x8000) ? -1 : 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0x1f) {
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : sign * std::numeric_limits<double>::infinity();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

}  // namespace

TEST(Float16, ToFloatIsExactForEveryPattern) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float16 h{static_cast<std::uint16_t>(b)};
    const double expected = half_value(h.bits);
    const float got = kvcrush::to_float(h);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << b;
    } else {
      ASSERT_EQ(static_cast<double>(got), expected) << "pattern 0x" << std::hex << b;
      ASSERT_EQ(std::signbit(got), (b & 0x8000) != 0) << b;
    }
  }
}

TEST(Float16, RoundTripIsExactAndNaNStaysNaN) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float16 h{static_cast<std::uint16_t>(b)};
    const float16 back = kvcrush::to_float16(kvcrush::to_float(h));
    if ((b & 0x7c00) == 0x7c00 && (b & 0x3ff)) {
      EXPECT_EQ(back.bits & 0x7e00, 0x7e00) << "NaN must stay a (quiet) NaN";
      EXPECT_EQ(back.bits & 0x8000, b & 0x8000) << "NaN keeps its sign";
    } else {
      ASSERT_EQ(back.bits, h.bits) << std::hex << b;
    }
  }
}

// For every pair of adjacent halves, the float exactly between them rounds to
// the even one, and one float ulp either side rounds to the nearer one.
TEST(Float16, RoundsToNearestEvenAtEveryBoundary) {
  for (std::uint32_t b = 0; b < 0x7c00; ++b) {
    for (std::uint32_t sign : {0u, 0x8000u}) {
      const auto lo = static_cast<std::uint16_t>(b | sign);
      const auto hi = static_cast<std::uint16_t>((b + 1) | sign);  // 0x7c00 is infinity
      const double a = half_value(lo);
      const double c = b + 1 == 0x7c00 ? (sign ? -65536.0 : 65536.0) : half_value(hi);
      const auto mid = static_cast<float>((a + c) / 2);
      ASSERT_EQ(static_cast<double>(mid), (a + c) / 2) << "midpoints are exact in float";
      const std::uint16_t even = (lo & 1) ? hi : lo;
      ASSERT_EQ(kvcrush::to_float16(mid).bits, even) << std::hex << lo;
      const float toward_lo = std::nextafter(mid, static_cast<float>(a));
      const float toward_hi = std::nextafter(mid, static_cast<float>(c));
      ASSERT_EQ(kvcrush::to_float16(toward_lo).bits, lo) << std::hex << lo;
      ASSERT_EQ(kvcrush::to_float16(toward_hi).bits, hi) << std::hex << lo;
    }
  }
}

TEST(Float16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(kvcrush::to_float16(inf).bits, 0x7c00);
  EXPECT_EQ(kvcrush::to_float16(-inf).bits, 0xfc00);
  EXPECT_EQ(kvcrush::to_float16(0.0f).bits, 0x0000);
  EXPECT_EQ(kvcrush::to_float16(-0.0f).bits, 0x8000);
  EXPECT_EQ(kvcrush::to_float16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(kvcrush::to_float16(1e10f).bits, 0x7c00);
  EXPECT_EQ(kvcrush::to_float16(std::numeric_limits<float>::max()).bits, 0x7c00);
  EXPECT_EQ(kvcrush::to_float16(std::numeric_limits<float>::denorm_min()).bits, 0x0000);
  EXPECT_EQ(kvcrush::to_float16(1.0f).bits, 0x3c00);
  EXPECT_EQ(kvcrush::to_float16(-2.0f).bits, 0xc000);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(kvcrush::to_float(kvcrush::to_float16(nan))));
  EXPECT_TRUE(std::isnan(kvcrush::to_float(kvcrush::to_float16(-nan))));
  EXPECT_TRUE(std::isnan(kvcrush::to_float(kvcrush::to_float16(bits_to_float(0x7f800001u)))))
      << "a signalling NaN with only a low payload bit must not become infinity";
}

#if defined(__FLT16_MAX__)
// Cross-check against the compiler's own _Float16 conversion on a sample of
// all float bit patterns.
TEST(Float16, AgreesWithCompilerFloat16) {
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 65537) {
    const float f = bits_to_float(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    std::uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    ASSERT_EQ(kvcrush::to_float16(f).bits, ref_bits) << std::hex << u;
  }
}
#endif

TEST(BFloat16, ToFloatAndRoundTripAreExact) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const bfloat16 h{static_cast<std::uint16_t>(b)};
    const float f = kvcrush::to_float(h);
    std::uint32_t fb;
    std::memcpy(&fb, &f, 4);
    ASSERT_EQ(fb, b << 16);
    const bfloat16 back = kvcrush::to_bfloat16(f);
    if ((b & 0x7f80) == 0x7f80 && (b & 0x7f)) {
      EXPECT_TRUE(std::isnan(kvcrush::to_float(back)));
      EXPECT_EQ(back.bits & 0x8000, b & 0x8000);
    } else {
      ASSERT_EQ(back.bits, b);
    }
  }
}

TEST(BFloat16, RoundsToNearestEvenAtEveryBoundary) {
  for (std::uint32_t b = 0; b < 0x7f80; ++b) {
    for (std::uint32_t sign : {0u, 0x8000u}) {
      const std::uint32_t lo = b | sign;
      const std::uint32_t hi = (b + 1) | sign;
      const double a = bits_to_float(lo << 16);
      // Above the largest finite bfloat16, the next value of the format's
      // grid (2^128) decides rounding to infinity.
      const double c = b + 1 == 0x7f80 ? (sign ? -std::ldexp(1.0, 128) : std::ldexp(1.0, 128))
                                       : static_cast<double>(bits_to_float(hi << 16));
      const double mid = (a + c) / 2;
      const auto midf = static_cast<float>(mid);
      ASSERT_EQ(static_cast<double>(midf), mid);
      const std::uint32_t even = (lo & 1) ? hi : lo;
      ASSERT_EQ(kvcrush::to_bfloat16(midf).bits, even) << std::hex << lo;
      ASSERT_EQ(kvcrush::to_bfloat16(std::nextafter(midf, static_cast<float>(a))).bits, lo);
      ASSERT_EQ(kvcrush::to_bfloat16(std::nextafter(midf, static_cast<float>(c))).bits, hi);
    }
  }
}

TEST(BFloat16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(kvcrush::to_bfloat16(inf).bits, 0x7f80);
  EXPECT_EQ(kvcrush::to_bfloat16(-inf).bits, 0xff80);
  EXPECT_EQ(kvcrush::to_bfloat16(std::numeric_limits<float>::max()).bits, 0x7f80)
      << "FLT_MAX is above the last bfloat16 midpoint and rounds to infinity";
  EXPECT_EQ(kvcrush::to_bfloat16(-0.0f).bits, 0x8000);
  EXPECT_TRUE(std::isnan(kvcrush::to_float(kvcrush::to_bfloat16(bits_to_float(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(kvcrush::to_float(kvcrush::to_bfloat16(bits_to_float(0xff800001u)))));
}

TEST(Float16, BulkConvert) {
  const auto src = kvcrush_test::random_floats(1001, 7, -70000.0f, 70000.0f);
  std::vector<float16> h(src.size());
  std::vector<bfloat16> bf(src.size());
  std::vector<float> back(src.size());
  kvcrush::convert(src.data(), h.data(), src.size());
  kvcrush::convert(src.data(), bf.data(), src.size());
  for (std::size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(h[i], kvcrush::to_float16(src[i]));
    EXPECT_EQ(bf[i], kvcrush::to_bfloat16(src[i]));
  }
  kvcrush::convert(h.data(), back.data(), h.size());
  for (std::size_t i = 0; i < src.size(); ++i) EXPECT_EQ(back[i], kvcrush::to_float(h[i]));
}
