// Group quantization: the error bound of quant_params.hpp for every element
// (keys per channel, values per token, int8/int4/int2, float16 and float32
// parameters) on random and adversarial data, float16 directed rounding,
// code round trips and the int4/int2 byte layout.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kvcrush/quant_config.hpp"
#include "kvcrush/quant_params.hpp"
#include "kvcrush/simd/quant_encode.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
namespace simd = kvcrush::simd;
using kvcrush::float16;
using kvcrush::group_params;
using kvcrush::index_t;

namespace {

// Named data sets, each G x d (token-major), that stress quantization.
struct data_case {
  const char* name;
  std::vector<float> x;
};

std::vector<data_case> adversarial_cases(index_t rows, index_t d, float large, std::uint32_t seed) {
  const auto n = static_cast<std::size_t>(rows * d);
  std::vector<data_case> cases;
  cases.push_back({"uniform", kvcrush_test::random_floats(n, seed, -2.0f, 2.0f)});
  cases.push_back({"constant", std::vector<float>(n, 0.3f)});
  cases.push_back({"zeros with negative zeros", std::vector<float>(n, -0.0f)});
  cases[2].x[n / 2] = 0.0f;
  cases.push_back({"negative constant", std::vector<float>(n, -1234.5f)});
  auto plus_minus = kvcrush_test::random_floats(n, seed + 1, 0.0f, 1.0f);
  for (auto& v : plus_minus) v = v < 0.5f ? -large : large;
  cases.push_back({"+-large", plus_minus});
  auto outlier = kvcrush_test::random_floats(n, seed + 2, -0.01f, 0.01f);
  outlier[n / 3] = large;
  cases.push_back({"single outlier", outlier});
  auto offset = kvcrush_test::random_floats(n, seed + 3, 1000.0f, 1000.5f);
  cases.push_back({"narrow range far from zero", offset});
  auto tiny = kvcrush_test::random_floats(n, seed + 4, -1e-30f, 1e-30f);
  cases.push_back({"tiny range", tiny});
  std::vector<float> denormal(n);
  for (std::size_t i = 0; i < n; ++i) denormal[i] = static_cast<float>(i % 5) * FLT_TRUE_MIN;
  cases.push_back({"subnormals", denormal});
  auto grid = kvcrush_test::tricky_floats(n, seed + 5, 7, 0.0);
  cases.push_back({"ties on a grid", grid});
  return cases;
}

template <class P>
float largest_for() {
  return std::is_same_v<P, float16> ? 60000.0f : 1e20f;
}

// Checks every element of a key group against the bound; returns the
// largest error seen relative to scale / 2 (for the report).
template <class P>
void check_key_group(const std::vector<float>& x, index_t group, index_t d, int bits, const std::vector<std::uint8_t>& codes,
                     const std::vector<P>& scale, const std::vector<P>& zero, const char* what) {
  const std::size_t channel_bytes = kvcrush::packed_bytes(group, bits);
  for (index_t c = 0; c < d; ++c) {
    const group_params g = kvcrush::load_group_params(scale[c], zero[c]);
    const float bound = kvcrush::quantization_error_bound(g, bits);
    for (index_t t = 0; t < group; ++t) {
      const int code = kvcrush::packed_code(codes.data() + c * channel_bytes, t, bits);
      ASSERT_GE(code, 0);
      ASSERT_LE(code, kvcrush::code_max(bits));
      const float v = x[static_cast<std::size_t>(t * d + c)];
      const float err = std::fabs(v - kvcrush::dequantize_value(code, g));
      ASSERT_LE(err, bound) << what << " bits=" << bits << " c=" << c << " t=" << t << " x=" << v << " scale=" << g.scale
                            << " zero=" << g.zero;
    }
  }
}

template <class P>
void check_value_rows(const std::vector<float>& x, index_t rows, index_t d, index_t vg, int bits,
                      const std::vector<std::uint8_t>& codes, const std::vector<P>& scale, const std::vector<P>& zero,
                      const char* what) {
  const std::size_t row_bytes = kvcrush::packed_bytes(d, bits);
  const index_t groups = d / vg;
  for (index_t t = 0; t < rows; ++t) {
    for (index_t c = 0; c < d; ++c) {
      const auto k = static_cast<std::size_t>(t * groups + c / vg);
      const group_params g = kvcrush::load_group_params(scale[k], zero[k]);
      const int code = kvcrush::packed_code(codes.data() + t * row_bytes, c, bits);
      const float v = x[static_cast<std::size_t>(t * d + c)];
      ASSERT_LE(std::fabs(v - kvcrush::dequantize_value(code, g)), kvcrush::quantization_error_bound(g, bits))
          << what << " bits=" << bits << " t=" << t << " c=" << c << " x=" << v;
    }
    // Padding bits of the last byte are zero.
    const std::size_t used_bits = static_cast<std::size_t>(d * bits) % 8;
    if (used_bits != 0) {
      const std::uint8_t last = codes[(t + 1) * row_bytes - 1];
      ASSERT_EQ(last >> used_bits, 0) << what << " padding bits of row " << t;
    }
  }
}

template <class Isa, class P>
void error_bounds_for_keys_and_values() {
  const index_t d = 80, group = 32;
  for (int bits : {2, 4, 8}) {
    for (const auto& c : adversarial_cases(group, d, largest_for<P>(), static_cast<std::uint32_t>(bits))) {
      const std::size_t code_bytes = kvcrush::packed_bytes(group, bits) * static_cast<std::size_t>(d);
      std::vector<std::uint8_t> codes(code_bytes);
      std::vector<P> scale(static_cast<std::size_t>(d)), zero(scale.size());
      simd::quant_encode_kernel<Isa>::keys(c.x.data(), d, group, d, bits, codes.data(), scale.data(), zero.data());
      check_key_group(c.x, group, d, bits, codes, scale, zero, c.name);
      for (index_t vg : {index_t{80}, index_t{16}}) {
        std::vector<std::uint8_t> vcodes(kvcrush::packed_bytes(d, bits) * static_cast<std::size_t>(group));
        const auto params = static_cast<std::size_t>(group * (d / vg));
        std::vector<P> vscale(params), vzero(params);
        simd::quant_encode_kernel<Isa>::values(c.x.data(), d, group, d, vg, bits, vcodes.data(), vscale.data(), vzero.data());
        check_value_rows(c.x, group, d, vg, bits, vcodes, vscale, vzero, c.name);
      }
    }
  }
}

}  // namespace

