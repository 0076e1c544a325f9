// The score sources that need no attention matrix (SPEC 11): KeyDiff,
// Expected Attention and R-KV redundancy. Each is compared with a plain
// double-precision reference written here from the definitions (not from
// the library's code), over odd sizes, head counts and GQA groups, with
// float16 and bfloat16 inputs, zero keys, NaN and infinity rejected without
// touching the output, and tiny cases whose numbers are worked out by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kvcrush/scores/expected_attention.hpp"
#include "kvcrush/scores/keydiff.hpp"
#include "kvcrush/scores/redundancy.hpp"
#include "test_support.hpp"

using kvcrush::index_t;

namespace {

constexpr float kSentinel = 7.25f;

// Keys/values stored as [head][token][dim] (head_token_dim) or
// [token][head][dim]; logical element (h, t, j) either way.
template <class T>
struct kv_buffer {
  index_t heads = 0, tokens = 0, dim = 0;
  bool token_major = false;
  std::vector<T> data;

  kv_buffer(index_t h, index_t n, index_t d, bool token_major_layout = false)
      : heads(h), tokens(n), dim(d), token_major(token_major_layout),
        data(static_cast<std::size_t>(h * n * d)) {}

  T& at(index_t h, index_t t, index_t j) {
    return token_major ? data[static_cast<std::size_t>((t * heads + h) * dim + j)]
                       : data[static_cast<std::size_t>((h * tokens + t) * dim + j)];
  }
  double get(index_t h, index_t t, index_t j) const {
    const T v = token_major ? data[static_cast<std::size_t>((t * heads + h) * dim + j)]
                            : data[static_cast<std::size_t>((h * tokens + t) * dim + j)];
    return static_cast<double>(kvcrush::to_float(v));
  }
  kvcrush::kv_view<const T> view() {
    if (token_major) return kvcrush::make_token_head_dim(data.data(), tokens, heads, dim);
    return kvcrush::make_head_token_dim(data.data(), heads, tokens, dim);
  }
};

template <class T>
kv_buffer<T> random_kv(index_t h, index_t n, index_t d, std::uint32_t seed, bool token_major = false,
                       float lo = -1.0f, float hi = 1.0f) {
  kv_buffer<T> kv(h, n, d, token_major);
  const auto values = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), seed, lo, hi);
  std::size_t i = 0;
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t)
      for (index_t j = 0; j < d; ++j) kv.at(k, t, j) = kvcrush::from_float<T>(values[i++]);
  return kv;
}

// The same logical values in another storage type.
template <class To, class From>
kv_buffer<To> convert_kv(const kv_buffer<From>& in) {
  kv_buffer<To> out(in.heads, in.tokens, in.dim, in.token_major);
  for (std::size_t i = 0; i < in.data.size(); ++i) out.data[i] = kvcrush::from_float<To>(kvcrush::to_float(in.data[i]));
  return out;
}

void expect_close(double got, double want, double rel, double abs_floor, const char* what, index_t h, index_t t) {
  const double tol = std::max(rel * std::fabs(want), abs_floor);
  EXPECT_LE(std::fabs(got - want), tol) << what << " head " << h << " token " << t << ": got " << got << ", want "
                                        << want;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::uint64_t fnv1a(const std::vector<float>& v) {
  std::uint64_t hash = 1469598103934665603ull;
  for (float f : v) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, sizeof bits);
    for (int b = 0; b < 4; ++b) {
      hash ^= (bits >> (8 * b)) & 0xffu;
      hash *= 1099511628211ull;
    }
  }
  return hash;
}

// ---------------------------------------------------------------- KeyDiff

// kvpress: anchor = mean(normalize(keys)); score = -cos(key, anchor).
std::vector<double> keydiff_reference(const kv_buffer<float>& keys) {
  const index_t h = keys.heads, n = keys.tokens, d = keys.dim;
  std::vector<double> out(static_cast<std::size_t>(h * n), 0.0);
  for (index_t k = 0; k < h; ++k) {
    std::vector<double> anchor(static_cast<std::size_t>(d), 0.0);
    for (index_t t = 0; t < n; ++t) {
      double sq = 0;
      for (index_t j = 0; j < d; ++j) sq += keys.get(k, t, j) * keys.get(k, t, j);
      if (sq > 0)
        for (index_t j = 0; j < d; ++j) anchor[j] += keys.get(k, t, j) / std::sqrt(sq);
    }
    for (double& a : anchor) a /= static_cast<double>(n);
    double anchor_sq = 0;
    for (double a : anchor) anchor_sq += a * a;
    for (index_t t = 0; t < n; ++t) {
      double sq = 0, dot = 0;
      for (index_t j = 0; j < d; ++j) {
        sq += keys.get(k, t, j) * keys.get(k, t, j);
        dot += keys.get(k, t, j) * anchor[j];
      }
      out[k * n + t] = (sq > 0 && anchor_sq > 0) ? -dot / std::sqrt(sq * anchor_sq) : 0.0;
    }
  }
  return out;
}

template <class T>
std::vector<float> run_keydiff(kv_buffer<T>& keys) {
  std::vector<float> out(static_cast<std::size_t>(keys.heads * keys.tokens), kSentinel);
  kvcrush::keydiff_scores(keys.view(), kvcrush::make_matrix_view(out.data(), keys.heads, keys.tokens));
  return out;
}

TEST(KeyDiff, MatchesDoubleReferenceOverSizesHeadsAndLayouts) {
  std::uint32_t seed = 100;
  for (index_t n : {1, 2, 7, 33, 100})
    for (index_t h : {1, 2, 4, 8})
      for (index_t d : {1, 3, 8, 19, 64})
        for (bool token_major : {false, true}) {
          SCOPED_TRACE(testing::Message() << "n " << n << " h " << h << " d " << d << " token_major " << token_major);
          auto keys = random_kv<float>(h, n, d, ++seed, token_major);
          const auto got = run_keydiff(keys);
          const auto want = keydiff_reference(keys);
          for (index_t k = 0; k < h; ++k)
            for (index_t t = 0; t < n; ++t) expect_close(got[k * n + t], want[k * n + t], 1e-5, 1e-6, "keydiff", k, t);
        }
}

TEST(KeyDiff, HalfPrecisionKeysGiveTheBitsOfTheirFloatValues) {
  for (index_t n : {1, 7, 33, 100}) {
    auto keys = random_kv<float>(4, n, 24, 7 + static_cast<std::uint32_t>(n), true);
    auto half = convert_kv<kvcrush::float16>(keys);
    auto brain = convert_kv<kvcrush::bfloat16>(keys);
    auto half_as_float = convert_kv<float>(half);
    auto brain_as_float = convert_kv<float>(brain);
    EXPECT_TRUE(same_bits(run_keydiff(half), run_keydiff(half_as_float)));
    EXPECT_TRUE(same_bits(run_keydiff(brain), run_keydiff(brain_as_float)));
    const auto got = run_keydiff(half);
    const auto want = keydiff_reference(half_as_float);
    for (index_t t = 0; t < 4 * n; ++t) expect_close(got[t], want[t], 1e-5, 1e-6, "keydiff f16", t / n, t % n);
  }
}

