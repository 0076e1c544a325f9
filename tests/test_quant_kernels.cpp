// Every SIMD quantization kernel against the scalar kernel, bit for bit:
// encoding (codes and stored parameters) and dequantize-on-read (scores,
// weighted sums, the 16-lane dot), over bit widths, parameter formats,
// head dims with tails (1..17, 64, 80, 96, 128, 130, 256, 512), group sizes
// 16..256, group counts that leave every tile remainder, unaligned pointers
// and padded strides.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kvcrush/float16.hpp"
#include "kvcrush/simd/quant_dot.hpp"
#include "kvcrush/simd/quant_encode.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
namespace simd = kvcrush::simd;
using kvcrush::bfloat16;
using kvcrush::float16;
using kvcrush::index_t;

namespace {

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

bool same_float(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

template <class P>
P param_from(float x) {
  if constexpr (std::is_same_v<P, float16>) {
    return kvcrush::to_float16(x);
  } else {
    return x;
  }
}

template <class W>
std::vector<W> rows_of(const std::vector<float>& x) {
  std::vector<W> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = kvcrush::from_float<W>(x[i]);
  return out;
}

// Data with the awkward cases of quantization: a constant run, a big
// outlier, exact ties at rounding boundaries, negative zeros.
std::vector<float> awkward_floats(std::size_t n, std::uint32_t seed) {
  auto x = kvcrush_test::random_floats(n, seed, -3.0f, 3.0f);
  std::mt19937 rng(seed + 1);
  for (std::size_t i = 0; i < n; ++i) {
    switch (rng() % 16) {
      case 0: x[i] = 1.0f; break;
      case 1: x[i] = -0.0f; break;
      case 2: x[i] = 0.5f; break;
      case 3: if (rng() % 8 == 0) x[i] = 900.0f; break;
      default: break;
    }
  }
  return x;
}

const std::vector<index_t> head_dims = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 64, 80, 96, 128, 130, 256, 512};

}  // namespace

