// docs/SEMANTICS.md (sections 1-4) written plainly: full sorts, one bool per
// bit, no cleverness. The library's O(N) and SIMD paths are checked against
// this.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kvcrush/select/anchor.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/options.hpp"

namespace spec {

using Rows = std::vector<std::vector<float>>;  // rows[h][t]
using Bits = std::vector<int>;                  // one 0/1 per bit

// "Top k of X by v": v descending, ties by smaller position, first k;
// returned sorted ascending.
template <class Value>
std::vector<long> top_k(std::vector<long> items, Value value, long k) {
  std::sort(items.begin(), items.end(), [&](long a, long b) {
    if (value(a) != value(b)) return value(a) > value(b);
    return a < b;
  });
  items.resize(static_cast<std::size_t>(std::max<long>(0, std::min<long>(k, static_cast<long>(items.size())))));
  std::sort(items.begin(), items.end());
  return items;
}

inline std::vector<long> range(long begin, long end) {
  std::vector<long> out;
  for (long t = begin; t < end; ++t) out.push_back(t);
  return out;
}

// SPEC 4.1: signature bits (one vector of rows.size() bits per token of E).
inline std::vector<Bits> signatures(const Rows& rows, long begin, long end, kvcrush::threshold_mode mode) {
  const long n = end - begin;
  std::vector<Bits> sig(static_cast<std::size_t>(n), Bits(rows.size(), 0));
  for (std::size_t h = 0; h < rows.size(); ++h) {
    if (mode == kvcrush::threshold_mode::median) {
      for (long t : top_k(range(begin, end), [&](long x) { return rows[h][x]; }, n / 2)) sig[t - begin][h] = 1;
    } else {
      double sum = 0;
      for (long t = begin; t < end; ++t) sum += rows[h][t];
      const double mean = sum / static_cast<double>(n);
      for (long t = begin; t < end; ++t) sig[t - begin][h] = rows[h][t] > mean ? 1 : 0;
    }
  }
  return sig;
}

// SPEC 4.2.
inline Bits anchor(kvcrush::anchor_mode mode, const std::vector<Bits>& sigs, std::size_t bits, std::uint64_t seed) {
  Bits a(bits, 0);
  for (std::size_t b = 0; b < bits; ++b) {
    long count = 0;
    for (const auto& s : sigs) count += s[b];
    const long total = static_cast<long>(sigs.size());
    switch (mode) {
      case kvcrush::anchor_mode::zeros: a[b] = 0; break;
      case kvcrush::anchor_mode::ones: a[b] = 1; break;
      case kvcrush::anchor_mode::alternating: a[b] = static_cast<int>(b % 2); break;
      case kvcrush::anchor_mode::mean: a[b] = 2 * count > total; break;
      case kvcrush::anchor_mode::inv_mean: a[b] = 2 * count < total; break;
      case kvcrush::anchor_mode::random:
        // Implementation-defined values: the documented generator.
        a[b] = static_cast<int>((kvcrush::splitmix64_at(seed, b / 64) >> (b % 64)) & 1u);
        break;
    }
  }
  return a;
}

inline long hamming(const Bits& x, const Bits& y) {
  long d = 0;
  for (std::size_t i = 0; i < x.size(); ++i) d += x[i] != y[i];
  return d;
}

// SPEC 4.3: representative index by rule.
inline long representative(kvcrush::representative_rule rule, long i, long n, long k) {
  auto lo = [&](long j) { return static_cast<long>(std::floor(static_cast<double>(j) * n / k)); };
  switch (rule) {
    case kvcrush::representative_rule::bucket_start: return lo(i);
    case kvcrush::representative_rule::bucket_center: return lo(i) + (lo(i + 1) - lo(i) - 1) / 2;
    case kvcrush::representative_rule::linspace:
      return k == 1 ? 0 : static_cast<long>(std::floor(static_cast<double>(i) * (n - 1) / (k - 1)));
    case kvcrush::representative_rule::stride: return i * (n / k);
  }
  return -1;
}

// docs/SEMANTICS.md "Adaptive KVCrush split": the importance picks of one
// row, from the unit scores v of E (non-negative, no NaN): rank them (score
// descending, ties by smaller position); every +inf unit is needed; then
// the fewest finite units whose double sum in rank order reaches mass times
// the double sum of all finite units in rank order; at most rest.
inline long adaptive_importance(const std::vector<float>& v, long rest, double mass) {
  std::vector<long> ranked = range(0, static_cast<long>(v.size()));
  std::sort(ranked.begin(), ranked.end(), [&](long a, long b) {
    if (v[a] != v[b]) return v[a] > v[b];
    return a < b;
  });
  std::vector<double> finite;
  long needed = 0;
  for (long i : ranked) {
    if (std::isinf(v[i])) {
      ++needed;
    } else {
      finite.push_back(static_cast<double>(v[i]));
    }
  }
  double total = 0.0;
  for (double x : finite) total += x;
  double covered = 0.0;
  for (double x : finite) {
    if (covered >= mass * total) break;
    covered += x;
    ++needed;
  }
  return std::min(needed, rest);
}

// SPEC 1-4 (4.4 when block_size > 1): keep sets, one per row (one row in
// shared mode). S: per-KV-head scores; sig_rows: the rows signatures come
// from (S itself unless signature heads are separate).
// rest_per_row (AdaKV, SPEC 6.3): when given, row h's free budget B_rest is
// rest_per_row[h] instead of B - s - r (token mode, per-head mode).
inline std::vector<std::vector<long>> keep(const Rows& S, const Rows& sig_rows, const kvcrush::keep_config& cfg,
                                           const std::vector<long>& rest_per_row = {}) {
  const long H = static_cast<long>(S.size());
  const long N = static_cast<long>(S[0].size());
  const long b = cfg.block_size;
  const long units = N / b;
  const long all_units = (N + b - 1) / b;
  const long s = cfg.sink / b, r = cfg.recent / b, B = cfg.budget / b;
  const long rows = cfg.per_head ? H : 1;
  std::vector<std::vector<long>> result(static_cast<std::size_t>(rows));
  if (units <= B) {
    for (auto& row : result) row = range(0, all_units);
    return result;
  }
  const long first = s, last = units - r;  // E in units
  auto rest_of = [&](long row) { return rest_per_row.empty() ? B - s - r : rest_per_row[static_cast<std::size_t>(row)]; };

  // Token-level signatures over the evictable tokens, concatenated per block.
  const auto token_sigs = signatures(sig_rows, first * b, last * b, cfg.threshold);
  const std::size_t tbits = sig_rows.size();
  std::vector<Bits> unit_sigs;
  for (long j = 0; j < last - first; ++j) {
    Bits bits;
    for (long i = 0; i < b; ++i) {
      const auto& t = token_sigs[static_cast<std::size_t>(j * b + i)];
      bits.insert(bits.end(), t.begin(), t.end());
    }
    unit_sigs.push_back(bits);
  }
  const Bits a = anchor(cfg.anchor, unit_sigs, tbits * static_cast<std::size_t>(b), cfg.seed);

  // Token importance (shared: float32 sum over heads in head order), then
  // unit importance (float32 sum over the block's tokens in order).
  auto token_importance = [&](long row, long t) {
    if (cfg.per_head) return S[row][t];
    float sum = S[0][t];
    for (long h = 1; h < H; ++h) sum += S[h][t];
    return sum;
  };
  for (long row = 0; row < rows; ++row) {
    const long rest = rest_of(row);
    auto unit_importance = [&](long u) {
      float sum = token_importance(row, u * b);
      for (long i = 1; i < b; ++i) sum += token_importance(row, u * b + i);
      return sum;
    };
    long crush = static_cast<long>(std::floor(cfg.crush_fraction * static_cast<double>(rest)));
    if (cfg.split == kvcrush::crush_split::adaptive) {
      std::vector<float> units_of_e;
      for (long u = first; u < last; ++u) units_of_e.push_back(unit_importance(u));
      crush = rest - adaptive_importance(units_of_e, rest, cfg.crush_mass);
    }
    const long imp_budget = rest - crush;
    std::vector<long> I;
    if (cfg.rank_importance) I = top_k(range(first, last), unit_importance, imp_budget);
    std::vector<long> C;
    for (long u = first; u < last; ++u) {
      if (!std::binary_search(I.begin(), I.end(), u)) C.push_back(u);
    }
    std::stable_sort(C.begin(), C.end(), [&](long x, long y) {
      return hamming(unit_sigs[x - first], a) < hamming(unit_sigs[y - first], a);
    });
    std::vector<long> R;
    for (long i = 0; i < crush; ++i) R.push_back(C[representative(cfg.representative, i, static_cast<long>(C.size()), crush)]);
    std::vector<long> keep = range(0, first);
    keep.insert(keep.end(), I.begin(), I.end());
    keep.insert(keep.end(), R.begin(), R.end());
    for (long u = last; u < all_units; ++u) keep.push_back(u);
    std::sort(keep.begin(), keep.end());
    result[static_cast<std::size_t>(row)] = keep;
  }
  return result;
}

// SPEC 6.3: AdaKV free budgets per head. Each head's own top floor(alpha *
// rest) of [begin, end), then the top H * (rest - floor) of all remaining
// (head, token) pairs by score, ties by head then position.
inline std::vector<long> head_budgets(const Rows& S, long begin, long end, long rest, double alpha) {
  const long H = static_cast<long>(S.size());
  const long floor_budget = static_cast<long>(std::floor(alpha * static_cast<double>(rest)));
  std::vector<long> budgets(static_cast<std::size_t>(H), floor_budget);
  std::vector<std::pair<long, long>> pairs;  // (head, token) not taken by the floor
  for (long h = 0; h < H; ++h) {
    const auto top = top_k(range(begin, end), [&](long t) { return S[h][t]; }, floor_budget);
    for (long t = begin; t < end; ++t)
      if (!std::binary_search(top.begin(), top.end(), t)) pairs.push_back({h, t});
  }
  // pairs are in (head, position) order already; a stable sort by score
  // descending keeps that order among ties.
  std::stable_sort(pairs.begin(), pairs.end(), [&](const auto& x, const auto& y) { return S[x.first][x.second] > S[y.first][y.second]; });
  const long extra = H * (rest - floor_budget);
  for (long i = 0; i < extra && i < static_cast<long>(pairs.size()); ++i) budgets[static_cast<std::size_t>(pairs[i].first)] += 1;
  return budgets;
}

// SPEC 5.1 with the default options (avg pooling, kernel k, mean GQA):
// A is (Hq, W, N) row-major. Returns the per-query-head pooled rows and the
// per-KV-head reduced rows.
struct window_rows {
  Rows query, kv;
};
inline window_rows window_scores(const std::vector<float>& A, long Hq, long W, long N, long H, long k = 7) {
  window_rows out{Rows(static_cast<std::size_t>(Hq), std::vector<float>(static_cast<std::size_t>(N))),
                  Rows(static_cast<std::size_t>(H), std::vector<float>(static_cast<std::size_t>(N)))};
  for (long q = 0; q < Hq; ++q) {
    std::vector<float> raw(static_cast<std::size_t>(N));
    for (long t = 0; t < N; ++t) {
      float sum = A[static_cast<std::size_t>((q * W + 0) * N + t)];
      for (long w = 1; w < W; ++w) sum += A[static_cast<std::size_t>((q * W + w) * N + t)];
      raw[t] = sum;
    }
    const long outside = N - W;
    for (long t = 0; t < N; ++t) {
      if (t >= outside) {
        out.query[q][t] = raw[t];
        continue;
      }
      float acc = 0.0f;
      for (long j = t - k / 2; j <= t + k / 2; ++j) acc += (j >= 0 && j < outside) ? raw[j] : 0.0f;
      out.query[q][t] = acc / static_cast<float>(k);
    }
  }
  const long G = Hq / H;
  for (long h = 0; h < H; ++h)
    for (long t = 0; t < N; ++t) {
      float sum = out.query[h * G][t];
      for (long g = 1; g < G; ++g) sum += out.query[h * G + g][t];
      out.kv[h][t] = G == 1 ? sum : sum / static_cast<float>(G);
    }
  return out;
}

}  // namespace spec
