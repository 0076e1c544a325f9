// Helpers shared by the cache tests (tests/test_cache_*.cpp): plain softmax
// attention written without the library, rows that encode where they came
// from, and byte-level snapshots for "untouched after a throw" checks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace cache_test {

using kvcrush::index_t;

// softmax(q . k_t / sqrt(d)) over the given rows, then the weighted sum of
// the value rows. Float arithmetic in row order, in one out-of-line
// function per storage type that the optimiser may neither inline nor clone
// per call site (noipa: a clone specialised for a constant head_dim may
// contract multiply-adds differently), so that the same rows in the same
// order give the same bits wherever they are stored.
template <class T>
__attribute__((noipa)) std::vector<float> attend_rows(const float* q, index_t d, const std::vector<const T*>& keys,
                                                         const std::vector<const T*>& values) {
  const auto n = static_cast<index_t>(keys.size());
  std::vector<float> logits(static_cast<std::size_t>(n));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  float peak = -INFINITY;
  for (index_t t = 0; t < n; ++t) {
    const T* k = keys[static_cast<std::size_t>(t)];
    float dot = 0.0f;
    for (index_t j = 0; j < d; ++j) dot += q[j] * kvcrush::to_float(k[j]);
    logits[t] = dot * scale;
    peak = logits[t] > peak ? logits[t] : peak;
  }
  float total = 0.0f;
  for (auto& l : logits) {
    l = std::exp(l - peak);
    total += l;
  }
  std::vector<float> out(static_cast<std::size_t>(d), 0.0f);
  for (index_t t = 0; t < n; ++t) {
    const T* v = values[static_cast<std::size_t>(t)];
    const float w = logits[t] / total;
    for (index_t j = 0; j < d; ++j) out[j] += w * kvcrush::to_float(v[j]);
  }
  return out;
}

// The same over rows given by key(t) and value(t) (pointers to head_dim
// storage values), t = 0..n-1.
template <class KeyRow, class ValueRow>
auto attend(const float* q, index_t d, index_t n, KeyRow&& key, ValueRow&& value) {
  using T = std::remove_cv_t<std::remove_pointer_t<decltype(key(index_t{}))>>;
  std::vector<const T*> keys, values;
  for (index_t t = 0; t < n; ++t) {
    keys.push_back(key(t));
    values.push_back(value(t));
  }
  return attend_rows<T>(q, d, keys, values);
}

// Softmax attention probabilities of queries (Hq, d) over a cache's keys
// (H heads, n tokens), GQA group Hq / H, into probs (Hq, n) row-major.
template <class KeyOf>
void attention_probabilities(const float* queries, index_t hq, index_t heads, index_t d, index_t n, KeyOf&& key_of,
                             std::vector<float>& probs) {
  probs.assign(static_cast<std::size_t>(hq * n), 0.0f);
  const index_t group = hq / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (index_t q = 0; q < hq; ++q) {
    float* row = probs.data() + q * n;
    float peak = -INFINITY;
    for (index_t t = 0; t < n; ++t) {
      const auto* k = key_of(q / group, t);
      float dot = 0.0f;
      for (index_t j = 0; j < d; ++j) dot += queries[q * d + j] * kvcrush::to_float(k[j]);
      row[t] = dot * scale;
      peak = row[t] > peak ? row[t] : peak;
    }
    float total = 0.0f;
    for (index_t t = 0; t < n; ++t) {
      row[t] = std::exp(row[t] - peak);
      total += row[t];
    }
    for (index_t t = 0; t < n; ++t) row[t] /= total;
  }
}

// A small integer (exact in float16 and bfloat16) that encodes where a row
// element came from.
inline float encode(std::int64_t origin, std::int64_t position, std::int64_t head, std::int64_t dim,
                    std::int64_t salt) {
  const std::int64_t mixed = origin * 131 + position * 31 + head * 17 + dim * 7 + salt * 61;
  return static_cast<float>(((mixed % 241) + 241) % 241 - 120);
}

// Random data in [-1, 1) rounded to the storage type.
template <class T>
std::vector<T> random_storage(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> out(n);
  for (auto& v : out) v = kvcrush::from_float<T>(u(rng));
  return out;
}

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// A sorted random subset of [0, n) of the given size.
inline std::vector<index_t> random_subset(index_t n, index_t count, std::mt19937& rng) {
  std::vector<index_t> all(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) all[i] = i;
  for (index_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<index_t> pick(i, n - 1);
    std::swap(all[i], all[pick(rng)]);
  }
  std::vector<index_t> out(all.begin(), all.begin() + count);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace cache_test
