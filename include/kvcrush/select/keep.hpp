// The keep set (SPEC sections 1, 3 and 4): protected sink and recent tokens,
// the importance selection, and the KVCrush representatives of what the
// importance policy would evict, at token or block granularity, shared by all
// KV heads or per head.
//
// Inputs are per-KV-head scores S (heads, tokens) from any score source and,
// optionally, separate signature scores (e.g. the Hq pooled query-head
// scores, SPEC 4.1 "signature heads"). Output positions are sorted ascending.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kvcrush/error.hpp"
#include "kvcrush/select/anchor.hpp"
#include "kvcrush/select/block_signatures.hpp"
#include "kvcrush/select/buckets.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/select/order_statistics.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/select/selection_scratch.hpp"
#include "kvcrush/simd/bits.hpp"
#include "kvcrush/simd/hamming.hpp"
#include "kvcrush/simd/kept_positions.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct keep_config {
  index_t budget = 0;  // B: tokens kept per KV head, protected ones included
  index_t sink = 0;    // s: first tokens always kept
  index_t recent = 0;  // r: last tokens always kept
  // Share of the unprotected budget given to KVCrush representatives
  // (split = fixed; ignored by the adaptive split).
  double crush_fraction = 0.0;
  // fixed: SPEC 1's floor(crush_fraction * B_rest). adaptive: per row, the
  // importance selection keeps the fewest evictable units whose scores cover
  // crush_mass of the row's evictable score mass (at most B_rest), and the
  // representatives take the rest (docs/SEMANTICS.md, "Adaptive KVCrush
  // split"). The scores must then be non-negative (an attention mass).
  crush_split split = crush_split::fixed;
  double crush_mass = 0.9;  // in (0, 1]
  anchor_mode anchor = anchor_mode::mean;
  representative_rule representative = representative_rule::bucket_center;
  threshold_mode threshold = threshold_mode::median;
  std::uint64_t seed = 0;  // random anchor
  bool per_head = false;   // one keep set per KV head (SPEC 3, per-head mode)
  index_t block_size = 1;  // > 1: select whole blocks of this many tokens (SPEC 4.4)
  // false for StreamingLLM: nothing is ranked by importance, so the budget
  // must be sink + recent unless crush_fraction = 1 fills the middle.
  bool rank_importance = true;
};

// The budget split of SPEC 1 for the unprotected part, in selection units
// (tokens, or blocks in block mode).
struct budget_split {
  index_t rest = 0;        // B_rest
  index_t crush = 0;       // B_crush
  index_t importance = 0;  // B_imp
};

constexpr budget_split split_budget(index_t rest, double crush_fraction) noexcept {
  const auto crush = static_cast<index_t>(std::floor(crush_fraction * static_cast<double>(rest)));
  return {rest, crush, rest - crush};
}

// Number of positions (token mode) or block indices (block mode) each keep
// set holds for a sequence of `tokens` tokens.
inline index_t keep_count(const keep_config& cfg, index_t tokens) noexcept {
  if (cfg.block_size <= 1) return tokens <= cfg.budget ? tokens : cfg.budget;
  const index_t b = cfg.block_size;
  const index_t full = tokens / b;
  const index_t all = (tokens + b - 1) / b;
  if (full <= cfg.budget / b) return all;
  return cfg.budget / b + (tokens % b != 0 ? 1 : 0);
}

