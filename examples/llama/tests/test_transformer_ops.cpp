// RMSNorm, softmax, RoPE, SwiGLU and argmax against their textbook formulas
// evaluated in double precision.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "transformer_ops.hpp"

namespace {

using kvcrush::index_t;

std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(LlamaOps, RmsNormMatchesTheFormula) {
  for (const index_t n : {1, 2, 7, 64, 172}) {
    const std::vector<float> x = random_vector(static_cast<std::size_t>(n), 1, 3.0f);
    const std::vector<float> weight = random_vector(static_cast<std::size_t>(n), 2);
    double mean_square = 0.0;
    for (float v : x) mean_square += static_cast<double>(v) * v;
    mean_square /= static_cast<double>(n);
    const double scale = 1.0 / std::sqrt(mean_square + 1e-5);
    std::vector<float> out(static_cast<std::size_t>(n));
    kvcrush_llama::rms_norm(out.data(), x.data(), weight.data(), n);
    for (index_t j = 0; j < n; ++j) {
      const double expected = weight[static_cast<std::size_t>(j)] * x[static_cast<std::size_t>(j)] * scale;
      EXPECT_NEAR(out[static_cast<std::size_t>(j)], expected, 1e-5 * (1.0 + std::abs(expected))) << n << " " << j;
    }
    // In place (the final norm normalises the residual stream into itself).
    std::vector<float> in_place = x;
    kvcrush_llama::rms_norm(in_place.data(), in_place.data(), weight.data(), n);
    EXPECT_EQ(in_place, out);
  }
  // The epsilon keeps a zero vector finite.
  const std::vector<float> zeros(8, 0.0f), ones(8, 1.0f);
  std::vector<float> out(8);
  kvcrush_llama::rms_norm(out.data(), zeros.data(), ones.data(), 8);
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(LlamaOps, SoftmaxMatchesTheFormula) {
  for (const index_t n : {1, 2, 5, 33, 512}) {
    std::vector<float> x = random_vector(static_cast<std::size_t>(n), 3, 4.0f);
    double max_value = -std::numeric_limits<double>::infinity();
    for (float v : x) max_value = std::max(max_value, static_cast<double>(v));
    double sum = 0.0;
    for (float v : x) sum += std::exp(v - max_value);
    std::vector<double> expected;
    for (float v : x) expected.push_back(std::exp(v - max_value) / sum);
    kvcrush_llama::softmax_in_place(x.data(), n);
    double total = 0.0;
    for (index_t i = 0; i < n; ++i) {
      EXPECT_NEAR(x[static_cast<std::size_t>(i)], expected[static_cast<std::size_t>(i)], 1e-6) << n << " " << i;
      total += x[static_cast<std::size_t>(i)];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
  // Large scores do not overflow (the maximum is subtracted first).
  std::vector<float> large = {1000.0f, 1000.0f, 0.0f};
  kvcrush_llama::softmax_in_place(large.data(), 3);
  EXPECT_FLOAT_EQ(large[0], 0.5f);
  EXPECT_FLOAT_EQ(large[1], 0.5f);
  EXPECT_EQ(large[2], 0.0f);
}

TEST(LlamaOps, RopeRotatesInterleavedPairsPerHead) {
  const index_t head_dim = 8;
  const index_t heads = 3;
  const std::vector<float> original = random_vector(static_cast<std::size_t>(head_dim * heads), 4);
  kvcrush_llama::rope_rotation rope(head_dim);
  for (const index_t position : {0, 1, 5, 511, 4000}) {
    std::vector<float> v = original;
    rope.set_position(position);
    rope.apply(v.data(), head_dim * heads);
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < head_dim / 2; ++i) {
        // Pair (2i, 2i+1) of the head turns by position * 10000^(-2i/head_dim).
        const double theta = static_cast<double>(position) * std::pow(10000.0, -2.0 * i / head_dim);
        const std::size_t a = static_cast<std::size_t>(h * head_dim + 2 * i);
        const double x0 = original[a], x1 = original[a + 1];
        const double tolerance = 2e-6 * (1.0 + static_cast<double>(position)) * (std::abs(x0) + std::abs(x1));
        EXPECT_NEAR(v[a], x0 * std::cos(theta) - x1 * std::sin(theta), tolerance) << position << " " << h << " " << i;
        EXPECT_NEAR(v[a + 1], x0 * std::sin(theta) + x1 * std::cos(theta), tolerance)
            << position << " " << h << " " << i;
      }
    }
    if (position == 0) {
      EXPECT_EQ(v, original);
    }
  }
}

TEST(LlamaOps, RopeDotProductsDependOnlyOnTheDistance) {
  const index_t head_dim = 8;
  const std::vector<float> q0 = random_vector(8, 5), k0 = random_vector(8, 6);
  kvcrush_llama::rope_rotation rope(head_dim);
  const auto rotated_dot = [&](index_t q_position, index_t k_position) {
    std::vector<float> q = q0, k = k0;
    rope.set_position(q_position);
    rope.apply(q.data(), head_dim);
    rope.set_position(k_position);
    rope.apply(k.data(), head_dim);
    double dot = 0.0;
    for (std::size_t i = 0; i < q.size(); ++i) dot += static_cast<double>(q[i]) * k[i];
    return dot;
  };
  EXPECT_NEAR(rotated_dot(7, 3), rotated_dot(104, 100), 1e-4);
  EXPECT_NEAR(rotated_dot(3, 3), rotated_dot(0, 0), 1e-4);
}

TEST(LlamaOps, SwiGluMatchesTheFormula) {
  std::vector<float> gate = random_vector(50, 7, 3.0f);
  const std::vector<float> up = random_vector(50, 8);
  const std::vector<float> original = gate;
  kvcrush_llama::swiglu_in_place(gate.data(), up.data(), 50);
  for (std::size_t i = 0; i < gate.size(); ++i) {
    const double g = original[i];
    const double expected = g / (1.0 + std::exp(-g)) * up[i];
    EXPECT_NEAR(gate[i], expected, 1e-5 * (1.0 + std::abs(expected)));
  }
}

TEST(LlamaOps, ArgmaxTakesTheFirstMaximum) {
  const std::vector<float> v = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  EXPECT_EQ(kvcrush_llama::argmax(v.data(), 5), 1);
  EXPECT_EQ(kvcrush_llama::argmax(v.data(), 1), 0);
}

}  // namespace
