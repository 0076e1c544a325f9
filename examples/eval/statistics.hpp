// Confidence intervals for the accuracy figures: a percentile bootstrap over
// chunks (the independent units of an evaluation; positions within a chunk
// share their context and are not independent).
//
// One resample draws as many chunks as were evaluated, with replacement,
// and recomputes each figure from the pooled sums of the drawn chunks, as
// the point estimate pools all chunks. Draw r, slot i picks chunk
// splitmix64_at(seed, r * n + i) mod n (the modulo bias, below n / 2^64, is
// irrelevant here), so the intervals are reproducible for a seed. A paired
// interval (policy A minus policy B on the same chunks) uses the same draws
// for both, which is what makes it much narrower than two separate ones.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "kvcrush/random.hpp"
#include "metrics.hpp"

namespace kvcrush_eval {

struct interval {
  double low = 0.0;
  double high = 0.0;
};

// The three figures of a row, or of a paired difference.
struct figures {
  double perplexity_change = 0.0;  // ppl / ppl_full - 1
  double agreement = 0.0;          // top-1, as a fraction
  double kl = 0.0;                 // mean KL(full || policy) in nats
};

struct figure_intervals {
  interval perplexity_change, agreement, kl;
};

inline constexpr int bootstrap_resamples = 2000;
inline constexpr std::uint64_t bootstrap_seed = 20251204;

inline figures figures_of(const accuracy& a) { return {a.perplexity_change(), a.agreement(), a.mean_kl()}; }

inline figures difference(const figures& a, const figures& b) {
  return {a.perplexity_change - b.perplexity_change, a.agreement - b.agreement, a.kl - b.kl};
}

namespace detail {

// The 2.5th and 97.5th percentiles of values (sorted in place): the order
// statistics at ranks floor(0.025 (B - 1)) and ceil(0.975 (B - 1)).
inline interval percentile_95(std::vector<double>& values) {
  std::sort(values.begin(), values.end());
  const double last = static_cast<double>(values.size() - 1);
  return {values[static_cast<std::size_t>(std::floor(0.025 * last))],
          values[static_cast<std::size_t>(std::ceil(0.975 * last))]};
}

// figure(draw) for every resample; draw(chunk) pools the drawn chunks.
template <class Statistic>
figure_intervals resample(std::size_t chunks, int resamples, std::uint64_t seed, Statistic statistic) {
  if (chunks == 0) throw std::invalid_argument("bootstrap: no chunks");
  if (resamples < 2) throw std::invalid_argument("bootstrap: need at least 2 resamples");
  std::vector<double> change(static_cast<std::size_t>(resamples)), agree(change.size()), kl(change.size());
  std::vector<std::size_t> draw(chunks);
  for (std::size_t r = 0; r < change.size(); ++r) {
    for (std::size_t i = 0; i < chunks; ++i) {
      draw[i] = static_cast<std::size_t>(kvcrush::splitmix64_at(seed, r * chunks + i) % chunks);
    }
    const figures f = statistic(draw);
    change[r] = f.perplexity_change;
    agree[r] = f.agreement;
    kl[r] = f.kl;
  }
  return {percentile_95(change), percentile_95(agree), percentile_95(kl)};
}

inline accuracy pooled(const std::vector<accuracy>& chunks, const std::vector<std::size_t>& draw) {
  accuracy total;
  for (const std::size_t i : draw) total.merge(chunks[i]);
  return total;
}

}  // namespace detail

// 95% intervals of one row's figures.
inline figure_intervals bootstrap(const std::vector<accuracy>& chunks, int resamples = bootstrap_resamples,
                                  std::uint64_t seed = bootstrap_seed) {
  return detail::resample(chunks.size(), resamples, seed,
                          [&](const std::vector<std::size_t>& draw) { return figures_of(detail::pooled(chunks, draw)); });
}

// 95% intervals of a's figures minus b's, both evaluated on the same chunks
// (chunk i of a and of b are the same text).
inline figure_intervals bootstrap_paired(const std::vector<accuracy>& a, const std::vector<accuracy>& b,
                                         int resamples = bootstrap_resamples, std::uint64_t seed = bootstrap_seed) {
  if (a.size() != b.size()) throw std::invalid_argument("bootstrap_paired: the rows cover different chunks");
  return detail::resample(a.size(), resamples, seed, [&](const std::vector<std::size_t>& draw) {
    return difference(figures_of(detail::pooled(a, draw)), figures_of(detail::pooled(b, draw)));
  });
}

}  // namespace kvcrush_eval