// Throws std::invalid_argument when the configuration is unusable.
inline void validate(const keep_config& cfg) {
  using kvcrush::detail::require;
  require(cfg.budget >= 0 && cfg.sink >= 0 && cfg.recent >= 0, "budget, sink and recent must be >= 0 (got budget ",
          cfg.budget, ", sink ", cfg.sink, ", recent ", cfg.recent, ")");
  require(cfg.budget >= cfg.sink + cfg.recent, "budget ", cfg.budget, " is below sink + recent = ",
          cfg.sink + cfg.recent);
  require(cfg.crush_fraction >= 0.0 && cfg.crush_fraction <= 1.0, "crush_fraction must be in [0, 1] (got ",
          cfg.crush_fraction, ")");
  require(cfg.crush_mass > 0.0 && cfg.crush_mass <= 1.0, "crush_mass must be in (0, 1] (got ", cfg.crush_mass,
          ")");
  require(cfg.split == crush_split::fixed || cfg.split == crush_split::adaptive, "crush split ",
          static_cast<int>(cfg.split), " is neither fixed nor adaptive");
  require(cfg.block_size >= 1, "block_size must be >= 1 (got ", cfg.block_size, ")");
  if (cfg.block_size > 1) {
    const index_t b = cfg.block_size;
    require(cfg.sink % b == 0 && cfg.recent % b == 0 && cfg.budget % b == 0, "block mode: sink (", cfg.sink,
            "), recent (", cfg.recent, ") and budget (", cfg.budget, ") must be multiples of the block size ", b);
  }
  require(cfg.rank_importance || cfg.split == crush_split::fixed,
          "the adaptive KVCrush split needs importance scores; StreamingLLM ranks no tokens (use the fixed split)");
  if (!cfg.rank_importance) {
    const index_t b = cfg.block_size;
    const auto split = split_budget((cfg.budget - cfg.sink - cfg.recent) / b, cfg.crush_fraction);
    require(split.importance == 0, "StreamingLLM ranks no tokens: budget (", cfg.budget,
            ") must equal sink + recent (", cfg.sink + cfg.recent, ") unless crush_fraction is 1");
  }
}

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

enum : std::uint8_t { flag_evict = 0, flag_important = 1, flag_representative = 2 };

enum class selection_status { ok, nan_in_scores, nan_in_signature_scores, negative_mass };

enum class mass_status { ok, nan, negative };

// The adaptive split of one row (docs/SEMANTICS.md 4.5): the number of
// importance picks among the n evictable units with scores v, at most
// `rest`. The units are ranked as the selection ranks them (score
// descending, ties by smaller position), every +inf unit counts as needed,
// and then the fewest finite units whose double sum, accumulated in rank
// order, reaches mass * (the double sum of all finite units, in rank order).
// Plain scalar double arithmetic in one fixed order: the same bits in every
// ISA build. order, spare: room for n indices each.
//
// The ranking is a stable radix sort of the positions by one integer key per
// unit: a non-negative float's bits order like its value, so 0x7f800000 -
// bits, ascending, is score descending (-0.0 is taken as +0.0, its equal),
// and stability keeps equal scores in position order. Four passes of eight
// bits, each skipped when every key has the same digit there.
inline mass_status mass_cover_count(const float* v, index_t n, index_t rest, double mass, index_t* order,
                                    index_t* spare, index_t& picks) noexcept {
  picks = 0;
  for (index_t i = 0; i < n; ++i) {
    if (v[i] != v[i]) return mass_status::nan;
    if (v[i] < 0.0f) return mass_status::negative;
  }
  if (rest <= 0) return mass_status::ok;
  auto key = [v](index_t i) {
    std::uint32_t b;
    std::memcpy(&b, &v[i], sizeof b);
    return 0x7f800000u - (b & 0x7fffffffu);  // b & 0x7fffffff: -0.0 -> +0.0
  };
  index_t* src = order;
  index_t* dst = spare;
  for (index_t i = 0; i < n; ++i) src[i] = i;
  for (unsigned shift = 0; shift < 32; shift += 8) {
    index_t start[257] = {};
    for (index_t i = 0; i < n; ++i) ++start[((key(src[i]) >> shift) & 0xffu) + 1];
    bool one_digit = false;
    for (unsigned d = 1; d <= 256; ++d) one_digit |= start[d] == n;
    if (one_digit) continue;
    for (unsigned d = 0; d < 256; ++d) start[d + 1] += start[d];
    for (index_t i = 0; i < n; ++i) dst[start[(key(src[i]) >> shift) & 0xffu]++] = src[i];
    index_t* sorted = dst;
    dst = src;
    src = sorted;
  }
  constexpr float inf = std::numeric_limits<float>::infinity();
  index_t infinite = 0;
  while (infinite < n && v[src[infinite]] == inf) ++infinite;
  double total = 0.0;
  for (index_t i = infinite; i < n; ++i) total += static_cast<double>(v[src[i]]);
  const double target = mass * total;
  index_t k = infinite;
  double covered = 0.0;
  for (index_t i = infinite; i < n && k < rest && !(covered >= target); ++i) {
    covered += static_cast<double>(v[src[i]]);
    ++k;
  }
  picks = k < rest ? k : rest;
  return mass_status::ok;
}