TEST(KeyDiff, HandComputedCases) {
  // Two keys: (3, 4) and (0, 2). Unit keys (0.6, 0.8) and (0, 1); anchor
  // (0.3, 0.9), |anchor| = sqrt(0.9); both cosines are 0.9 / sqrt(0.9).
  {
    kv_buffer<float> keys(1, 2, 2);
    keys.at(0, 0, 0) = 3, keys.at(0, 0, 1) = 4, keys.at(0, 1, 0) = 0, keys.at(0, 1, 1) = 2;
    const auto out = run_keydiff(keys);
    EXPECT_FLOAT_EQ(out[0], static_cast<float>(-std::sqrt(0.9)));
    EXPECT_FLOAT_EQ(out[1], static_cast<float>(-std::sqrt(0.9)));
  }
  // (1, 0), (1, 0), (0, 1): anchor (2/3, 1/3), |anchor| = sqrt(5)/3. The
  // outlier scores -1/sqrt(5), the others -2/sqrt(5): the outlier ranks first.
  {
    kv_buffer<float> keys(1, 3, 2);
    keys.at(0, 0, 0) = 1, keys.at(0, 1, 0) = 1, keys.at(0, 2, 1) = 1;
    const auto out = run_keydiff(keys);
    EXPECT_FLOAT_EQ(out[0], static_cast<float>(-2.0 / std::sqrt(5.0)));
    EXPECT_FLOAT_EQ(out[1], static_cast<float>(-2.0 / std::sqrt(5.0)));
    EXPECT_FLOAT_EQ(out[2], static_cast<float>(-1.0 / std::sqrt(5.0)));
  }
  // One token: its own anchor, cosine 1.
  {
    kv_buffer<float> keys(1, 1, 3);
    keys.at(0, 0, 0) = -2, keys.at(0, 0, 1) = 0.5f, keys.at(0, 0, 2) = 8;
    EXPECT_EQ(run_keydiff(keys)[0], -1.0f);
  }
}

TEST(KeyDiff, AnOutlierKeyRanksHighestInEveryHead) {
  std::mt19937 rng(3);
  for (index_t n : {2, 7, 33, 100})
    for (index_t h : {1, 2, 8}) {
      const index_t d = 16;
      kv_buffer<float> keys(h, n, d);
      std::normal_distribution<float> noise(0.0f, 0.1f);
      std::vector<index_t> outlier(static_cast<std::size_t>(h));
      for (index_t k = 0; k < h; ++k) {
        outlier[k] = static_cast<index_t>(rng() % static_cast<std::uint32_t>(n));
        for (index_t t = 0; t < n; ++t)
          for (index_t j = 0; j < d; ++j) {
            const float base = t == outlier[k] ? (j == 1 ? -3.0f : 0.0f) : (j == 0 ? 2.0f : 0.0f);
            keys.at(k, t, j) = base + noise(rng);
          }
      }
      const auto out = run_keydiff(keys);
      for (index_t k = 0; k < h; ++k) {
        const auto row = out.begin() + k * n;
        if (n == 2) {  // the anchor bisects two unit keys: always a tie
          EXPECT_NEAR(row[0], row[1], 1e-6);
          continue;
        }
        EXPECT_EQ(std::max_element(row, row + n) - row, outlier[k]) << "n " << n << " head " << k;
      }
    }
}

TEST(KeyDiff, ZeroKeysAndAZeroAnchorScorePlusZero) {
  kv_buffer<float> keys(3, 5, 4);
  auto random = random_kv<float>(1, 5, 4, 11);
  for (index_t t = 0; t < 5; ++t)
    for (index_t j = 0; j < 4; ++j) keys.at(0, t, j) = t == 2 ? 0.0f : static_cast<float>(random.get(0, t, j));
  // Head 1: all zero. Head 2: opposite pairs, so the anchor is exactly 0.
  for (index_t t = 0; t < 4; ++t) keys.at(2, t, 0) = t % 2 == 0 ? 1.5f : -1.5f;
  const auto out = run_keydiff(keys);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_FALSE(std::signbit(out[2]));
  EXPECT_NE(out[1], 0.0f);
  for (index_t t = 0; t < 5; ++t) {
    EXPECT_EQ(out[5 + t], 0.0f);
    EXPECT_FALSE(std::signbit(out[5 + t]));
    EXPECT_EQ(out[10 + t], 0.0f);
    EXPECT_FALSE(std::signbit(out[10 + t]));
  }
}

TEST(KeyDiff, ScalingAKeyByAPowerOfTwoChangesNoBit) {
  auto keys = random_kv<float>(2, 33, 16, 21);
  const auto before = run_keydiff(keys);
  for (index_t j = 0; j < 16; ++j) keys.at(1, 5, j) *= 4.0f;
  EXPECT_TRUE(same_bits(before, run_keydiff(keys)));
}

TEST(KeyDiff, RejectsNaNAndInfinityBeforeWritingAnything) {
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (float v : bad) {
    auto keys = random_kv<float>(4, 7, 8, 5);
    keys.at(3, 6, 7) = v;  // the last element read
    std::vector<float> out(28, kSentinel);
    EXPECT_THROW(kvcrush::keydiff_scores(keys.view(), kvcrush::make_matrix_view(out.data(), 4, 7)),
                 std::invalid_argument);
    for (float o : out) EXPECT_EQ(o, kSentinel);
    auto half = convert_kv<kvcrush::float16>(keys);
    EXPECT_THROW(kvcrush::keydiff_scores(half.view(), kvcrush::make_matrix_view(out.data(), 4, 7)),
                 std::invalid_argument);
    for (float o : out) EXPECT_EQ(o, kSentinel);
  }
  auto keys = random_kv<float>(2, 3, 4, 5);
  std::vector<float> out(6);
  EXPECT_THROW(kvcrush::keydiff_scores(keys.view(), kvcrush::make_matrix_view(out.data(), 3, 2)),
               std::invalid_argument);
  // No tokens: nothing to do.
  kv_buffer<float> empty(2, 0, 4);
  EXPECT_NO_THROW(kvcrush::keydiff_scores(empty.view(), kvcrush::make_matrix_view(out.data(), 2, 0)));
}

TEST(KeyDiff, SameBitsInEveryIsaBuild) {
  // The scalar, AVX2 and AVX-512 builds of this file must all print this
  // hash: the arithmetic order is fixed (SPEC 11.1) and sqrt and division
  // are exactly rounded.
  auto keys = random_kv<float>(4, 100, 64, 2024);
  EXPECT_EQ(fnv1a(run_keydiff(keys)), 15378200050165400994ull);
}

// ------------------------------------------------------- Expected Attention

struct ea_case {
  index_t h = 1, group = 1, n = 1, window = 1, d = 2;
  kvcrush::expected_attention_options opt;
};