TEST(QuantGroup, Float16DirectedRounding) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = u(rng);
    if (i % 4 == 1) x *= 1e-6f;
    if (i % 4 == 2) x *= 1e-9f;  // subnormal halves
    if (std::fabs(x) > 65504.0f) continue;
    const float16 down = kvcrush::impl::float16_round_down(x), up = kvcrush::impl::float16_round_up(x);
    ASSERT_LE(kvcrush::to_float(down), x);
    ASSERT_GE(kvcrush::to_float(up), x);
    // Adjacent (or equal when x is a half).
    if (kvcrush::to_float(down) == x) {
      ASSERT_EQ(kvcrush::to_float(up), x);
    } else {
      ASSERT_EQ(kvcrush::to_float(kvcrush::impl::float16_next_up(down)), kvcrush::to_float(up)) << x;
    }
  }
  EXPECT_EQ(kvcrush::to_float(kvcrush::impl::float16_round_down(0.0f)), 0.0f);
  EXPECT_LT(kvcrush::to_float(kvcrush::impl::float16_round_down(-1e-10f)), 0.0f);
  EXPECT_GT(kvcrush::to_float(kvcrush::impl::float16_round_up(1e-10f)), 0.0f);
  EXPECT_EQ(kvcrush::to_float(kvcrush::impl::float16_round_up(65504.0f)), 65504.0f);
}