// sums[j] = float32 sum of v[j*b .. j*b+b) in position order. Eight blocks
// are summed side by side: each block's additions form one dependent chain,
// and one chain at a time would wait on the adder's latency at every token.
inline void block_sums(const float* v, index_t blocks, index_t b, float* sums) noexcept {
  constexpr index_t lanes = 8;
  index_t j = 0;
  for (; j + lanes <= blocks; j += lanes) {
    float acc[lanes];
    for (index_t l = 0; l < lanes; ++l) acc[l] = v[(j + l) * b];
    for (index_t i = 1; i < b; ++i)
      for (index_t l = 0; l < lanes; ++l) acc[l] += v[(j + l) * b + i];
    for (index_t l = 0; l < lanes; ++l) sums[j + l] = acc[l];
  }
  for (; j < blocks; ++j) {
    float acc = v[j * b];
    for (index_t i = 1; i < b; ++i) acc += v[j * b + i];
    sums[j] = acc;
  }
}

// The selection itself, behind validated input. Units are tokens (b = 1) or
// blocks. Writes flags for the evictable units of every head row (one row in
// shared mode) into `flags` ([rows][evictable units]) and returns the status.
// row_rest (optional, per-head mode): the unprotected budget of each row in
// units, for head-wise budgets; otherwise every row gets the uniform one.
template <class Isa>
selection_status run_selection(const score_rows& s, const score_rows& sig_rows, bool separate_signature_rows,
                               const keep_config& cfg, selection_scratch& ws, std::uint8_t* flags,
                               const index_t* row_rest = nullptr) noexcept {
  const index_t b = cfg.block_size;
  const index_t tokens = s.tokens;
  const index_t units = tokens / b;  // full blocks (tokens when b = 1)
  const index_t first = cfg.sink / b;
  const index_t last = units - cfg.recent / b;  // evictable units [first, last)
  const index_t n = last - first;
  const index_t token_begin = first * b;
  const index_t token_end = last * b;
  const index_t n_tokens = token_end - token_begin;
  const index_t rows = cfg.per_head ? s.rows : 1;
  const index_t uniform_rest = cfg.budget / b - first - cfg.recent / b;
  const bool adaptive = cfg.split == crush_split::adaptive;
  // Adaptive split: each row's importance picks, decided in step 2.
  index_t* adaptive_picks = adaptive ? ws.split_picks(static_cast<std::size_t>(rows)) : nullptr;
  auto rest_of = [&](index_t row) { return row_rest ? row_rest[row] : uniform_rest; };
  auto split_of = [&](index_t row) {
    if (!adaptive) return split_budget(rest_of(row), cfg.crush_fraction);
    return budget_split{rest_of(row), rest_of(row) - adaptive_picks[row], adaptive_picks[row]};
  };
  bool need_signatures = false;
  bool ranks = false;
  for (index_t row = 0; row < rows; ++row) {
    if (adaptive) {
      // The split is not known before the scores are ranked: signatures are
      // built whenever there is an unprotected budget, and the scores are
      // always ranked (their mass is checked even when the budget is 0).
      need_signatures |= rest_of(row) > 0;
      ranks = true;
      adaptive_picks[row] = 0;
    } else {
      need_signatures |= split_of(row).crush > 0;
      ranks |= cfg.rank_importance && split_of(row).importance > 0;
    }
  }
  auto decide_split = [&](const float* importance, index_t row) {
    if (!adaptive) return selection_status::ok;
    const mass_status m =
        mass_cover_count(importance, n, rest_of(row), cfg.crush_mass, ws.order(static_cast<std::size_t>(n) + 1),
                         ws.split_order(static_cast<std::size_t>(n) + 1), adaptive_picks[row]);
    if (m == mass_status::nan) return selection_status::nan_in_scores;
    if (m == mass_status::negative) return selection_status::negative_mass;
    return selection_status::ok;
  };
  const bool shared_importance = !cfg.per_head && ranks;

  for (index_t i = 0; i < rows * n; ++i) flags[i] = flag_evict;

  // 1. Signatures (and, when they come from S itself, the shared importance
  //    sums in the same pass) over the evictable tokens.
  const index_t sig_bits = sig_rows.rows;
  const index_t token_words = signature_words(sig_bits);
  // Distances come from head-major bits where a kernel does (no
  // token-major signatures at all); otherwise block mode concatenates the
  // tokens' signatures.
  const bool head_major = has_head_major_distances<Isa>(cfg.threshold, sig_bits, b);
  std::uint64_t* token_sig = nullptr;
  const std::uint16_t* head_bits = nullptr;
  index_t* bit_counts = nullptr;
  float* token_importance = nullptr;
  if (shared_importance) token_importance = ws.importance(static_cast<std::size_t>(n_tokens) + 1);
  bool s_checked = false;
  if (need_signatures) {
    bit_counts = ws.bit_counts(static_cast<std::size_t>(sig_bits));
    float* fused_sums = separate_signature_rows ? nullptr : token_importance;
    bool built;
    if (head_major) {
      head_bits = build_head_major_median_bits<Isa>(sig_rows, token_begin, token_end, bit_counts, fused_sums, ws);
      built = head_bits != nullptr;
    } else {
      token_sig = ws.signatures(static_cast<std::size_t>(n_tokens * token_words) + 1);
      built = build_signatures<Isa>(sig_rows, token_begin, token_end, cfg.threshold, token_sig, bit_counts,
                                    fused_sums, ws);
    }
    if (!built) {
      return separate_signature_rows ? selection_status::nan_in_signature_scores : selection_status::nan_in_scores;
    }
    s_checked = !separate_signature_rows;
  }
  if (shared_importance && !(need_signatures && !separate_signature_rows)) {
    if (!sum_rows<Isa>(s, token_begin, token_end, token_importance)) return selection_status::nan_in_scores;
    s_checked = true;
  }

  // 2. Importance selection per row.
  float* buf_a = ws.floats_a(static_cast<std::size_t>(n_tokens) + 64);
  float* buf_b = ws.floats_b(static_cast<std::size_t>(n_tokens) + 64);
  if (ranks) {
    if (adaptive) {
      // The mass is an attention mass: every score of E, in every head, is
      // non-negative (so are the sums the selection ranks).
      for (index_t h = 0; h < s.rows; ++h) {
        const float* row = s.row(h);
        for (index_t t = token_begin; t < token_end; ++t) {
          if (row[t] < 0.0f) return selection_status::negative_mass;
        }
      }
    }
    if (!cfg.per_head) {
      const float* importance = token_importance;
      if (b > 1) {
        float* sums = ws.unit_importance(static_cast<std::size_t>(n) + 1);
        block_sums(token_importance, n, b, sums);
        importance = sums;
      }
      if (const auto status = decide_split(importance, 0); status != selection_status::ok) return status;
      if (!mark_top_k<Isa>(importance, n, split_of(0).importance, flags, flag_important, buf_a, buf_b)) {
        return selection_status::nan_in_scores;
      }
    } else {
      float* sums = ws.importance(static_cast<std::size_t>(n) + 1);
      for (index_t h = 0; h < rows; ++h) {
        const float* importance = s.row(h) + token_begin;
        if (b > 1) {
          block_sums(importance, n, b, sums);
          importance = sums;
        }
        if (const auto status = decide_split(importance, h); status != selection_status::ok) return status;
        // Rows without importance picks still get their NaN check here.
        const index_t picks = split_of(h).importance > 0 ? split_of(h).importance : 0;
        if (!mark_top_k<Isa>(importance, n, picks, flags + h * n, flag_important, buf_a, buf_b) ||
            (picks == 0 && simd::any_nan(importance, n))) {
          return selection_status::nan_in_scores;
        }
      }
      s_checked = true;
    }
  }

  // 3. KVCrush representatives among each row's candidates.
  if (need_signatures) {
    const std::uint64_t* unit_sig = token_sig;
    index_t unit_bits = sig_bits;
    index_t unit_words = token_words;
    index_t* counts = bit_counts;
    if (b > 1) {
      unit_bits = sig_bits * b;
      unit_words = signature_words(unit_bits);
      counts = ws.unit_counts(static_cast<std::size_t>(unit_words * 64) + 1);
      const bool mean_counts = cfg.anchor == anchor_mode::mean || cfg.anchor == anchor_mode::inv_mean;
      if (head_bits != nullptr) {
        if (mean_counts) {
          index_t* columns = ws.tile_columns(static_cast<std::size_t>(simd::head_bits_tile_tokens));
          head_major_block_bit_counts<Isa>(head_bits, sig_bits, n, b, columns, counts);
        }
      } else {
        std::uint64_t* block_sig = ws.block_signatures(static_cast<std::size_t>(n * unit_words) + 1);
        unit_sig = concatenate_block_signatures<Isa>(token_sig, token_words, sig_bits, n, b, block_sig);
        if (mean_counts) count_block_bits<Isa>(unit_sig, n, unit_words, counts);
      }
    }
    std::uint64_t* anchor = ws.anchor(static_cast<std::size_t>(unit_words));
    make_anchor(cfg.anchor, unit_bits, counts, n, cfg.seed, anchor);
    // Head-major distances pass through one count per token before the
    // blocks are summed.
    std::uint32_t* dist = ws.distances(static_cast<std::size_t>(head_bits != nullptr ? n_tokens : n) + 1);
    if (head_bits != nullptr) {
      std::uint64_t* patterns =
          ws.anchor_patterns(static_cast<std::size_t>(sig_bits * simd::head_pattern_words));
      head_major_distances<Isa>(head_bits, sig_bits, n, b, anchor, patterns, dist);
    } else {
      simd::hamming_kernel<Isa>::run(unit_sig, n, unit_words, anchor, dist);
    }
    index_t* histogram = ws.histogram(representative_histogram_size(unit_bits));
    index_t* order = ws.order(static_cast<std::size_t>(n) + 1);
    for (index_t h = 0; h < rows; ++h) {
      select_representatives<Isa>(dist, flags + h * n, n, flag_evict, flag_representative, split_of(h).crush,
                                  cfg.representative, unit_bits, histogram, order);
    }
  }

  // 4. Every score the policy was given is checked for NaN, also where the
  //    steps above did not look (protected regions, unused scores).
  if (!s_checked ? has_nan(s, 0, tokens) : (has_nan(s, 0, token_begin) || has_nan(s, token_end, tokens))) {
    return selection_status::nan_in_scores;
  }
  if (separate_signature_rows) {
    const bool checked = need_signatures;
    if (!checked ? has_nan(sig_rows, 0, tokens)
                 : (has_nan(sig_rows, 0, token_begin) || has_nan(sig_rows, token_end, tokens))) {
      return selection_status::nan_in_signature_scores;
    }
  }
  return selection_status::ok;
}

}  // namespace impl