// kvpress's construction, literally: the mean rotation as a d x d matrix
// averaged over the future positions, mu' = R mu, Sigma' = R Sigma R^T by
// plain matrix products, logits, softmax, group mean, value norms.
std::vector<double> ea_reference(const ea_case& c, const std::vector<float>& queries, const kv_buffer<float>& keys,
                                 const kv_buffer<float>* values) {
  const index_t d = c.d, n = c.n, w = c.window, hq = c.h * c.group;
  const auto& opt = c.opt;
  std::vector<double> rot(static_cast<std::size_t>(d * d), 0.0);
  if (opt.future_positions > 0) {
    const index_t p0 = opt.first_future_position < 0 ? n : opt.first_future_position;
    for (index_t p = p0; p < p0 + opt.future_positions; ++p) {
      for (index_t i = 0; i < d / 2; ++i) {
        const double angle = static_cast<double>(p) * std::pow(opt.rope_theta, -2.0 * i / static_cast<double>(d));
        const index_t a = opt.rope_interleaved ? 2 * i : i;
        const index_t b = opt.rope_interleaved ? 2 * i + 1 : i + d / 2;
        const double f = 1.0 / static_cast<double>(opt.future_positions);
        rot[a * d + a] += std::cos(angle) * f;
        rot[a * d + b] -= std::sin(angle) * f;
        rot[b * d + a] += std::sin(angle) * f;
        rot[b * d + b] += std::cos(angle) * f;
      }
    }
  } else {
    for (index_t i = 0; i < d; ++i) rot[i * d + i] = 1.0;
  }
  const double s = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> probs(static_cast<std::size_t>(hq * n), 0.0);
  for (index_t q = 0; q < hq; ++q) {
    const index_t k = q / c.group;
    std::vector<double> mu(d, 0.0), sigma(static_cast<std::size_t>(d * d), 0.0);
    auto query = [&](index_t r, index_t j) { return static_cast<double>(queries[(q * w + r) * d + j]); };
    for (index_t j = 0; j < d; ++j) {
      for (index_t r = 0; r < w; ++r) mu[j] += query(r, j);
      mu[j] /= static_cast<double>(w);
    }
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j) {
        for (index_t r = 0; r < w; ++r) sigma[i * d + j] += (query(r, i) - mu[i]) * (query(r, j) - mu[j]);
        sigma[i * d + j] /= static_cast<double>(w);
      }
    std::vector<double> mu2(d, 0.0), tmp(static_cast<std::size_t>(d * d), 0.0), sigma2(tmp.size(), 0.0);
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j) mu2[i] += rot[i * d + j] * mu[j];
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j)
        for (index_t l = 0; l < d; ++l) tmp[i * d + j] += sigma[i * d + l] * rot[j * d + l];
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j)
        for (index_t l = 0; l < d; ++l) sigma2[i * d + j] += rot[i * d + l] * tmp[l * d + j];
    std::vector<double> z(static_cast<std::size_t>(n), 0.0);
    double peak = -std::numeric_limits<double>::infinity();
    for (index_t t = opt.sink; t < n; ++t) {
      double lin = 0, quad = 0;
      for (index_t i = 0; i < d; ++i) {
        lin += mu2[i] * keys.get(k, t, i);
        for (index_t j = 0; j < d; ++j) quad += keys.get(k, t, i) * sigma2[i * d + j] * keys.get(k, t, j);
      }
      z[t] = s * lin + (opt.use_covariance ? 0.5 * s * s * quad : 0.0);
      peak = std::max(peak, z[t]);
    }
    double total = 0;
    for (index_t t = opt.sink; t < n; ++t) total += std::exp(z[t] - peak);
    for (index_t t = opt.sink; t < n; ++t) probs[q * n + t] = std::exp(z[t] - peak) / total;
  }
  std::vector<double> out(static_cast<std::size_t>(c.h * n), 0.0);
  for (index_t k = 0; k < c.h; ++k)
    for (index_t t = 0; t < n; ++t) {
      if (t < opt.sink) {
        out[k * n + t] = std::numeric_limits<double>::infinity();
        continue;
      }
      double p = 0;
      for (index_t g = 0; g < c.group; ++g) p += probs[(k * c.group + g) * n + t];
      p /= static_cast<double>(c.group);
      if (opt.use_vnorm) {
        double sq = 0;
        for (index_t j = 0; j < values->dim; ++j) sq += values->get(k, t, j) * values->get(k, t, j);
        p = (p + opt.epsilon) * std::sqrt(sq);
      }
      out[k * n + t] = p;
    }
  return out;
}

template <class T>
struct non_deduced {
  using type = T;
};

template <class KeyT, class ValueT = float>
std::vector<float> run_ea(const ea_case& c, std::vector<float>& queries, kv_buffer<KeyT>& keys,
                          typename non_deduced<kv_buffer<ValueT>>::type* values) {
  std::vector<float> out(static_cast<std::size_t>(c.h * c.n), kSentinel);
  const kvcrush::strided_view<const float, 3> q(queries.data(), {c.h * c.group, c.window, c.d});
  if (values != nullptr) {
    kvcrush::expected_attention_scores(q, keys.view(), c.opt, kvcrush::make_matrix_view(out.data(), c.h, c.n),
                                       values->view());
  } else {
    kvcrush::expected_attention_scores(q, keys.view(), c.opt, kvcrush::make_matrix_view(out.data(), c.h, c.n));
  }
  return out;
}

TEST(ExpectedAttention, MatchesDoubleReferenceOverSizesHeadsGroupsAndOptions) {
  std::uint32_t seed = 500;
  const index_t head_configs[][2] = {{1, 1}, {2, 1}, {4, 1}, {8, 1}, {1, 4}, {2, 4}};
  int cases = 0;
  for (index_t n : {1, 2, 7, 33, 100})
    for (const auto& hg : head_configs)
      for (int variant = 0; variant < 6; ++variant) {
        ea_case c;
        c.h = hg[0];
        c.group = hg[1];
        c.n = n;
        c.window = variant % 3 == 0 ? 1 : (variant % 3 == 1 ? 3 : 8);
        c.d = variant < 3 ? 8 : 6;
        c.opt.use_covariance = variant != 1;
        c.opt.future_positions = variant == 2 ? 0 : (variant == 4 ? 1 : 37);
        c.opt.first_future_position = variant == 5 ? 3 : -1;
        c.opt.rope_interleaved = variant % 2 == 1;
        c.opt.rope_theta = variant == 3 ? 500.0 : 10000.0;
        c.opt.use_vnorm = variant >= 3;
        c.opt.epsilon = variant == 4 ? 1e-3f : 0.0f;
        c.opt.sink = variant == 5 ? std::min<index_t>(2, n - 1) : 0;
        auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(c.h * c.group * c.window * c.d), ++seed,
                                                   -1.5f, 1.5f);
        auto keys = random_kv<float>(c.h, n, c.d, ++seed, variant % 2 == 0);
        auto values = random_kv<float>(c.h, n, 5, ++seed);
        const auto got = run_ea(c, queries, keys, c.opt.use_vnorm ? &values : nullptr);
        const auto want = ea_reference(c, queries, keys, &values);
        for (index_t k = 0; k < c.h; ++k)
          for (index_t t = 0; t < n; ++t) {
            if (std::isinf(want[k * n + t])) {
              EXPECT_EQ(got[k * n + t], std::numeric_limits<float>::infinity());
            } else {
              expect_close(got[k * n + t], want[k * n + t], 1e-5, 1e-30, "expected attention", k, t);
            }
          }
        ++cases;
      }
  EXPECT_EQ(cases, 5 * 6 * 6);
}

