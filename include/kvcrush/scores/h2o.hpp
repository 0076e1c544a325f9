// H2O heavy-hitter scores (SPEC 5): every cached token accumulates the
// attention it receives, one decode step at a time.
//
// The accumulator follows the cache through evictions: each KV head has its
// own length (heads may keep different tokens, or different numbers of them
// with head-wise budgets), and compact() drops the same rows the cache drops.
// The normalised variant divides by the number of queries that saw the token
// (decode steps since it entered the cache, counting its own).
//
// Optionally it also keeps one sum per *query* head (the attention of query
// head q, unreduced, over its KV head's tokens), for KVCrush signatures with
// one bit per query head (SPEC 4.1 "signature heads"). Importance still uses
// the GQA-reduced KV-head sums.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcrush/error.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

class h2o_accumulator {
 public:
  h2o_accumulator() = default;

  // Room for `capacity` tokens per KV head; GQA groups of query_heads /
  // kv_heads query heads are reduced with `gqa` before accumulating.
  // track_query_heads: also keep the per-query-head sums (Hq x capacity
  // more floats).
  h2o_accumulator(index_t kv_heads, index_t query_heads, index_t capacity,
                  gqa_reduction gqa = gqa_reduction::mean, bool track_query_heads = false)
      : heads_(kv_heads), query_heads_(query_heads), capacity_(capacity), gqa_(gqa) {
    using kvcrush::detail::require;
    require(kv_heads >= 1 && query_heads >= kv_heads && query_heads % kv_heads == 0, "h2o: ", query_heads,
            " query heads do not split evenly over ", kv_heads, " KV heads");
    require(capacity >= 0, "h2o: negative capacity");
    sums_.assign(static_cast<std::size_t>(heads_ * capacity_), 0.0f);
    seen_.assign(static_cast<std::size_t>(heads_ * capacity_), 0);
    lengths_.assign(static_cast<std::size_t>(heads_), 0);
    reduced_.assign(static_cast<std::size_t>(capacity_), 0.0f);
    if (track_query_heads) query_sums_.assign(static_cast<std::size_t>(query_heads_ * capacity_), 0.0f);
  }

  bool tracks_query_heads() const noexcept { return !query_sums_.empty(); }

  index_t heads() const noexcept { return heads_; }
  index_t query_heads() const noexcept { return query_heads_; }
  index_t capacity() const noexcept { return capacity_; }
  index_t length(index_t head) const noexcept { return lengths_[static_cast<std::size_t>(head)]; }
  index_t max_length() const noexcept { return *std::max_element(lengths_.begin(), lengths_.end()); }
  gqa_reduction gqa() const noexcept { return gqa_; }

  // `count` new tokens enter every head's cache with zero score.
  void append(index_t count = 1) {
    for (index_t h = 0; h < heads_; ++h) {
      kvcrush::detail::require(lengths_[h] + count <= capacity_, "h2o: capacity ", capacity_, " exceeded");
      for (index_t i = 0; i < count; ++i) {
        sums_[h * capacity_ + lengths_[h] + i] = 0.0f;
        seen_[h * capacity_ + lengths_[h] + i] = 0;
      }
      if (tracks_query_heads()) {
        const index_t group = query_heads_ / heads_;
        for (index_t q = h * group; q < (h + 1) * group; ++q)
          for (index_t i = 0; i < count; ++i) query_sums_[q * capacity_ + lengths_[h] + i] = 0.0f;
      }
      lengths_[h] += count;
    }
  }

  // One query's attention: probabilities (Hq, >= length) over each query
  // head's KV head's cached tokens (columns beyond that head's length are
  // ignored). S[h][t] += gqa-reduce(probabilities)[t]; seen[h][t] += 1.
  void accumulate(matrix_view<const float> probabilities) {
    using kvcrush::detail::require;
    require(probabilities.extent(0) == query_heads_, "h2o: attention has ", probabilities.extent(0),
            " rows for ", query_heads_, " query heads");
    require(probabilities.extent(1) >= max_length(), "h2o: attention covers ", probabilities.extent(1),
            " tokens, the cache holds ", max_length());
    require(probabilities.extent(1) <= 1 || probabilities.stride(1) == 1, "h2o: attention rows must be contiguous");
    const index_t group = query_heads_ / heads_;
    for (index_t h = 0; h < heads_; ++h) {
      const index_t n = lengths_[h];
      impl::reduce_group(probabilities.data() + h * group * probabilities.stride(0), probabilities.stride(0), group,
                         n, gqa_, reduced_.data());
      float* sums = sums_.data() + h * capacity_;
      std::int32_t* seen = seen_.data() + h * capacity_;
      for (index_t t = 0; t < n; ++t) {
        sums[t] += reduced_[t];
        seen[t] += 1;
      }
      if (tracks_query_heads()) {
        for (index_t q = h * group; q < (h + 1) * group; ++q) {
          const float* row = probabilities.data() + q * probabilities.stride(0);
          float* query_sums = query_sums_.data() + q * capacity_;
          for (index_t t = 0; t < n; ++t) query_sums[t] += row[t];
        }
      }
    }
  }