namespace impl {

// The selection behind the checks of everything but the configuration,
// which the caller has validated (validate(cfg)) once already.
template <class Isa>
void select_keep_validated(matrix_view<const float> importance, const keep_config& cfg,
                           vector_view<const index_t> row_rest, matrix_view<index_t> out, vector_view<index_t> counts,
                           selection_scratch& ws, matrix_view<const float> signature_scores) {
  using kvcrush::detail::require;
  const index_t heads = importance.extent(0);
  const index_t tokens = importance.extent(1);
  require(heads >= 1, "select_keep: scores need at least one head (got ", heads, ")");
  const bool separate = signature_scores.data() != nullptr || signature_scores.extent(0) != 0;
  if (separate) {
    require(signature_scores.extent(0) >= 1, "select_keep: signature scores need at least one row");
    require(signature_scores.extent(1) == tokens, "select_keep: signature scores cover ", signature_scores.extent(1),
            " tokens, importance scores ", tokens);
  }
  const index_t rows = cfg.per_head ? heads : 1;
  const index_t b = cfg.block_size;
  const index_t units = tokens / b;
  const index_t all_units = (tokens + b - 1) / b;
  const bool evicts = b == 1 ? tokens > cfg.budget : units > cfg.budget / b;
  const index_t first = cfg.sink / b;
  const index_t last = units - cfg.recent / b;
  const index_t n = evicts ? last - first : 0;
  const bool ragged = row_rest.extent(0) > 0;
  if (ragged) {
    require(cfg.per_head, "select_keep: head-wise budgets need per-head mode");
    require(row_rest.extent(0) == heads, "select_keep: ", row_rest.extent(0), " head budgets for ", heads, " heads");
    for (index_t h = 0; h < heads; ++h) {
      require(row_rest[h] >= 0 && (!evicts || row_rest[h] <= n), "select_keep: head ", h, " budget ", row_rest[h],
              " outside [0, ", n, "] evictable units");
    }
  }
  auto row_count = [&](index_t h) {
    if (!evicts) return all_units;
    return first + (ragged ? row_rest[h] : cfg.budget / b - first - cfg.recent / b) + (all_units - last);
  };
  index_t widest = 0;
  for (index_t h = 0; h < rows; ++h) widest = row_count(h) > widest ? row_count(h) : widest;
  require(out.extent(0) == rows, "select_keep: output needs ", rows, " row(s), has ", out.extent(0));
  require(out.extent(1) >= widest, "select_keep: output rows hold ", out.extent(1), " entries, ", widest, " needed");
  require(counts.extent(0) == 0 || counts.extent(0) == rows, "select_keep: counts need ", rows, " entries");

  const auto s = impl::as_rows(importance, impl::needs_copy(importance)
                                               ? ws.row_copy(static_cast<std::size_t>(heads * tokens))
                                               : nullptr);
  impl::score_rows sig_rows = s;
  if (separate) {
    sig_rows = impl::as_rows(signature_scores,
                             impl::needs_copy(signature_scores)
                                 ? ws.signature_copy(static_cast<std::size_t>(signature_scores.extent(0) * tokens))
                                 : nullptr);
  }
  if (!evicts) {
    require(!impl::has_nan(s, 0, tokens), "select_keep: scores contain NaN");
    require(!separate || !impl::has_nan(sig_rows, 0, tokens), "select_keep: signature scores contain NaN");
    for (index_t h = 0; h < rows; ++h) {
      for (index_t i = 0; i < all_units; ++i) out(h, i) = i;
      if (counts.extent(0)) counts[h] = all_units;
    }
    return;
  }
  std::uint8_t* flags = ws.flags(static_cast<std::size_t>(rows * n) + 1);
  const auto status = impl::run_selection<Isa>(s, sig_rows, separate, cfg, ws, flags, ragged ? row_rest.data() : nullptr);
  if (status == impl::selection_status::nan_in_scores) {
    kvcrush::detail::throw_invalid("select_keep: scores contain NaN (or a token's summed importance is NaN: +inf "
                                   "and -inf in different heads)");
  }
  if (status == impl::selection_status::nan_in_signature_scores) {
    kvcrush::detail::throw_invalid("select_keep: signature scores contain NaN");
  }
  if (status == impl::selection_status::negative_mass) {
    kvcrush::detail::throw_invalid("select_keep: the adaptive KVCrush split needs non-negative importance scores "
                                   "(an attention mass) over the evictable tokens, and one is negative; signed "
                                   "scores (knorm, keydiff, rkv) take the fixed split");
  }
  for (index_t h = 0; h < rows; ++h) {
    const std::uint8_t* row_flags = flags + h * n;
    index_t j = 0;
    for (index_t i = 0; i < first; ++i) out(h, j++) = i;
    static_assert(impl::flag_evict == 0, "kept_positions keeps the nonzero flags");
    if (out.stride(1) == 1) {
      j += simd::kept_positions<Isa>(row_flags, n, first, out.data() + h * out.stride(0) + j);
    } else {
      for (index_t i = 0; i < n; ++i) {
        if (row_flags[i] != impl::flag_evict) out(h, j++) = first + i;
      }
    }
    for (index_t i = last; i < all_units; ++i) out(h, j++) = i;
    if (counts.extent(0)) counts[h] = j;
  }
}

template <class Isa>
void select_keep_checked(matrix_view<const float> importance, const keep_config& cfg,
                         vector_view<const index_t> row_rest, matrix_view<index_t> out, vector_view<index_t> counts,
                         selection_scratch& ws, matrix_view<const float> signature_scores) {
  validate(cfg);
  select_keep_validated<Isa>(importance, cfg, row_rest, out, counts, ws, signature_scores);
}

}  // namespace impl