TEST(ExpectedAttention, EveryIsaGivesTheScalarBits) {
  // The SIMD builds compute the logits of 8 (AVX-512) or 4 (AVX2) keys at a
  // time, one key per lane (simd/quadratic_logits.hpp); the scalar build's
  // key-by-key dots are the reference. Token counts straddle the blocks
  // and start after sinks at odd offsets, head sizes cover partial 8-lane
  // dots, and large keys and queries make any change of order visible.
  std::uint32_t seed = 7100;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t n : {1, 3, 4, 5, 8, 9, 17, 40})
      for (index_t d : {2, 6, 8, 10, 16, 18})
        for (int variant = 0; variant < 4; ++variant) {
          ea_case c;
          c.h = 2;
          c.group = variant % 2 == 0 ? 1 : 3;
          c.n = n;
          c.d = d;
          c.window = variant < 2 ? 3 : 1;
          c.opt.use_covariance = variant != 3;
          c.opt.future_positions = variant == 2 ? 0 : 29;
          c.opt.rope_interleaved = variant == 1;
          c.opt.use_vnorm = variant % 2 == 0;
          c.opt.sink = n > 3 ? 1 + n % 3 : 0;
          ++seed;
          auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(c.h * c.group * c.window * d), seed,
                                                     -40.0f, 40.0f);
          auto keys = random_kv<float>(c.h, n, d, seed + 1, variant % 2 == 0, -9.0f, 9.0f);
          auto values = random_kv<float>(c.h, n, 5, seed + 2);
          const kvcrush::strided_view<const float, 3> q(queries.data(), {c.h * c.group, c.window, d});
          std::vector<float> want(static_cast<std::size_t>(c.h * n), kSentinel), got(want);
          kvcrush::expected_attention_scores<kvcrush::isa::scalar>(
              q, keys.view(), c.opt, kvcrush::make_matrix_view(want.data(), c.h, n), values.view());
          kvcrush::expected_attention_scores<Isa>(q, keys.view(), c.opt, kvcrush::make_matrix_view(got.data(), c.h, n),
                                                  values.view());
          ASSERT_TRUE(same_bits(got, want)) << Isa::name << " n=" << n << " d=" << d << " variant " << variant;
        }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << kvcrush::isa::name() << " build";
}

TEST(ExpectedAttention, EveryIsaBlockKernelGivesTheScalarLogitBits) {
  // The logits themselves, in double, before the softmax and the rounding to
  // float can hide a last-bit difference: the block kernel must equal
  // s * dot8(mu, k) and fma(s^2 / 2, dot8(k, Sigma k), that) key by key.
  std::mt19937_64 rng(77);
  std::uniform_real_distribution<double> value(-30.0, 30.0);
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using kernel = kvcrush::simd::quadratic_logits_kernel<decltype(tag)>;
    constexpr index_t lanes = kernel::lanes;
    for (index_t d : {1, 2, 5, 7, 8, 9, 15, 16, 17, 24, 33})
      for (const bool cov : {false, true}) {
        std::vector<double> keys(static_cast<std::size_t>(lanes * d)), kt(keys.size()), mean(static_cast<std::size_t>(d)),
            sigma(static_cast<std::size_t>(d * d)), work(keys.size()), z(static_cast<std::size_t>(lanes));
        for (auto& x : keys) x = value(rng);
        for (auto& x : mean) x = value(rng);
        for (auto& x : sigma) x = value(rng) * 1e-3;
        for (index_t l = 0; l < lanes; ++l)
          for (index_t j = 0; j < d; ++j) kt[j * lanes + l] = keys[l * d + j];
        const double s = 0.353, half_s2 = 0.5 * s * s;
        kernel::block(kt.data(), d, mean.data(), cov ? sigma.data() : nullptr, s, half_s2, work.data(), z.data());
        for (index_t l = 0; l < lanes; ++l) {
          const double* key = keys.data() + l * d;
          double want = s * kvcrush::impl::dot8<double>(mean.data(), key, d);
          if (cov) {
            std::vector<double> sigma_key(static_cast<std::size_t>(d));
            for (index_t i = 0; i < d; ++i) sigma_key[i] = kvcrush::impl::dot8<double>(key, sigma.data() + i * d, d);
            want = std::fma(half_s2, kvcrush::impl::dot8<double>(key, sigma_key.data(), d), want);
          }
          ASSERT_EQ(std::memcmp(&z[l], &want, sizeof want), 0) << "d=" << d << " lane " << l << ": " << z[l]
                                                               << " != " << want;
        }
      }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << kvcrush::isa::name() << " build";
}

TEST(ExpectedAttention, RepeatedQueryWithoutRotationIsItsSoftmaxAttention) {
  for (index_t n : {1, 2, 7, 33, 100}) {
    ea_case c;
    c.h = 2, c.group = 4, c.n = n, c.window = 5, c.d = 16;
    c.opt.future_positions = 0;
    c.opt.use_vnorm = false;
    c.opt.use_covariance = true;  // equal queries: the covariance is exactly 0
    auto one = kvcrush_test::random_floats(static_cast<std::size_t>(8 * 16), 40 + static_cast<std::uint32_t>(n));
    std::vector<float> queries;
    for (index_t q = 0; q < 8; ++q)
      for (index_t w = 0; w < 5; ++w) queries.insert(queries.end(), one.begin() + q * 16, one.begin() + (q + 1) * 16);
    auto keys = random_kv<float>(2, n, 16, 77, true);
    const auto got = run_ea<float>(c, queries, keys, nullptr);
    for (index_t k = 0; k < 2; ++k) {
      std::vector<double> mean(static_cast<std::size_t>(n), 0.0);
      for (index_t g = 0; g < 4; ++g) {
        std::vector<double> logit(static_cast<std::size_t>(n));
        double total = 0;
        for (index_t t = 0; t < n; ++t) {
          double dot = 0;
          for (index_t j = 0; j < 16; ++j) dot += one[(k * 4 + g) * 16 + j] * keys.get(k, t, j);
          logit[t] = std::exp(dot / 4.0);
          total += logit[t];
        }
        for (index_t t = 0; t < n; ++t) mean[t] += logit[t] / total / 4.0;
      }
      for (index_t t = 0; t < n; ++t) expect_close(got[k * n + t], mean[t], 1e-6, 1e-30, "softmax", k, t);
    }
  }
}

