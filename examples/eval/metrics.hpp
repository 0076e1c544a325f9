// Accuracy of a compressed-cache run against the full-cache run, position by
// position: perplexity of the true next token, top-1 agreement with the
// full cache's prediction, and KL(full || compressed) of the next-token
// distributions.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>

namespace kvcrush_eval {

// log softmax of logits, in double for stable sums over the vocabulary.
inline Eigen::VectorXd log_softmax(const Eigen::VectorXf& logits) {
  const double peak = static_cast<double>(logits.maxCoeff());
  Eigen::VectorXd shifted = logits.cast<double>().array() - peak;
  const double log_total = std::log(shifted.array().exp().sum());
  return shifted.array() - log_total;
}

struct accuracy {
  double nll_full = 0.0;   // sums over positions
  double nll = 0.0;
  double kl = 0.0;
  std::int64_t agree = 0;
  std::int64_t positions = 0;

  // One prediction of `target` from the full and the compressed cache.
  void add(const Eigen::VectorXd& full_log_probs, const Eigen::VectorXd& log_probs, int target) {
    nll_full -= full_log_probs[target];
    nll -= log_probs[target];
    Eigen::Index full_best = 0, best = 0;
    full_log_probs.maxCoeff(&full_best);
    log_probs.maxCoeff(&best);
    agree += full_best == best;
    kl += (full_log_probs.array().exp() * (full_log_probs - log_probs).array()).sum();
    ++positions;
  }

  void merge(const accuracy& other) {
    nll_full += other.nll_full;
    nll += other.nll;
    kl += other.kl;
    agree += other.agree;
    positions += other.positions;
  }

  double perplexity_full() const { return positions ? std::exp(nll_full / positions) : 0.0; }
  double perplexity() const { return positions ? std::exp(nll / positions) : 0.0; }
  double perplexity_change() const { return positions ? perplexity() / perplexity_full() - 1.0 : 0.0; }
  double agreement() const { return positions ? static_cast<double>(agree) / positions : 0.0; }
  double mean_kl() const { return positions ? kl / positions : 0.0; }
};

}  // namespace kvcrush_eval