TEST(QuantGroup, ParametersCoverTheGroup) {
  // zero <= lo and zero + qmax * scale >= hi (up to the float rounding of
  // the division) for both parameter formats.
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (int bits : {2, 4, 8}) {
    for (int i = 0; i < 5000; ++i) {
      float lo = u(rng), hi = u(rng);
      if (lo > hi) std::swap(lo, hi);
      float s32, z32;
      float16 s16, z16;
      const group_params a = kvcrush::make_group_params(lo, hi, bits, s32, z32);
      const group_params b = kvcrush::make_group_params(lo, hi, bits, s16, z16);
      const auto qmax = static_cast<float>(kvcrush::code_max(bits));
      EXPECT_EQ(a.zero, lo);
      EXPECT_LE(b.zero, lo);
      EXPECT_GE(b.scale * qmax + b.zero, hi - 1e-5f * std::max(std::fabs(hi), std::fabs(lo)));
      EXPECT_EQ(kvcrush::to_float(s16), b.scale);
      EXPECT_EQ(kvcrush::to_float(z16), b.zero);
      EXPECT_EQ(s32, a.scale);
    }
  }
  // A constant group is stored exactly (float32) and decodes to itself.
  float s, z;
  const group_params g = kvcrush::make_group_params(2.5f, 2.5f, 4, s, z);
  EXPECT_EQ(g.scale, 0.0f);
  EXPECT_EQ(g.inv, 0.0f);
  EXPECT_EQ(kvcrush::dequantize_value(kvcrush::quantize_value(2.5f, g, 15.0f), g), 2.5f);
}

TEST(QuantGroup, ErrorBoundHoldsForEveryElementScalar) {
  error_bounds_for_keys_and_values<isa::scalar, float>();
  error_bounds_for_keys_and_values<isa::scalar, float16>();
}

TEST(QuantGroup, ErrorBoundHoldsForEveryElementActiveIsa) {
  error_bounds_for_keys_and_values<isa::active, float>();
  error_bounds_for_keys_and_values<isa::active, float16>();
}

TEST(QuantGroup, ErrorIsAtMostHalfAStepOnOrdinaryData) {
  // Without the slack terms' help: on data of moderate magnitude the error
  // stays within scale / 2 plus a few ulps.
  const index_t d = 64, group = 64;
  for (int bits : {2, 4, 8}) {
    const auto x = kvcrush_test::random_floats(static_cast<std::size_t>(group * d), static_cast<std::uint32_t>(bits + 40), -3.0f, 5.0f);
    std::vector<std::uint8_t> codes(kvcrush::packed_bytes(group, bits) * static_cast<std::size_t>(d));
    std::vector<float> scale(static_cast<std::size_t>(d)), zero(scale.size());
    simd::quant_encode_kernel<isa::active>::keys(x.data(), d, group, d, bits, codes.data(), scale.data(), zero.data());
    float worst = 0.0f;
    for (index_t c = 0; c < d; ++c) {
      const group_params g = kvcrush::load_group_params(scale[c], zero[c]);
      for (index_t t = 0; t < group; ++t) {
        const int code = kvcrush::packed_code(codes.data() + c * kvcrush::packed_bytes(group, bits), t, bits);
        const float err = std::fabs(x[static_cast<std::size_t>(t * d + c)] - kvcrush::dequantize_value(code, g));
        worst = std::max(worst, err / (g.scale * 0.5f));
      }
    }
    EXPECT_LE(worst, 1.0f + 1e-4f) << "bits=" << bits;
    EXPECT_GT(worst, 0.5f) << "bits=" << bits;  // the bound is not vacuous
  }
}