TEST(ExpectedAttention, OneFuturePositionRotatesTheMeanQuery) {
  // F = 1: the mean rotation is the rotation to that position, so the score
  // is the attention of the query turned by RoPE to position p.
  for (bool interleaved : {false, true}) {
    ea_case c;
    c.h = 1, c.group = 1, c.n = 9, c.window = 1, c.d = 8;
    c.opt.future_positions = 1;
    c.opt.first_future_position = 1234;
    c.opt.rope_interleaved = interleaved;
    c.opt.use_vnorm = false;
    auto queries = kvcrush_test::random_floats(8, 9);
    auto keys = random_kv<float>(1, 9, 8, 10);
    const auto got = run_ea<float>(c, queries, keys, nullptr);
    std::vector<double> turned(8);
    for (index_t i = 0; i < 4; ++i) {
      const double angle = 1234.0 * std::pow(10000.0, -2.0 * i / 8.0);
      const index_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + 4;
      turned[a] = std::cos(angle) * queries[a] - std::sin(angle) * queries[b];
      turned[b] = std::sin(angle) * queries[a] + std::cos(angle) * queries[b];
    }
    std::vector<double> e(9);
    double total = 0;
    for (index_t t = 0; t < 9; ++t) {
      double dot = 0;
      for (index_t j = 0; j < 8; ++j) dot += turned[j] * keys.get(0, t, j);
      e[t] = std::exp(dot / std::sqrt(8.0));
      total += e[t];
    }
    for (index_t t = 0; t < 9; ++t) expect_close(got[t], e[t] / total, 1e-6, 1e-30, "rotated", 0, t);
  }
}

TEST(ExpectedAttention, HandComputedTwoTokens) {
  // Queries (1, 0) and (3, 0): mean (2, 0), covariance diag(1, 0). Keys
  // (1, 0) and (0, 2), s = 1/sqrt(2): z0 = 2 s + s^2/2 = sqrt(2) + 1/4,
  // z1 = 0. Values (3, 4) and (0, 1) have norms 5 and 1.
  ea_case c;
  c.h = 1, c.group = 1, c.n = 2, c.window = 2, c.d = 2;
  c.opt.future_positions = 0;
  c.opt.use_vnorm = false;
  std::vector<float> queries = {1, 0, 3, 0};
  kv_buffer<float> keys(1, 2, 2), values(1, 2, 2);
  keys.at(0, 0, 0) = 1, keys.at(0, 1, 1) = 2;
  values.at(0, 0, 0) = 3, values.at(0, 0, 1) = 4, values.at(0, 1, 1) = 1;
  const double z0 = std::sqrt(2.0) + 0.25;
  const double p0 = 1.0 / (1.0 + std::exp(-z0)), p1 = 1.0 - p0;
  auto out = run_ea<float>(c, queries, keys, nullptr);
  EXPECT_FLOAT_EQ(out[0], static_cast<float>(p0));
  EXPECT_FLOAT_EQ(out[1], static_cast<float>(p1));
  c.opt.use_covariance = false;  // z0 = sqrt(2)
  out = run_ea<float>(c, queries, keys, nullptr);
  EXPECT_FLOAT_EQ(out[0], static_cast<float>(1.0 / (1.0 + std::exp(-std::sqrt(2.0)))));
  c.opt.use_covariance = true;
  c.opt.use_vnorm = true;
  c.opt.epsilon = 0.5f;
  out = run_ea(c, queries, keys, &values);
  EXPECT_FLOAT_EQ(out[0], static_cast<float>((p0 + 0.5) * 5.0));
  EXPECT_FLOAT_EQ(out[1], static_cast<float>((p1 + 0.5) * 1.0));
}

TEST(ExpectedAttention, HalfPrecisionKeysAndValuesGiveTheBitsOfTheirFloatValues) {
  ea_case c;
  c.h = 2, c.group = 4, c.n = 33, c.window = 4, c.d = 16;
  auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(8 * 4 * 16), 3);
  auto keys = random_kv<float>(2, 33, 16, 4);
  auto values = random_kv<float>(2, 33, 16, 5, true);
  auto keys16 = convert_kv<kvcrush::float16>(keys);
  auto values16 = convert_kv<kvcrush::bfloat16>(values);
  auto keys16f = convert_kv<float>(keys16);
  auto values16f = convert_kv<float>(values16);
  const auto half = run_ea<kvcrush::float16, kvcrush::bfloat16>(c, queries, keys16, &values16);
  EXPECT_TRUE(same_bits(half, run_ea(c, queries, keys16f, &values16f)));
  const auto want = ea_reference(c, queries, keys16f, &values16f);
  for (index_t t = 0; t < 66; ++t) expect_close(half[t], want[t], 1e-5, 1e-30, "ea f16", t / 33, t % 33);
}

TEST(ExpectedAttention, RejectsNaNAndInfinityAndBadShapesWithoutWriting) {
  ea_case c;
  c.h = 2, c.group = 2, c.n = 7, c.window = 3, c.d = 4;
  auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(4 * 3 * 4), 1);
  auto keys = random_kv<float>(2, 7, 4, 2);
  auto values = random_kv<float>(2, 7, 4, 3);
  auto expect_rejected = [&](const char* what) {
    std::vector<float> out(14, kSentinel);
    const kvcrush::strided_view<const float, 3> q(queries.data(), {4, 3, 4});
    EXPECT_THROW(kvcrush::expected_attention_scores(q, keys.view(), c.opt, kvcrush::make_matrix_view(out.data(), 2, 7),
                                                    values.view()),
                 std::invalid_argument)
        << what;
    for (float o : out) EXPECT_EQ(o, kSentinel) << what;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, -inf}) {
    queries.back() = bad;
    expect_rejected("query");
    queries.back() = 0.5f;
    keys.at(1, 6, 3) = bad;
    expect_rejected("key");
    keys.at(1, 6, 3) = 0.5f;
    values.at(1, 6, 3) = bad;
    expect_rejected("value");
    c.opt.use_vnorm = false;  // values are not read then
    std::vector<float> out(14, kSentinel);
    const kvcrush::strided_view<const float, 3> q(queries.data(), {4, 3, 4});
    EXPECT_NO_THROW(kvcrush::expected_attention_scores(q, keys.view(), c.opt,
                                                       kvcrush::make_matrix_view(out.data(), 2, 7), values.view()));
    c.opt.use_vnorm = true;
    values.at(1, 6, 3) = 0.5f;
  }
  c.opt.epsilon = nan;
  expect_rejected("epsilon");
  c.opt.epsilon = 0.0f;
  c.opt.future_positions = -1;
  expect_rejected("future positions");
  c.opt.future_positions = 8;
  c.opt.sink = 8;
  expect_rejected("sink");
  c.opt.sink = 0;
  // use_vnorm without values; query heads that do not split over KV heads.
  std::vector<float> out(14, kSentinel);
  const kvcrush::strided_view<const float, 3> q(queries.data(), {4, 3, 4});
  EXPECT_THROW(kvcrush::expected_attention_scores(q, keys.view(), c.opt, kvcrush::make_matrix_view(out.data(), 2, 7)),
               std::invalid_argument);
  const kvcrush::strided_view<const float, 3> q3(queries.data(), {3, 3, 4});
  c.opt.use_vnorm = false;
  EXPECT_THROW(kvcrush::expected_attention_scores(q3, keys.view(), c.opt, kvcrush::make_matrix_view(out.data(), 2, 7)),
               std::invalid_argument);
  for (float o : out) EXPECT_EQ(o, kSentinel);
}