TEST(QuantKernel, KeyEncodingMatchesScalar) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto param_tag) {
      using P = decltype(param_tag);
      for (int bits : {2, 4, 8}) {
        for (index_t d : head_dims) {
          for (index_t group : {16, 32, 48, 256}) {
            if (group == 256 && d > 96) continue;  // keep the sweep quick
            const index_t stride = d + 3;           // padded rows
            auto x = awkward_floats(static_cast<std::size_t>(group * stride + 1), static_cast<std::uint32_t>(d * 31 + group + bits));
            const float* src = x.data() + 1;  // unaligned rows
            const std::size_t code_bytes = kvcrush::packed_bytes(group, bits) * static_cast<std::size_t>(d);
            std::vector<std::uint8_t> ce(code_bytes + 1, 0xab), cg(code_bytes + 1, 0xab);
            std::vector<P> se(static_cast<std::size_t>(d)), sg(se), ze(se), zg(se);
            simd::quant_encode_kernel<isa::scalar>::keys(src, stride, group, d, bits, ce.data() + 1, se.data(), ze.data());
            simd::quant_encode_kernel<Isa>::keys(src, stride, group, d, bits, cg.data() + 1, sg.data(), zg.data());
            ASSERT_TRUE(same_bytes(ce, cg)) << Isa::name << " bits=" << bits << " d=" << d << " G=" << group;
            ASSERT_TRUE(same_bytes(se, sg)) << Isa::name << " scales, bits=" << bits << " d=" << d;
            ASSERT_TRUE(same_bytes(ze, zg)) << Isa::name << " zeros, bits=" << bits << " d=" << d;
          }
        }
      }
    };
    run(float{});
    run(float16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, ValueEncodingMatchesScalar) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto param_tag) {
      using P = decltype(param_tag);
      for (int bits : {2, 4, 8}) {
        for (index_t d : head_dims) {
          std::vector<index_t> value_groups = {d};
          for (index_t vg : {16, 32, 64}) if (vg < d && d % vg == 0) value_groups.push_back(vg);
          for (index_t vg : value_groups) {
            const index_t rows = 9, stride = d + 5;
            auto x = awkward_floats(static_cast<std::size_t>(rows * stride + 3), static_cast<std::uint32_t>(d * 7 + vg + bits));
            const float* src = x.data() + 3;
            const std::size_t code_bytes = kvcrush::packed_bytes(d, bits) * static_cast<std::size_t>(rows);
            std::vector<std::uint8_t> ce(code_bytes + 1, 0xcd), cg(code_bytes + 1, 0xcd);
            const auto params = static_cast<std::size_t>(rows * (d / vg));
            std::vector<P> se(params), sg(params), ze(params), zg(params);
            simd::quant_encode_kernel<isa::scalar>::values(src, stride, rows, d, vg, bits, ce.data() + 1, se.data(), ze.data());
            simd::quant_encode_kernel<Isa>::values(src, stride, rows, d, vg, bits, cg.data() + 1, sg.data(), zg.data());
            ASSERT_TRUE(same_bytes(ce, cg)) << Isa::name << " bits=" << bits << " d=" << d << " vg=" << vg;
            ASSERT_TRUE(same_bytes(se, sg)) << Isa::name << " scales, bits=" << bits << " d=" << d << " vg=" << vg;
            ASSERT_TRUE(same_bytes(ze, zg)) << Isa::name << " zeros, bits=" << bits << " d=" << d << " vg=" << vg;
          }
        }
      }
    };
    run(float{});
    run(float16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, Dot16MatchesScalarOnEveryTail) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto row_tag) {
      using W = decltype(row_tag);
      for (long n : kvcrush_test::tail_sizes()) {
        for (int offset = 0; offset < 3; ++offset) {
          auto a = kvcrush_test::random_floats(static_cast<std::size_t>(n + offset), static_cast<std::uint32_t>(n + 11));
          auto b = rows_of<W>(awkward_floats(static_cast<std::size_t>(n + offset), static_cast<std::uint32_t>(n + 12)));
          const float e = simd::quant_dot_kernel<isa::scalar>::dot16(a.data() + offset, b.data() + offset, n);
          const float g = simd::quant_dot_kernel<Isa>::dot16(a.data() + offset, b.data() + offset, n);
          ASSERT_TRUE(same_float(e, g)) << Isa::name << " n=" << n << " " << e << " vs " << g;
        }
      }
      // Signed zeros: every product -0, so the sum's sign depends on what
      // the lanes past the end contribute.
      std::vector<float> a(21, -0.0f), z(21, 1.0f);
      auto b = rows_of<W>(z);
      for (index_t n = 0; n <= 21; ++n) {
        const float e = simd::quant_dot_kernel<isa::scalar>::dot16(a.data(), b.data(), n);
        const float g = simd::quant_dot_kernel<Isa>::dot16(a.data(), b.data(), n);
        ASSERT_TRUE(same_float(e, g)) << Isa::name << " signed zero, n=" << n;
      }
    };
    run(float{});
    run(float16{});
    run(bfloat16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, FloatHalvesConvertLikeTheScalarPath) {
  // Every float16 bit pattern through the SIMD row loads (dot16 with a one-hot
  // vector reads one element exactly).
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    std::vector<float16> halves(16);
    std::vector<float> one_hot(16, 0.0f);
    one_hot[5] = 1.0f;
    for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
      if ((bits & 0x7c00u) == 0x7c00u) continue;  // inf/NaN: rows are finite
      halves[5].bits = static_cast<std::uint16_t>(bits);
      const float e = simd::quant_dot_kernel<isa::scalar>::dot16(one_hot.data(), halves.data(), 16);
      const float g = simd::quant_dot_kernel<Isa>::dot16(one_hot.data(), halves.data(), 16);
      ASSERT_TRUE(same_float(e, g)) << Isa::name << " half bits " << bits;
    }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, KeyScoresMatchScalar) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto param_tag) {
      using P = decltype(param_tag);
      std::mt19937 rng(7);
      for (int bits : {2, 4, 8}) {
        for (index_t d : head_dims) {
          for (index_t group : {16, 32, 64, 128}) {
            for (index_t groups : {1, 2, 3, 5, 9}) {
              if (d * group * groups > 40000) continue;
              kvcrush::key_group_span<P> k;
              k.groups = groups;
              k.group = group;
              k.head_dim = d;
              k.bits = bits;
              std::vector<std::uint8_t> codes(k.group_code_bytes() * static_cast<std::size_t>(groups) + 1);
              for (auto& c : codes) c = static_cast<std::uint8_t>(rng());
              const auto sc = kvcrush_test::random_floats(static_cast<std::size_t>(groups * d), rng(), 0.0f, 0.3f);
              const auto zs = kvcrush_test::random_floats(static_cast<std::size_t>(groups * d), rng(), -2.0f, 1.0f);
              std::vector<P> scale(sc.size()), zero(zs.size());
              for (std::size_t i = 0; i < sc.size(); ++i) {
                scale[i] = param_from<P>(sc[i]);
                zero[i] = param_from<P>(zs[i]);
              }
              k.codes = codes.data() + 1;  // unaligned
              k.scale = scale.data();
              k.zero = zero.data();
              auto q = kvcrush_test::random_floats(static_cast<std::size_t>(d + 1), rng());
              std::vector<float> e(static_cast<std::size_t>(k.tokens())), g(e.size());
              simd::quant_dot_kernel<isa::scalar>::key_scores(k, q.data() + 1, e.data());
              simd::quant_dot_kernel<Isa>::key_scores(k, q.data() + 1, g.data());
              ASSERT_TRUE(same_bytes(e, g)) << Isa::name << " bits=" << bits << " d=" << d << " G=" << group
                                            << " groups=" << groups;
            }
          }
        }
      }
    };
    run(float{});
    run(float16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, ValueSumsMatchScalar) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto param_tag) {
      using P = decltype(param_tag);
      std::mt19937 rng(8);
      for (int bits : {2, 4, 8}) {
        for (index_t d : head_dims) {
          std::vector<index_t> value_groups = {d};
          for (index_t vg : {16, 32}) if (vg < d && d % vg == 0) value_groups.push_back(vg);
          for (index_t vg : value_groups) {
            for (index_t rows : {0, 1, 2, 17, 33}) {
              kvcrush::value_row_span<P> v;
              v.rows = rows;
              v.head_dim = d;
              v.value_group = vg;
              v.bits = bits;
              std::vector<std::uint8_t> codes(v.row_bytes() * static_cast<std::size_t>(rows) + 1);
              for (auto& c : codes) c = static_cast<std::uint8_t>(rng());
              const auto n = static_cast<std::size_t>(rows * (d / vg));
              const auto sc = kvcrush_test::random_floats(n, rng(), 0.0f, 0.3f);
              const auto zs = kvcrush_test::random_floats(n, rng(), -2.0f, 1.0f);
              std::vector<P> scale(n), zero(n);
              for (std::size_t i = 0; i < n; ++i) {
                scale[i] = param_from<P>(sc[i]);
                zero[i] = param_from<P>(zs[i]);
              }
              v.codes = codes.data() + 1;
              v.scale = scale.data();
              v.zero = zero.data();
              auto p = kvcrush_test::random_floats(static_cast<std::size_t>(rows + 1), rng(), 0.0f, 1.0f);
              if (rows > 3) p[2] = 0.0f;
              std::vector<float> e(static_cast<std::size_t>(d) + 1, 9.0f), g(e);
              simd::quant_dot_kernel<isa::scalar>::value_sum(v, p.data() + 1, e.data());
              simd::quant_dot_kernel<Isa>::value_sum(v, p.data() + 1, g.data());
              ASSERT_TRUE(same_bytes(e, g)) << Isa::name << " bits=" << bits << " d=" << d << " vg=" << vg
                                            << " rows=" << rows;
            }
          }
        }
      }
    };
    run(float{});
    run(float16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}