TEST(QuantGroup, CodesRoundTripThroughDequantization) {
  // quantize(dequantize(code)) == code for every code of groups whose
  // range is not negligible next to their offset.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-10.0f, 10.0f);
  for (int bits : {2, 4, 8}) {
    const auto qmax = static_cast<float>(kvcrush::code_max(bits));
    for (int i = 0; i < 2000; ++i) {
      float lo = u(rng), hi = u(rng);
      if (lo > hi) std::swap(lo, hi);
      if (hi - lo < 0.01f) continue;
      float s32, z32;
      float16 s16, z16;
      const group_params a = kvcrush::make_group_params(lo, hi, bits, s32, z32);
      const group_params b = kvcrush::make_group_params(lo, hi, bits, s16, z16);
      for (int code = 0; code <= kvcrush::code_max(bits); ++code) {
        ASSERT_EQ(kvcrush::quantize_value(kvcrush::dequantize_value(code, a), a, qmax), code) << bits;
        ASSERT_EQ(kvcrush::quantize_value(kvcrush::dequantize_value(code, b), b, qmax), code) << bits;
      }
    }
  }
}

TEST(QuantGroup, PackedCodeLayout) {
  // int4: element 2i in the low nibble of byte i; int2: element 4i + k in
  // bits 2k..2k+1 of byte i.
  std::vector<std::uint8_t> b(4, 0);
  for (int i = 0; i < 8; ++i) kvcrush::set_packed_code(b.data(), i, 4, i + 1);
  EXPECT_EQ(b[0], 0x21);
  EXPECT_EQ(b[1], 0x43);
  EXPECT_EQ(b[3], 0x87);
  std::fill(b.begin(), b.end(), 0);
  const int twos[8] = {1, 2, 3, 0, 3, 3, 1, 2};
  for (int i = 0; i < 8; ++i) kvcrush::set_packed_code(b.data(), i, 2, twos[i]);
  EXPECT_EQ(b[0], 0x39);  // 01 | 10 << 2 | 11 << 4 | 00 << 6
  EXPECT_EQ(b[1], 0x9f);  // 11 | 11 << 2 | 01 << 4 | 10 << 6
  // Round trip of every code at every position, neighbours untouched.
  for (int bits : {2, 4, 8}) {
    std::mt19937 rng(static_cast<std::uint32_t>(bits));
    std::vector<int> expected(37);
    std::vector<std::uint8_t> packed(kvcrush::packed_bytes(37, bits), 0xff);
    for (index_t i = 0; i < 37; ++i) {
      expected[static_cast<std::size_t>(i)] = static_cast<int>(rng() % static_cast<unsigned>(kvcrush::code_max(bits) + 1));
      kvcrush::set_packed_code(packed.data(), i, bits, expected[static_cast<std::size_t>(i)]);
    }
    for (index_t i = 0; i < 37; ++i) ASSERT_EQ(kvcrush::packed_code(packed.data(), i, bits), expected[static_cast<std::size_t>(i)]);
  }
  EXPECT_EQ(kvcrush::packed_bytes(80, 4), 40u);
  EXPECT_EQ(kvcrush::packed_bytes(81, 4), 41u);
  EXPECT_EQ(kvcrush::packed_bytes(81, 2), 21u);
}

TEST(QuantGroup, KeyCodesAreChannelMajorAndValuesRowMajor) {
  // Keys: channel c's G codes are contiguous; values: one row per token.
  const index_t d = 3, group = 16;
  std::vector<float> x(static_cast<std::size_t>(group * d));
  for (index_t t = 0; t < group; ++t)
    for (index_t c = 0; c < d; ++c) x[static_cast<std::size_t>(t * d + c)] = static_cast<float>(t) * static_cast<float>(c + 1);
  std::vector<std::uint8_t> codes(kvcrush::packed_bytes(group, 4) * d);
  std::vector<float> scale(d), zero(d);
  simd::quant_encode_kernel<isa::active>::keys(x.data(), d, group, d, 4, codes.data(), scale.data(), zero.data());
  for (index_t c = 0; c < d; ++c) {
    EXPECT_EQ(zero[static_cast<std::size_t>(c)], 0.0f);
    for (index_t t = 0; t < group; ++t) EXPECT_EQ(kvcrush::packed_code(codes.data() + c * 8, t, 4), t) << c;
  }
}