TEST(ExpectedAttention, ZeroKeysShareTheMassEvenly) {
  // All-zero keys: every logit is 0, so every probability is 1/N.
  ea_case c;
  c.h = 1, c.group = 4, c.n = 7, c.window = 3, c.d = 8;
  c.opt.use_vnorm = false;
  auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(4 * 3 * 8), 8);
  kv_buffer<float> keys(1, 7, 8);
  for (float v : run_ea<float>(c, queries, keys, nullptr)) EXPECT_FLOAT_EQ(v, 1.0f / 7.0f);
}

// ------------------------------------------------------------------ R-KV

// R-KV's cal_similarity over the region E with comparison set C, literally:
// the |C| x |E| similarity matrix with a zero diagonal, each row's last
// similar column zeroed, column means over the rows, softmax over E.
std::vector<double> rkv_reference(const kv_buffer<float>& keys, index_t begin, index_t end, float threshold,
                                  index_t comparison) {
  const index_t h = keys.heads, d = keys.dim, n = end - begin;
  const index_t m = comparison <= 0 ? n : std::min(comparison, n);
  std::vector<double> out(static_cast<std::size_t>(h * n), 0.0);
  for (index_t k = 0; k < h; ++k) {
    // Unit keys, rounded to float as SPEC 11.3 says.
    std::vector<float> unit(static_cast<std::size_t>(n * d));
    for (index_t t = 0; t < n; ++t) {
      double sq = 0;
      for (index_t j = 0; j < d; ++j) sq += keys.get(k, begin + t, j) * keys.get(k, begin + t, j);
      for (index_t j = 0; j < d; ++j)
        unit[t * d + j] = static_cast<float>(keys.get(k, begin + t, j) / (std::sqrt(sq) + 1e-8));
    }
    std::vector<double> sim(static_cast<std::size_t>(m * n), 0.0);
    for (index_t r = 0; r < m; ++r) {
      const index_t c = n - m + r;
      index_t last = -1;
      for (index_t t = 0; t < n; ++t) {
        if (t == c) continue;
        double dot = 0;
        for (index_t j = 0; j < d; ++j) dot += static_cast<double>(unit[c * d + j]) * unit[t * d + j];
        sim[r * n + t] = dot;
        if (dot > threshold) last = t;
      }
      if (last >= 0) sim[r * n + last] = 0.0;
    }
    std::vector<double> raw(static_cast<std::size_t>(n), 0.0);
    double peak = -std::numeric_limits<double>::infinity();
    for (index_t t = 0; t < n; ++t) {
      for (index_t r = 0; r < m; ++r) raw[t] += sim[r * n + t];
      raw[t] = static_cast<float>(raw[t] / static_cast<double>(m));
      peak = std::max(peak, raw[t]);
    }
    double total = 0;
    for (index_t t = 0; t < n; ++t) total += std::exp(raw[t] - peak);
    for (index_t t = 0; t < n; ++t) out[k * n + t] = std::exp(raw[t] - peak) / total;
  }
  return out;
}

template <class T>
std::vector<float> run_redundancy(kv_buffer<T>& keys, index_t begin, index_t end, const kvcrush::rkv_options& opt) {
  std::vector<float> scratch(static_cast<std::size_t>(kvcrush::rkv_scratch_floats(end - begin, keys.dim, opt)),
                             kSentinel);
  std::vector<float> out(static_cast<std::size_t>(keys.heads * (end - begin)), kSentinel);
  kvcrush::rkv_redundancy(keys.view(), begin, end, opt,
                          kvcrush::make_vector_view(scratch.data(), static_cast<index_t>(scratch.size())),
                          kvcrush::make_matrix_view(out.data(), keys.heads, end - begin));
  return out;
}

TEST(Redundancy, MatchesDoubleReferenceOverSizesHeadsRegionsAndBounds) {
  std::uint32_t seed = 900;
  for (index_t n : {1, 2, 7, 33, 100})
    for (index_t h : {1, 2, 4, 8})
      for (index_t d : {3, 16})
        for (int region = 0; region < 2; ++region)
          for (index_t bound : {0, 1, 5, 1000})
            for (float threshold : {0.5f, 0.0f, 0.9f}) {
              const index_t begin = region == 0 ? 0 : std::min<index_t>(2, n);
              const index_t end = region == 0 ? n : std::max(begin, n - 3);
              ++seed;
              auto keys = random_kv<float>(h, n, d, seed, seed % 2 == 0);
              kvcrush::rkv_options opt;
              opt.threshold = threshold;
              opt.comparison_tokens = bound;
              const auto got = run_redundancy(keys, begin, end, opt);
              const auto want = rkv_reference(keys, begin, end, threshold, bound);
              const index_t len = end - begin;
              for (index_t k = 0; k < h; ++k)
                for (index_t t = 0; t < len; ++t)
                  expect_close(got[k * len + t], want[k * len + t], 1e-5, 1e-30, "redundancy", k, t);
            }
}

TEST(Redundancy, HandComputedCopiesSpareTheNewest) {
  // Tokens 0, 1, 2 share the key (1, 0); token 3 is (0, 1). Similarities:
  // 1 among the copies, 0 otherwise. last(0) = 2, last(1) = 2, last(2) = 1,
  // token 3 has no similar token. Column sums over the other rows, without
  // each row's last similar token:
  //   raw0 = (S10 + S20 + S30) / 4 = 2/4     raw1 = (S01 + S31) / 4 = 1/4
  //   raw2 = (S32) / 4 = 0                   raw3 = 0
  kv_buffer<float> keys(1, 4, 2);
  keys.at(0, 0, 0) = 1, keys.at(0, 1, 0) = 1, keys.at(0, 2, 0) = 1, keys.at(0, 3, 1) = 1;
  kvcrush::rkv_options opt;
  const auto red = run_redundancy(keys, 0, 4, opt);
  const double e0 = std::exp(0.5), e1 = std::exp(0.25), total = e0 + e1 + 2.0;
  EXPECT_FLOAT_EQ(red[0], static_cast<float>(e0 / total));
  EXPECT_FLOAT_EQ(red[1], static_cast<float>(e1 / total));
  EXPECT_FLOAT_EQ(red[2], static_cast<float>(1.0 / total));
  EXPECT_FLOAT_EQ(red[3], static_cast<float>(1.0 / total));
  // Combined with importance: lambda * imp - (1 - lambda) * red.
  std::vector<float> importance = {0.1f, 0.2f, 0.3f, 0.4f}, out(4, kSentinel);
  std::vector<float> scratch(static_cast<std::size_t>(kvcrush::rkv_scratch_floats(4, 2, opt)));
  kvcrush::rkv_scores(keys.view(), kvcrush::matrix_view<const float>(kvcrush::make_matrix_view(importance.data(), 1, 4)),
                      0, 4, opt, kvcrush::make_vector_view(scratch.data(), static_cast<index_t>(scratch.size())),
                      kvcrush::make_matrix_view(out.data(), 1, 4));
  for (index_t t = 0; t < 4; ++t) {
    const double want = 0.07 * importance[t] - 0.93 * red[t];
    EXPECT_NEAR(out[t], want, 1e-7) << t;
  }
  // Two tokens: each is the other's last similar token, nothing is counted.
  kv_buffer<float> pair(1, 2, 2);
  pair.at(0, 0, 0) = 3, pair.at(0, 1, 0) = 5;
  const auto two = run_redundancy(pair, 0, 2, opt);
  EXPECT_EQ(two[0], 0.5f);
  EXPECT_EQ(two[1], 0.5f);
}

