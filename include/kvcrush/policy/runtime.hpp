// The runtime facade: the same pipelines as policy/policies.hpp, chosen by a
// config (struct or name) at run time, for engines with a config file and
// for the CLI and evaluation tools.
//
// Names: a base policy, optionally followed by "+adakv" and/or "+kvcrush":
//   full streaming random h2o snapkv pyramidkv tova knorm precomputed
//   keydiff expected_attention rkv
//   e.g. "snapkv", "h2o+kvcrush", "snapkv+adakv+kvcrush", "pyramidkv+kvcrush",
//   "keydiff+kvcrush", "rkv+adakv".
// "adakv" alone means "snapkv+adakv" (Ada-SnapKV, as in the AdaKV paper).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvcrush/error.hpp"
#include "kvcrush/policy/budgets.hpp"
#include "kvcrush/policy/policies.hpp"
#include "kvcrush/policy/select.hpp"

namespace kvcrush {

enum class base_policy {
  full,
  streaming,
  random,
  h2o,
  snapkv,
  pyramidkv,
  tova,
  knorm,
  precomputed,
  keydiff,
  expected_attention,
  rkv
};

namespace detail {
inline constexpr std::array<std::pair<std::string_view, base_policy>, 12> base_policy_names{{
    {"full", base_policy::full},
    {"streaming", base_policy::streaming},
    {"random", base_policy::random},
    {"h2o", base_policy::h2o},
    {"snapkv", base_policy::snapkv},
    {"pyramidkv", base_policy::pyramidkv},
    {"tova", base_policy::tova},
    {"knorm", base_policy::knorm},
    {"precomputed", base_policy::precomputed},
    {"keydiff", base_policy::keydiff},
    {"expected_attention", base_policy::expected_attention},
    {"rkv", base_policy::rkv},
}};
}  // namespace detail

inline std::string_view to_string(base_policy p) { return detail::enum_name(p, detail::base_policy_names); }

struct policy_config {
  base_policy base = base_policy::snapkv;
  bool adakv = false;
  double adakv_alpha = 0.2;
  bool kvcrush = false;
  crush_options crush{};
  window_options window{};
  bool h2o_normalised = false;
  std::uint64_t seed = 0;  // random policy
  index_t pyramid_beta = 20;
  expected_attention_options expected_attention{};  // expected_attention
  rkv_options rkv = rkv_policy_defaults;            // rkv (importance from `window`)
  selection_layout layout{};

  // "snapkv+kvcrush" etc. (see the header comment); other fields keep their
  // defaults, except that "rkv" sets window to policy::rkv's (max pooling,
  // kernel 7: R-KV's importance).
  static policy_config parse(std::string_view name) {
    policy_config cfg;
    std::string_view rest = name;
    const auto plus = rest.find('+');
    const std::string_view head = rest.substr(0, plus);
    if (head == "adakv") {
      cfg.base = base_policy::snapkv;
      cfg.adakv = true;
    } else {
      cfg.base = detail::parse_enum(head, detail::base_policy_names, "policy");
    }
    if (cfg.base == base_policy::rkv) cfg.window = rkv_window_defaults;
    rest = plus == std::string_view::npos ? std::string_view{} : rest.substr(plus + 1);
    while (!rest.empty()) {
      const auto next = rest.find('+');
      const std::string_view part = rest.substr(0, next);
      if (part == "kvcrush") {
        cfg.kvcrush = true;
      } else if (part == "adakv") {
        cfg.adakv = true;
      } else {
        detail::throw_invalid("unknown policy modifier '", part, "' in '", name, "' (expected +adakv or +kvcrush)");
      }
      rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    }
    if (cfg.adakv) cfg.layout.per_head = true;
    detail::require(!(cfg.base == base_policy::full && (cfg.kvcrush || cfg.adakv)),
                    "policy 'full' keeps everything and takes no modifiers");
    return cfg;
  }