TEST(QuantKernel, RowScoresAndAccumulationMatchScalar) {
  const int isas = kvcrush_test::for_each_simd_isa([](auto tag) {
    using Isa = decltype(tag);
    auto run = [&](auto row_tag) {
      using W = decltype(row_tag);
      std::mt19937 rng(9);
      for (index_t d : head_dims) {
        for (index_t rows : {0, 1, 5, 33}) {
          const index_t stride = d + 2;
          auto data = rows_of<W>(awkward_floats(static_cast<std::size_t>(rows * stride + 1), rng()));
          const kvcrush::row_span<W> r{data.data() + 1, stride, rows, d};
          auto q = kvcrush_test::random_floats(static_cast<std::size_t>(d), rng());
          std::vector<float> e(static_cast<std::size_t>(rows)), g(e);
          simd::quant_dot_kernel<isa::scalar>::row_scores(r, q.data(), e.data());
          simd::quant_dot_kernel<Isa>::row_scores(r, q.data(), g.data());
          ASSERT_TRUE(same_bytes(e, g)) << Isa::name << " scores d=" << d << " rows=" << rows;
          auto p = kvcrush_test::random_floats(static_cast<std::size_t>(rows), rng(), 0.0f, 1.0f);
          auto start = kvcrush_test::random_floats(static_cast<std::size_t>(d) + 1, rng());
          std::vector<float> ea(start), ga(start);
          simd::quant_dot_kernel<isa::scalar>::row_accumulate(r, p.data(), ea.data() + 1);
          simd::quant_dot_kernel<Isa>::row_accumulate(r, p.data(), ga.data() + 1);
          ASSERT_TRUE(same_bytes(ea, ga)) << Isa::name << " accumulate d=" << d << " rows=" << rows;
        }
      }
    };
    run(float{});
    run(float16{});
    run(bfloat16{});
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << isa::name() << " build";
}