// Selects the keep set(s) of one layer.
//
// importance: per-KV-head scores S, (heads, tokens). signature_scores: the
// rows the signatures come from, (signature heads, tokens); leave empty to
// use S. out: (per_head ? heads : 1, >= keep_count(cfg, tokens)); row h gets
// the sorted positions (token mode) or block indices (block mode) kept for
// head h. Returns keep_count(cfg, tokens).
//
// Throws std::invalid_argument on bad shapes, configuration or NaN, before
// writing anything to out.
template <class Isa = isa::active>
index_t select_keep(matrix_view<const float> importance, const keep_config& cfg, matrix_view<index_t> out,
                    selection_scratch& ws, matrix_view<const float> signature_scores = {}) {
  impl::select_keep_checked<Isa>(importance, cfg, {}, out, {}, ws, signature_scores);
  return keep_count(cfg, importance.extent(1));
}

// Per-head mode with head-wise budgets (AdaKV): head h keeps the protected
// units plus rest_budgets[h] evictable units (split between importance and
// KVCrush by crush_fraction). counts[h] receives the length of row h of out.
template <class Isa = isa::active>
void select_keep_ragged(matrix_view<const float> importance, const keep_config& cfg,
                        vector_view<const index_t> rest_budgets, matrix_view<index_t> out, vector_view<index_t> counts,
                        selection_scratch& ws, matrix_view<const float> signature_scores = {}) {
  kvcrush::detail::require(rest_budgets.extent(0) >= 1, "select_keep_ragged: one budget per head is required");
  kvcrush::detail::require(counts.extent(0) == importance.extent(0), "select_keep_ragged: counts need one entry per head");
  impl::select_keep_checked<Isa>(importance, cfg, rest_budgets, out, counts, ws, signature_scores);
}

// Shared-mode convenience: one keep set into a vector.
template <class Isa = isa::active>
index_t select_keep(matrix_view<const float> importance, const keep_config& cfg, vector_view<index_t> out,
                    selection_scratch& ws, matrix_view<const float> signature_scores = {}) {
  kvcrush::detail::require(!cfg.per_head, "select_keep: per-head mode needs a (heads, budget) output");
  return select_keep<Isa>(importance, cfg, matrix_view<index_t>(out.data(), {1, out.extent(0)}, {0, out.stride(0)}),
                          ws, signature_scores);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