  // Prefill form: attention (Hq, N, N), row i the causal attention of query
  // i. Equivalent to appending token i and accumulating row i for i = 0..N-1
  // (same bits): S[h][t] = sum over i >= t of the reduced A[i][t].
  void prefill(strided_view<const float, 3> attention) {
    using kvcrush::detail::require;
    const index_t n = attention.extent(1);
    require(attention.extent(0) == query_heads_ && attention.extent(2) == n, "h2o: prefill attention must be (",
            query_heads_, ", N, N)");
    for (index_t i = 0; i < n; ++i) {
      append(1);
      accumulate(matrix_view<const float>(attention.data() + i * attention.stride(1), {query_heads_, n},
                                          {attention.stride(0), attention.stride(2)}));
    }
  }

  // Plain sums (heads, capacity): row h is valid up to length(h).
  matrix_view<const float> scores() const noexcept {
    return matrix_view<const float>(sums_.data(), {heads_, capacity_}, {capacity_, 1});
  }

  // Sums divided by the number of queries that saw each token, into out
  // (heads, >= max_length()).
  void normalised_scores(matrix_view<float> out) const {
    kvcrush::detail::require(out.extent(0) == heads_ && out.extent(1) >= max_length(),
                             "h2o: normalised output must be (", heads_, ", >= ", max_length(), ")");
    for (index_t h = 0; h < heads_; ++h) {
      for (index_t t = 0; t < lengths_[h]; ++t) {
        const auto i = static_cast<std::size_t>(h * capacity_ + t);
        out(h, t) = seen_[i] > 0 ? sums_[i] / static_cast<float>(seen_[i]) : 0.0f;
      }
    }
  }

  // Per-query-head plain sums (Hq, capacity): row q is valid up to the
  // length of its KV head q / (Hq / H). Empty unless tracks_query_heads().
  matrix_view<const float> query_scores() const noexcept {
    if (!tracks_query_heads()) return {};
    return matrix_view<const float>(query_sums_.data(), {query_heads_, capacity_}, {capacity_, 1});
  }

  // Per-query-head sums divided by the number of queries that saw each
  // token (the KV head's count), into out (Hq, >= max_length()).
  void normalised_query_scores(matrix_view<float> out) const {
    using kvcrush::detail::require;
    require(tracks_query_heads(), "h2o: this accumulator does not track query heads");
    require(out.extent(0) == query_heads_ && out.extent(1) >= max_length(), "h2o: normalised query output must be (",
            query_heads_, ", >= ", max_length(), ")");
    const index_t group = query_heads_ / heads_;
    for (index_t q = 0; q < query_heads_; ++q) {
      const index_t h = q / group;
      for (index_t t = 0; t < lengths_[h]; ++t) {
        const std::int32_t n = seen_[static_cast<std::size_t>(h * capacity_ + t)];
        out(q, t) = n > 0 ? query_sums_[static_cast<std::size_t>(q * capacity_ + t)] / static_cast<float>(n) : 0.0f;
      }
    }
  }

  std::int32_t seen(index_t head, index_t token) const noexcept { return seen_[head * capacity_ + token]; }

  // Keeps rows keep[0..count) (strictly increasing, < length) of one head,
  // in that order, and drops the others: what the cache does on eviction.
  void compact(index_t head, const index_t* keep, index_t count) {
    using kvcrush::detail::require;
    require(head >= 0 && head < heads_, "h2o: head ", head, " out of range");
    for (index_t i = 0; i < count; ++i) {
      require(keep[i] >= 0 && keep[i] < lengths_[head] && (i == 0 || keep[i] > keep[i - 1]),
              "h2o: keep rows must be strictly increasing and below the head's length ", lengths_[head]);
    }
    float* sums = sums_.data() + head * capacity_;
    std::int32_t* seen = seen_.data() + head * capacity_;
    for (index_t i = 0; i < count; ++i) {
      sums[i] = sums[keep[i]];
      seen[i] = seen[keep[i]];
    }
    if (tracks_query_heads()) {
      const index_t group = query_heads_ / heads_;
      for (index_t q = head * group; q < (head + 1) * group; ++q) {
        float* query_sums = query_sums_.data() + q * capacity_;
        for (index_t i = 0; i < count; ++i) query_sums[i] = query_sums[keep[i]];
      }
    }
    lengths_[head] = count;
  }

  // The same rows for every head.
  void compact_all(const index_t* keep, index_t count) {
    for (index_t h = 0; h < heads_; ++h) compact(h, keep, count);
  }

 private:
  index_t heads_ = 0, query_heads_ = 0, capacity_ = 0;
  gqa_reduction gqa_ = gqa_reduction::mean;
  std::vector<float> sums_;
  std::vector<std::int32_t> seen_;
  std::vector<index_t> lengths_;
  std::vector<float> reduced_;
  std::vector<float> query_sums_;  // (Hq, capacity) when tracking query heads
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