TEST(QuantGroup, ConfigValidation) {
  kvcrush::quant_config cfg;
  EXPECT_NO_THROW(kvcrush::validate(cfg, 128));
  auto bad = [&](auto change, index_t d) {
    kvcrush::quant_config c;
    change(c);
    EXPECT_THROW(kvcrush::validate(c, d), std::invalid_argument);
  };
  bad([](kvcrush::quant_config& c) { c.key_bits = 3; }, 128);
  bad([](kvcrush::quant_config& c) { c.value_bits = 1; }, 128);
  bad([](kvcrush::quant_config& c) { c.group_size = 24; }, 128);
  bad([](kvcrush::quant_config& c) { c.group_size = 512; }, 128);
  bad([](kvcrush::quant_config& c) { c.window = 48; }, 128);
  bad([](kvcrush::quant_config& c) { c.value_group = 24; }, 96);
  bad([](kvcrush::quant_config& c) { c.value_group = 7; }, 80);
  bad([](kvcrush::quant_config&) {}, 0);
  bad([](kvcrush::quant_config&) {}, 513);
  try {
    kvcrush::quant_config c;
    c.key_bits = 5;
    kvcrush::validate(c, 64);
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("kvcrush: ", 0), 0u) << e.what();
  }
  const auto l = kvcrush::quant_layout::make(cfg, 128);
  EXPECT_EQ(l.key_group_code_bytes, 128u * 16u);   // 32 tokens x 4 bits per channel
  EXPECT_EQ(l.key_group_param_bytes, 2u * 2u * 128u);
  EXPECT_EQ(l.value_row_bytes, 64u);
  EXPECT_EQ(l.value_row_param_bytes, 4u);
}