TEST(Redundancy, ARepeatedKeyIsMoreRedundantThanDistinctOnes) {
  // Distinct random keys in 64 dimensions (|cos| mostly below 0.3) and one
  // key repeated at six positions. Every copy but the newest keeps at least
  // four similarities of 1 in its column, so the older copies are the most
  // redundant tokens; the newest copy is forgiven by all the others.
  const index_t n = 33, d = 64;
  auto keys = random_kv<float>(1, n, d, 31);
  for (index_t c : {9, 15, 22, 27, 30})
    for (index_t j = 0; j < d; ++j) keys.at(0, c, j) = keys.at(0, 4, j);
  kvcrush::rkv_options opt;
  const auto red = run_redundancy(keys, 0, n, opt);
  const index_t older[] = {4, 9, 15, 22, 27};
  for (index_t t = 0; t < n; ++t) {
    if (std::find(std::begin(older), std::end(older), t) != std::end(older)) continue;
    for (index_t c : older) EXPECT_GT(red[c], red[t]) << "copy " << c << " vs " << t;
  }
  EXPECT_LT(red[30], red[4]);
}

TEST(Redundancy, BoundsAtOrAboveTheRegionEqualTheFullComparison) {
  auto keys = random_kv<float>(4, 100, 16, 5, true);
  kvcrush::rkv_options full, bounded;
  bounded.comparison_tokens = 90;  // region [4, 94) holds 90 tokens
  EXPECT_TRUE(same_bits(run_redundancy(keys, 4, 94, full), run_redundancy(keys, 4, 94, bounded)));
  bounded.comparison_tokens = 1 << 20;
  EXPECT_TRUE(same_bits(run_redundancy(keys, 4, 94, full), run_redundancy(keys, 4, 94, bounded)));
  bounded.comparison_tokens = 89;
  EXPECT_FALSE(same_bits(run_redundancy(keys, 4, 94, full), run_redundancy(keys, 4, 94, bounded)));
}

TEST(Redundancy, EveryIsaGivesTheScalarBits) {
  // The SIMD builds sum one token per lane (simd/similarity_sums.hpp); the
  // scalar build's 4 x 4 tiles are the reference. Sizes straddle the 8- and
  // 16-token blocks, comparison bounds cut them anywhere, head sizes cover
  // partial 8-lane dots, and the keys hold exact copies, negated copies
  // (similarity -1), zero keys and negative zeros, so that thresholds 0 and
  // 1, ties with the threshold, and signed zeros all occur.
  std::uint32_t seed = 4100;
  const int isas = kvcrush_test::for_each_simd_isa([&](auto tag) {
    using Isa = decltype(tag);
    for (index_t n : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100})
      for (index_t d : {1, 3, 8, 9, 16, 17})
        for (index_t bound : {0, 1, 5, 16, 17, 1000})
          for (float threshold : {0.0f, 0.5f, 0.9f, 1.0f}) {
            ++seed;
            auto keys = random_kv<float>(3, n, d, seed, seed % 2 == 0);
            for (index_t k = 0; k < 3; ++k)
              for (index_t t = 0; t < n; ++t) {
                const index_t source = (t * 7 + k) % (t + 1);  // an earlier token (or itself)
                for (index_t j = 0; j < d; ++j) {
                  switch ((t + k) % 6) {
                    case 0: keys.at(k, t, j) = keys.at(k, source, j); break;
                    case 1: keys.at(k, t, j) = -keys.at(k, source, j); break;
                    case 2: keys.at(k, t, j) = j % 2 == 0 ? -0.0f : 0.0f; break;
                    default: break;
                  }
                }
              }
            kvcrush::rkv_options opt;
            opt.threshold = threshold;
            opt.comparison_tokens = bound;
            const index_t begin = n > 4 ? 2 : 0, end = n > 4 ? n - 1 : n;
            std::vector<float> scratch(static_cast<std::size_t>(kvcrush::rkv_scratch_floats(end - begin, d, opt)));
            std::vector<float> want(static_cast<std::size_t>(3 * (end - begin)), kSentinel), got(want);
            const auto scratch_view = kvcrush::make_vector_view(scratch.data(), static_cast<index_t>(scratch.size()));
            kvcrush::rkv_redundancy<kvcrush::isa::scalar>(keys.view(), begin, end, opt, scratch_view,
                                                 kvcrush::make_matrix_view(want.data(), 3, end - begin));
            kvcrush::rkv_redundancy<Isa>(keys.view(), begin, end, opt, scratch_view,
                                         kvcrush::make_matrix_view(got.data(), 3, end - begin));
            ASSERT_TRUE(same_bits(got, want)) << Isa::name << " n=" << n << " d=" << d << " bound " << bound
                                              << " threshold " << threshold;
          }
  });
  if (isas == 0) GTEST_SKIP() << "no SIMD kernels in the " << kvcrush::isa::name() << " build";
}

TEST(Redundancy, HalfPrecisionKeysGiveTheBitsOfTheirFloatValues) {
  auto keys = random_kv<float>(2, 33, 16, 12);
  auto half = convert_kv<kvcrush::float16>(keys);
  auto half_as_float = convert_kv<float>(half);
  kvcrush::rkv_options opt;
  opt.comparison_tokens = 7;
  EXPECT_TRUE(same_bits(run_redundancy(half, 3, 30, opt), run_redundancy(half_as_float, 3, 30, opt)));
}

TEST(Redundancy, ZeroKeysAreSimilarToNothing) {
  // A zero key has cosine 0 with everything; with all keys zero every raw
  // redundancy is 0 and the softmax is uniform.
  kv_buffer<float> keys(2, 5, 4);
  kvcrush::rkv_options opt;
  for (float v : run_redundancy(keys, 0, 5, opt)) EXPECT_FLOAT_EQ(v, 0.2f);
}