  std::string name() const {
    std::string out(to_string(base));
    if (adakv) out += "+adakv";
    if (kvcrush) out += "+kvcrush";
    return out;
  }
};

// Base policies whose scores are signed (not an attention mass): the
// adaptive KVCrush split is refused for them up front.
inline bool signed_scores(base_policy p) noexcept {
  return p == base_policy::knorm || p == base_policy::keydiff || p == base_policy::rkv;
}

// Throws std::invalid_argument when the KVCrush options cannot work with
// the base policy (checked by select() before any scoring).
inline void check_crush_options(const policy_config& cfg) {
  if (!cfg.kvcrush || cfg.crush.split != crush_split::adaptive) return;
  detail::require(!signed_scores(cfg.base), "the adaptive KVCrush split needs non-negative scores (an attention "
                  "mass); policy '", to_string(cfg.base), "' scores are signed: use the fixed split");
  detail::require(cfg.base != base_policy::streaming,
                  "the adaptive KVCrush split needs importance scores; 'streaming' ranks no tokens");
  detail::require(cfg.crush.mass > 0.0 && cfg.crush.mass <= 1.0, "crush_mass must be in (0, 1] (got ",
                  cfg.crush.mass, ")");
}

// Per-layer budgets for this policy: PyramidKV's pyramid, uniform otherwise.
inline std::vector<index_t> layer_budgets(const policy_config& cfg, index_t budget, index_t window, index_t layers,
                                          index_t tokens) {
  if (cfg.base == base_policy::pyramidkv) return pyramid_budgets(budget, window, layers, tokens, cfg.pyramid_beta);
  return uniform_budgets(budget, layers);
}

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class Isa, class Base>
void select_wrapped(const policy_config& cfg, const Base& base, const layer_inputs& in, const layer_budget& budget,
                    keep_sets out, workspace& ws) {
  if (cfg.adakv && cfg.kvcrush) {
    select<Isa>(policy::with_kvcrush<policy::adakv<Base>>{{base, cfg.adakv_alpha}, cfg.crush}, in, budget,
                cfg.layout, out, ws);
  } else if (cfg.adakv) {
    select<Isa>(policy::adakv<Base>{base, cfg.adakv_alpha}, in, budget, cfg.layout, out, ws);
  } else if (cfg.kvcrush) {
    select<Isa>(policy::with_kvcrush<Base>{base, cfg.crush}, in, budget, cfg.layout, out, ws);
  } else {
    select<Isa>(base, in, budget, cfg.layout, out, ws);
  }
}

}  // namespace impl

// Runs the configured policy on one layer (see select() in policy/select.hpp).
template <class Isa = isa::active>
void select(const policy_config& cfg, const layer_inputs& in, const layer_budget& budget, keep_sets out,
            workspace& ws) {
  check_crush_options(cfg);
  switch (cfg.base) {
    case base_policy::full: {
      const index_t rows = cfg.layout.per_head ? in.kv_heads : 1;
      const index_t b = cfg.layout.block_size;
      // Checked here: 'full' skips the selection's own checks, and the
      // unit count divides by the block size (fuzzing found block_size 0).
      kvcrush::detail::require(b >= 1 && in.tokens >= 0, "select: block_size must be >= 1 and tokens >= 0 (got ",
                               b, " and ", in.tokens, ")");
      const index_t units = (in.tokens + b - 1) / b;
      kvcrush::detail::require(out.counts.extent(0) == rows && out.positions.extent(0) == rows &&
                                   out.positions.extent(1) >= units,
                               "select: output too small for the full cache");
      for (index_t r = 0; r < rows; ++r) {
        for (index_t i = 0; i < units; ++i) out.positions(r, i) = i;
        out.counts[r] = units;
      }
      return;
    }
    case base_policy::streaming: return impl::select_wrapped<Isa>(cfg, policy::streaming_llm{}, in, budget, out, ws);
    case base_policy::random: return impl::select_wrapped<Isa>(cfg, policy::random{cfg.seed}, in, budget, out, ws);
    case base_policy::h2o: return impl::select_wrapped<Isa>(cfg, policy::h2o{cfg.h2o_normalised}, in, budget, out, ws);
    case base_policy::snapkv: return impl::select_wrapped<Isa>(cfg, policy::snapkv{cfg.window}, in, budget, out, ws);
    case base_policy::pyramidkv: {
      policy::pyramidkv p;
      p.window = cfg.window;
      p.beta = cfg.pyramid_beta;
      return impl::select_wrapped<Isa>(cfg, p, in, budget, out, ws);
    }
    case base_policy::tova: return impl::select_wrapped<Isa>(cfg, policy::tova{}, in, budget, out, ws);
    case base_policy::knorm: return impl::select_wrapped<Isa>(cfg, policy::key_norm{}, in, budget, out, ws);
    case base_policy::precomputed:
      return impl::select_wrapped<Isa>(cfg, policy::precomputed{}, in, budget, out, ws);
    case base_policy::keydiff: return impl::select_wrapped<Isa>(cfg, policy::keydiff{}, in, budget, out, ws);
    case base_policy::expected_attention:
      return impl::select_wrapped<Isa>(cfg, policy::expected_attention{cfg.expected_attention}, in, budget, out, ws);
    case base_policy::rkv:
      return impl::select_wrapped<Isa>(cfg, policy::rkv{cfg.rkv, cfg.window}, in, budget, out, ws);
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
