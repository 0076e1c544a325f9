// Keep-set selection over fuzzer-chosen shapes, budgets, modes, options and
// scores (NaN, +-inf, -0, ties), checked differentially: the scalar kernels
// and the best ISA this TU is compiled for (isa::active; the build gives it
// the build machine's best flags) must write identical outputs or both
// refuse with the same std::invalid_argument, leaving the output untouched.
// Small valid cases are also checked against the plain SPEC reference
// (tests/spec_reference.hpp).
//
// Three entry points: select_keep (shared and per head, optional separate
// signature rows), select_keep_ragged (head-wise budgets), and the runtime
// policy select(policy_config, ...) with precomputed, streaming, random and
// full policies and their +adakv/+kvcrush modifiers.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcrush/kvcrush.hpp"
#include "spec_reference.hpp"

namespace {

using kvcrush::index_t;
namespace isa = kvcrush::isa;

constexpr index_t max_heads = 70;
constexpr index_t max_tokens = 4096;

// Score values: a small palette, so that ties are common, with the special
// values the selection must handle (or refuse) the same way on every ISA.
std::vector<float> palette(kvcrush_fuzz::reader& in) {
  const int n = static_cast<int>(in.in_range(1, 12));
  std::vector<float> p;
  for (int i = 0; i < n; ++i) {
    switch (in.byte() % 10) {
      case 0: p.push_back(std::numeric_limits<float>::quiet_NaN()); break;
      case 1: p.push_back(std::numeric_limits<float>::infinity()); break;
      case 2: p.push_back(-std::numeric_limits<float>::infinity()); break;
      case 3: p.push_back(-0.0f); break;
      case 4: p.push_back(std::numeric_limits<float>::denorm_min()); break;
      case 5: p.push_back(std::numeric_limits<float>::max()); break;
      case 6: p.push_back(in.f32()); break;
      default: p.push_back(static_cast<float>(in.in_range(-8, 8)) * 0.25f); break;
    }
  }
  return p;
}

// rows x tokens values from the palette: indices from the input while it
// lasts, then from a generator seeded by it.
std::vector<float> fill(kvcrush_fuzz::reader& in, const std::vector<float>& p, index_t rows, index_t tokens) {
  std::vector<float> out(static_cast<std::size_t>(rows * tokens));
  std::uint32_t state = in.u32() | 1u;
  for (auto& v : out) {
    std::size_t pick;
    if (in.remaining() > 0) {
      pick = in.byte();
    } else {
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      pick = state >> 8;
    }
    v = p[pick % p.size()];
  }
  return out;
}

index_t small_count(kvcrush_fuzz::reader& in, index_t limit) {
  // Mostly small, sometimes anything up to the limit.
  const std::uint8_t b = in.byte();
  const index_t v = b < 224 ? b : in.in_range(0, limit);
  return v < limit ? v : limit;
}

struct outcome {
  bool refused = false;
  std::string error;
  std::vector<index_t> positions, counts;
  bool operator==(const outcome& o) const {
    return refused == o.refused && error == o.error && positions == o.positions && counts == o.counts;
  }
};

template <class F>
outcome run(std::size_t positions, std::size_t counts, F&& f) {
  outcome o;
  // Sentinels: entries a call must not write stay -7, and a refusing call
  // must not write at all.
  o.positions.assign(positions, -7);
  o.counts.assign(counts, -7);
  try {
    f(o.positions.data(), o.counts.data());
  } catch (const std::invalid_argument& e) {
    o.refused = true;
    o.error = e.what();
    for (auto v : o.positions) KVCRUSH_FUZZ_CHECK(v == -7);
    for (auto v : o.counts) KVCRUSH_FUZZ_CHECK(v == -7);
  }
  return o;
}

// Mean mode is specified for values away from the mean only (SPEC 4.1):
// sums in a different order may round the mean to either side of a value
// near it, and huge finite values may overflow in one order only.
bool mean_is_ambiguous(const std::vector<float>& rows, index_t row_count, index_t tokens, index_t begin,
                       index_t end) {
  // Policies that select nothing (full) accept any budget: clamp.
  begin = begin < 0 ? 0 : begin;
  end = end > tokens ? tokens : end;
  if (end <= begin) return false;
  for (index_t h = 0; h < row_count; ++h) {
    const float* r = rows.data() + h * tokens;
    double sum = 0, largest = 0;
    for (index_t t = begin; t < end; ++t) {
      if (!std::isfinite(r[t])) continue;
      sum += r[t];
      largest = std::fmax(largest, std::fabs(r[t]));
    }
    if (largest > 1e30) return true;
    const double mean = sum / static_cast<double>(end - begin);
    for (index_t t = begin; t < end; ++t) {
      if (std::isfinite(r[t]) && std::fabs(r[t] - mean) <= 1e-3 * largest) return true;
    }
  }
  return false;
}

spec::Rows as_rows(const std::vector<float>& flat, index_t rows, index_t tokens) {
  spec::Rows out(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) out[r].assign(flat.begin() + r * tokens, flat.begin() + (r + 1) * tokens);
  return out;
}

kvcrush::keep_config fuzz_config(kvcrush_fuzz::reader& in, index_t tokens) {
  kvcrush::keep_config c;
  const index_t sizes[] = {1, 1, 1, 1, 2, 3, 4, 8, 16};
  const std::uint8_t b = in.byte();
  c.block_size = b < 250 ? sizes[b % 9] : in.in_range(-1, 70);
  const bool aligned = in.byte() % 8 != 0;
  const index_t unit = aligned && c.block_size > 0 ? c.block_size : 1;
  c.sink = unit * small_count(in, tokens + 8);
  c.recent = unit * small_count(in, tokens + 8);
  c.budget = aligned ? c.sink + c.recent + unit * small_count(in, tokens + 8) : small_count(in, tokens + 8);
  if (in.byte() == 255) c.sink = -c.sink - 1;  // a negative value now and then
  const double fractions[] = {0.0, 0.0, 0.1, 0.25, 0.5, 0.75, 1.0};
  const std::uint8_t f = in.byte();
  if (f < 250) {
    c.crush_fraction = fractions[f % 7];
  } else {
    c.crush_fraction = static_cast<double>(in.f32());  // anything, NaN and out of range included
  }
  c.anchor = static_cast<kvcrush::anchor_mode>(in.byte() % 6);
  c.representative = static_cast<kvcrush::representative_rule>(in.byte() % 4);
  c.threshold = in.flag() ? kvcrush::threshold_mode::mean : kvcrush::threshold_mode::median;
  c.seed = in.u32();
  c.per_head = in.flag();
  c.rank_importance = in.byte() % 6 != 0;
  return c;
}

// select_keep or select_keep_ragged.
void fuzz_select_keep(kvcrush_fuzz::reader& in, kvcrush::workspace& ws_scalar, kvcrush::workspace& ws_best) {
  const index_t heads = in.in_range(1, max_heads);
  const index_t tokens = small_count(in, max_tokens);
  const kvcrush::keep_config cfg = fuzz_config(in, tokens);
  const bool separate = in.byte() % 4 == 0;
  const index_t sig_heads = separate ? in.in_range(1, 2 * max_heads) : 0;
  const bool ragged = cfg.per_head && in.byte() % 3 == 0;
  std::vector<index_t> rest;
  if (ragged) {
    for (index_t h = 0; h < heads; ++h) rest.push_back(small_count(in, tokens + 2) - (in.byte() == 255 ? 1 : 0));
  }
  const std::vector<float> p = palette(in);
  const std::vector<float> scores = fill(in, p, heads, tokens);
  const std::vector<float> sig = separate ? fill(in, p, sig_heads, tokens) : std::vector<float>{};

  const index_t rows = cfg.per_head ? heads : 1;
  // Room for the whole sequence plus two: the width check passes and writes
  // past the keep set would show in the sentinels.
  const index_t width = tokens + 2;
  const auto importance = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const kvcrush::matrix_view<const float> signature_rows =
      separate ? kvcrush::make_matrix_view(sig.data(), sig_heads, tokens) : kvcrush::matrix_view<const float>{};
  auto select = [&](auto tag, kvcrush::workspace& ws) {
    using Isa = decltype(tag);
    return run(static_cast<std::size_t>(rows * width), static_cast<std::size_t>(rows),
               [&](index_t* positions, index_t* counts) {
                 const auto out = kvcrush::make_matrix_view(positions, rows, width);
                 if (ragged) {
                   kvcrush::select_keep_ragged<Isa>(importance, cfg,
                                                    kvcrush::vector_view<const index_t>(rest.data(), {heads}, {1}),
                                                    out, kvcrush::vector_view<index_t>(counts, {rows}, {1}), ws,
                                                    signature_rows);
                 } else {
                   const index_t n = kvcrush::select_keep<Isa>(importance, cfg, out, ws, signature_rows);
                   for (index_t r = 0; r < rows; ++r) counts[r] = n;
                 }
               });
  };
  const outcome scalar = select(isa::scalar{}, ws_scalar);
  const outcome best = select(isa::active{}, ws_best);

  const index_t b = cfg.block_size > 0 ? cfg.block_size : 1;
  const index_t begin = cfg.sink, end = (tokens / b) * b - cfg.recent;
  if (!scalar.refused && cfg.threshold == kvcrush::threshold_mode::mean &&
      mean_is_ambiguous(separate ? sig : scores, separate ? sig_heads : heads, tokens, begin, end)) {
    return;
  }
  if (!(scalar == best)) {
    std::fprintf(stderr, "scalar %s, %s %s\n", scalar.refused ? scalar.error.c_str() : "selects",
                 std::string(isa::active::name).c_str(), best.refused ? best.error.c_str() : "selects");
  }
  KVCRUSH_FUZZ_CHECK(scalar == best);
  if (scalar.refused || ragged || heads * tokens > 8192) return;

  // The SPEC reference, for what was accepted.
  const auto expected = spec::keep(as_rows(scores, heads, tokens),
                                   separate ? as_rows(sig, sig_heads, tokens) : as_rows(scores, heads, tokens), cfg);
  for (index_t r = 0; r < rows; ++r) {
    const index_t n = scalar.counts[r];
    const std::vector<long> got(scalar.positions.begin() + r * width, scalar.positions.begin() + r * width + n);
    KVCRUSH_FUZZ_CHECK(got == expected[static_cast<std::size_t>(r)]);
    KVCRUSH_FUZZ_CHECK(scalar.positions[static_cast<std::size_t>(r * width + n)] == -7);
  }
}

// The runtime policy select().
void fuzz_policy_select(kvcrush_fuzz::reader& in, kvcrush::workspace& ws_scalar, kvcrush::workspace& ws_best) {
  static const char* const names[] = {"precomputed", "streaming", "random", "full", "precomputed+kvcrush",
                                      "precomputed+adakv", "precomputed+adakv+kvcrush", "streaming+kvcrush",
                                      "random+adakv+kvcrush"};
  kvcrush::policy_config cfg = kvcrush::policy_config::parse(names[in.byte() % 9]);
  const index_t heads = in.in_range(1, max_heads);
  const index_t tokens = small_count(in, max_tokens);
  const kvcrush::keep_config k = fuzz_config(in, tokens);
  cfg.crush.fraction = k.crush_fraction;
  cfg.crush.anchor = k.anchor;
  cfg.crush.representative = k.representative;
  cfg.crush.threshold = k.threshold;
  cfg.crush.seed = k.seed;
  cfg.seed = k.seed;
  cfg.adakv_alpha = static_cast<double>(in.in_range(0, 4)) * 0.25;
  cfg.layout.per_head = cfg.layout.per_head || k.per_head;
  cfg.layout.block_size = k.block_size;
  const kvcrush::layer_budget budget{k.budget, k.sink, k.recent};
  const std::vector<float> p = palette(in);
  const std::vector<float> scores = fill(in, p, heads, tokens);

  kvcrush::layer_inputs inputs;
  inputs.kv_heads = heads;
  inputs.tokens = tokens;
  inputs.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const index_t rows = cfg.layout.per_head ? heads : 1;
  const index_t width = tokens + 2;
  auto select = [&](auto tag, kvcrush::workspace& ws) {
    using Isa = decltype(tag);
    return run(static_cast<std::size_t>(rows * width), static_cast<std::size_t>(rows),
               [&](index_t* positions, index_t* counts) {
                 kvcrush::keep_sets out{kvcrush::make_matrix_view(positions, rows, width),
                                        kvcrush::vector_view<index_t>(counts, {rows}, {1})};
                 kvcrush::select<Isa>(cfg, inputs, budget, out, ws);
               });
  };
  const outcome scalar = select(isa::scalar{}, ws_scalar);
  const outcome best = select(isa::active{}, ws_best);
  const index_t b = k.block_size > 0 ? k.block_size : 1;
  if (!scalar.refused && k.threshold == kvcrush::threshold_mode::mean &&
      mean_is_ambiguous(scores, heads, tokens, k.sink, (tokens / b) * b - k.recent)) {
    return;
  }
  if (!(scalar == best)) {
    std::fprintf(stderr, "policy %s: scalar %s, %s %s\n", cfg.name().c_str(),
                 scalar.refused ? scalar.error.c_str() : "selects", std::string(isa::active::name).c_str(),
                 best.refused ? best.error.c_str() : "selects");
  }
  KVCRUSH_FUZZ_CHECK(scalar == best);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // One workspace per ISA, kept across inputs as an engine keeps it: stale
  // contents from earlier inputs must not change a result.
  static kvcrush::workspace ws_scalar, ws_best;
  kvcrush_fuzz::reader in(data, size);
  if (in.byte() % 4 == 3) {
    fuzz_policy_select(in, ws_scalar, ws_best);
  } else {
    fuzz_select_keep(in, ws_scalar, ws_best);
  }
  return 0;
}