namespace {

// One group worked out by hand (KIVI asymmetric quantization: zero = min,
// scale = (max - min) / (2^bits - 1), code = round-half-even((x - zero) /
// scale)). The inputs are chosen so that every step is exact in float32, so
// the codes, the scale and the zero-point can be written down as numbers
// rather than recomputed with the library's own formula.
struct hand_group {
  int bits;
  float scale, zero;
  float x[16];
  int codes[16];
};

const hand_group hand_groups[] = {
    // int8, range 0..255: step 1 (an int8 step of 1/127 would give 255/127).
    {8, 1.0f, 0.0f,
     {0, 17, 34, 51, 68, 85, 102, 119, 136, 153, 170, 187, 204, 221, 238, 255},
     {0, 17, 34, 51, 68, 85, 102, 119, 136, 153, 170, 187, 204, 221, 238, 255}},
    // int8, range 0..510: step 2, so odd inputs land on ties (half to even).
    {8, 2.0f, 0.0f,
     {0, 510, 1, 3, 5, 2.9f, 101, 103, 509, 200, 7, 9, 11, 13, 300, 301},
     {0, 255, 0, 2, 2, 1, 50, 52, 254, 100, 4, 4, 6, 6, 150, 150}},
    // int2, range -3..3: step 2, zero -3.
    {2, 2.0f, -3.0f,
     {-3, 3, -2, 0, 2, -1, 1, -2.1f, -1.9f, 2.5f, -3, -3, 3, 3, 0, 0},
     {0, 3, 0, 2, 2, 1, 2, 0, 1, 3, 0, 0, 3, 3, 2, 2}},
    // int2, range 0..0.75: step 0.25.
    {2, 0.25f, 0.0f,
     {0, 0.75f, 0.125f, 0.375f, 0.625f, 0.7f, 0.25f, 0.5f, 0.1f, 0.2f, 0.3f, 0.4f, 0.55f, 0.6f, 0.65f, 0.74f},
     {0, 3, 0, 2, 2, 3, 1, 2, 0, 1, 1, 2, 2, 2, 3, 3}},
};

// Encodes the hand groups of one bit width as keys (one channel per group,
// 16 tokens) and as values (one row per group, value_group 16) with Isa and
// parameter type P, and compares codes, scales and zero-points with the
// hand-computed numbers.
template <class Isa, class P>
void check_hand_codes(int bits) {
  std::vector<const hand_group*> cases;
  for (const auto& c : hand_groups)
    if (c.bits == bits) cases.push_back(&c);
  const auto d = static_cast<index_t>(cases.size());
  const index_t group = 16;
  std::vector<float> keys(static_cast<std::size_t>(group * d)), values(static_cast<std::size_t>(d * group));
  for (index_t c = 0; c < d; ++c)
    for (index_t t = 0; t < group; ++t) {
      keys[static_cast<std::size_t>(t * d + c)] = cases[static_cast<std::size_t>(c)]->x[t];
      values[static_cast<std::size_t>(c * group + t)] = cases[static_cast<std::size_t>(c)]->x[t];
    }
  const std::size_t channel_bytes = kvcrush::packed_bytes(group, bits);
  std::vector<std::uint8_t> kcodes(channel_bytes * static_cast<std::size_t>(d)), vcodes(kcodes.size());
  std::vector<P> kscale(static_cast<std::size_t>(d)), kzero(kscale.size()), vscale(kscale.size()), vzero(kscale.size());
  simd::quant_encode_kernel<Isa>::keys(keys.data(), d, group, d, bits, kcodes.data(), kscale.data(), kzero.data());
  simd::quant_encode_kernel<Isa>::values(values.data(), group, d, group, group, bits, vcodes.data(), vscale.data(),
                                         vzero.data());
  for (index_t c = 0; c < d; ++c) {
    const hand_group& h = *cases[static_cast<std::size_t>(c)];
    const auto i = static_cast<std::size_t>(c);
    EXPECT_EQ(kvcrush::impl::load_param(kscale[i]), h.scale) << Isa::name << " bits " << bits << " key group " << c;
    EXPECT_EQ(kvcrush::impl::load_param(kzero[i]), h.zero) << Isa::name << " bits " << bits << " key group " << c;
    EXPECT_EQ(kvcrush::impl::load_param(vscale[i]), h.scale) << Isa::name << " bits " << bits << " value row " << c;
    EXPECT_EQ(kvcrush::impl::load_param(vzero[i]), h.zero) << Isa::name << " bits " << bits << " value row " << c;
    for (index_t t = 0; t < group; ++t) {
      EXPECT_EQ(kvcrush::packed_code(kcodes.data() + i * channel_bytes, t, bits), h.codes[t])
          << Isa::name << " bits " << bits << " key group " << c << " x=" << h.x[t];
      EXPECT_EQ(kvcrush::packed_code(vcodes.data() + i * channel_bytes, t, bits), h.codes[t])
          << Isa::name << " bits " << bits << " value row " << c << " x=" << h.x[t];
    }
  }
}

}  // namespace

TEST(QuantGroup, Int8AndInt2CodesAndScalesMatchHandComputedValues) {
  // The error-bound tests derive their bound from the stored scale, so a
  // wrong step (say (max - min) / 127 for int8) would pass them. Here the
  // scale, zero-point and every code are fixed numbers.
  for (int bits : {8, 2}) {
    check_hand_codes<isa::scalar, float>(bits);
    check_hand_codes<isa::scalar, float16>(bits);
    kvcrush_test::for_each_simd_isa([&](auto tag) {
      using Isa = decltype(tag);
      check_hand_codes<Isa, float>(bits);
      check_hand_codes<Isa, float16>(bits);
    });
  }
  // The parameter function alone, for the widths the kernels do not
  // specialise differently: scale = range / (2^bits - 1), exactly.
  float s, z;
  EXPECT_EQ(kvcrush::make_group_params(-1.0f, 254.0f, 8, s, z).scale, 1.0f);
  EXPECT_EQ(s, 1.0f);
  EXPECT_EQ(z, -1.0f);
  EXPECT_EQ(kvcrush::make_group_params(0.0f, 30.0f, 4, s, z).scale, 2.0f);
  EXPECT_EQ(kvcrush::make_group_params(1.0f, 4.0f, 2, s, z).scale, 1.0f);
  EXPECT_EQ(kvcrush::make_group_params(1.0f, 4.0f, 2, s, z).inv, 1.0f);
}