TEST(Redundancy, ScoresOutsideTheRegionInPlaceAndExtremeLambdas) {
  const index_t h = 2, n = 12, d = 8, begin = 2, end = 9;
  auto keys = random_kv<float>(h, n, d, 44);
  auto importance = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 45, 0.0f, 1.0f);
  kvcrush::rkv_options opt;
  opt.lambda = 0.3f;
  std::vector<float> scratch(static_cast<std::size_t>(kvcrush::rkv_scratch_floats(end - begin, d, opt)));
  const auto scratch_view = kvcrush::make_vector_view(scratch.data(), static_cast<index_t>(scratch.size()));
  std::vector<float> out(static_cast<std::size_t>(h * n), kSentinel);
  const kvcrush::matrix_view<const float> imp(kvcrush::make_matrix_view(importance.data(), h, n));
  kvcrush::rkv_scores(keys.view(), imp, begin, end, opt, scratch_view, kvcrush::make_matrix_view(out.data(), h, n));
  const auto red = run_redundancy(keys, begin, end, opt);
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) {
      const double r = t >= begin && t < end ? red[k * (end - begin) + t - begin] : 0.0;
      const double lambda = static_cast<double>(0.3f);  // the option is a float
      const double want = std::fma(lambda, static_cast<double>(importance[k * n + t]), -((1.0 - lambda) * r));
      EXPECT_EQ(out[k * n + t], static_cast<float>(want)) << k << " " << t;
    }
  // In place: importance and output are the same matrix.
  auto inplace = importance;
  kvcrush::rkv_scores(keys.view(), kvcrush::matrix_view<const float>(kvcrush::make_matrix_view(inplace.data(), h, n)),
                      begin, end, opt, scratch_view, kvcrush::make_matrix_view(inplace.data(), h, n));
  EXPECT_TRUE(same_bits(inplace, out));
  // lambda = 1: the importance itself. lambda = 0: minus the redundancy,
  // even next to infinite importance.
  opt.lambda = 1.0f;
  kvcrush::rkv_scores(keys.view(), imp, begin, end, opt, scratch_view, kvcrush::make_matrix_view(out.data(), h, n));
  EXPECT_TRUE(same_bits(out, importance));
  opt.lambda = 0.0f;
  auto with_inf = importance;
  with_inf[3] = std::numeric_limits<float>::infinity();
  with_inf[4] = -std::numeric_limits<float>::infinity();
  kvcrush::rkv_scores(keys.view(), kvcrush::matrix_view<const float>(kvcrush::make_matrix_view(with_inf.data(), h, n)),
                      begin, end, opt, scratch_view, kvcrush::make_matrix_view(out.data(), h, n));
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) {
      const bool inside = t >= begin && t < end;
      EXPECT_EQ(out[k * n + t], inside ? -red[k * (end - begin) + t - begin] : 0.0f) << k << " " << t;
    }
}

TEST(Redundancy, RejectsNaNInfinityAndSmallScratchWithoutWriting) {
  const index_t h = 2, n = 9, d = 4;
  auto keys = random_kv<float>(h, n, d, 50);
  std::vector<float> importance(static_cast<std::size_t>(h * n), 0.5f);
  kvcrush::rkv_options opt;
  auto expect_rejected = [&](index_t begin, index_t end, index_t scratch_floats, const char* what) {
    std::vector<float> scratch(static_cast<std::size_t>(std::max<index_t>(scratch_floats, 1)));
    const auto sv = kvcrush::make_vector_view(scratch.data(), scratch_floats);
    std::vector<float> out(static_cast<std::size_t>(h * n), kSentinel);
    EXPECT_THROW(kvcrush::rkv_scores(keys.view(),
                                     kvcrush::matrix_view<const float>(kvcrush::make_matrix_view(importance.data(), h, n)),
                                     begin, end, opt, sv, kvcrush::make_matrix_view(out.data(), h, n)),
                 std::invalid_argument)
        << what;
    EXPECT_THROW(kvcrush::rkv_redundancy(keys.view(), begin, end, opt, sv,
                                         kvcrush::make_matrix_view(out.data(), h, end - begin)),
                 std::invalid_argument)
        << what;
    for (float o : out) EXPECT_EQ(o, kSentinel) << what;
  };
  const index_t need = kvcrush::rkv_scratch_floats(n - 4, d, opt);  // region [1, n - 3)
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    keys.at(1, n - 4, d - 1) = bad;  // the last key of the region [1, n - 3)
    expect_rejected(1, n - 3, need, "key");
    keys.at(1, n - 4, d - 1) = 0.25f;
  }
  // A NaN key outside the region is never read.
  keys.at(0, 0, 0) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NO_THROW(run_redundancy(keys, 1, n - 3, opt));
  expect_rejected(1, n - 3, need - 1, "scratch");
  expect_rejected(5, 4, need, "region");
  expect_rejected(0, n + 1, need, "region end");
  opt.lambda = 1.5f;
  expect_rejected(1, n - 3, need, "lambda");
  opt.lambda = 0.07f;
  opt.threshold = -0.1f;
  expect_rejected(1, n - 3, need, "threshold");
  opt.threshold = 0.5f;
  opt.comparison_tokens = -1;
  expect_rejected(1, n - 3, need, "comparison tokens");
  opt.comparison_tokens = 0;
  {
    kv_buffer<float> no_dims(h, n, 0);
    std::vector<float> scratch(64), out(static_cast<std::size_t>(h * n), kSentinel);
    EXPECT_THROW(kvcrush::rkv_redundancy(no_dims.view(), 0, n, opt, kvcrush::make_vector_view(scratch.data(), 64),
                                         kvcrush::make_matrix_view(out.data(), h, n)),
                 std::invalid_argument);
    for (float o : out) EXPECT_EQ(o, kSentinel);
  }
  // NaN importance is rejected by rkv_scores.
  importance[h * n - 1] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> scratch(static_cast<std::size_t>(need)), out(static_cast<std::size_t>(h * n), kSentinel);
  EXPECT_THROW(kvcrush::rkv_scores(keys.view(),
                                   kvcrush::matrix_view<const float>(kvcrush::make_matrix_view(importance.data(), h, n)),
                                   1, n - 3, opt, kvcrush::make_vector_view(scratch.data(), need),
                                   kvcrush::make_matrix_view(out.data(), h, n)),
               std::invalid_argument);
  for (float o : out) EXPECT_EQ(o, kSentinel);
}

TEST(Redundancy, SameBitsInEveryIsaBuild) {
  // As KeyDiff's, with one caveat: the softmax calls the C library's exp,
  // whose last bit may depend on the variant glibc picks for the CPU. The
  // hash was taken with Debian 12's glibc on a CPU with FMA.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (!__builtin_cpu_supports("fma")) GTEST_SKIP() << "the expected hash was taken with glibc's FMA exp";
#endif
  auto keys = random_kv<float>(4, 100, 64, 77);
  kvcrush::rkv_options opt;
  opt.comparison_tokens = 40;
  EXPECT_EQ(fnv1a(run_redundancy(keys, 4, 96, opt)), 9800022500623054703ull);
}

}  // namespace
