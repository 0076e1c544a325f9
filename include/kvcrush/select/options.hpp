// The knobs of KVCrush (SPEC section 4) and their names, as used by configs
// and the CLI.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "kvcrush/enum_names.hpp"

namespace kvcrush {

// How a head decides a token's bit (SPEC 4.1).
enum class threshold_mode {
  median,  // bit set for the top floor(|E|/2) tokens of the head (exact, ties by position)
  mean,    // bit set when the score is above the head's mean over E
};

// The reference vector distances are measured from (SPEC 4.2).
enum class anchor_mode { mean, inv_mean, zeros, ones, alternating, random };

// Which member of each distance bucket is kept (SPEC 4.3).
enum class representative_rule { bucket_center, bucket_start, linspace, stride };

// How the unprotected budget is split between the importance selection and
// the KVCrush representatives (docs/SEMANTICS.md, "Adaptive KVCrush split").
enum class crush_split {
  fixed,     // floor(crush_fraction * B_rest) representatives (SPEC 1)
  adaptive,  // importance keeps the fewest units covering crush_mass of the
             // evictable score mass (at most B_rest); representatives get the rest
};

namespace detail {

inline constexpr std::array<std::pair<std::string_view, threshold_mode>, 2> threshold_names{{
    {"median", threshold_mode::median},
    {"mean", threshold_mode::mean},
}};

inline constexpr std::array<std::pair<std::string_view, anchor_mode>, 6> anchor_names{{
    {"mean", anchor_mode::mean},
    {"inv_mean", anchor_mode::inv_mean},
    {"zeros", anchor_mode::zeros},
    {"ones", anchor_mode::ones},
    {"alternating", anchor_mode::alternating},
    {"random", anchor_mode::random},
}};

inline constexpr std::array<std::pair<std::string_view, representative_rule>, 4> representative_names{{
    {"bucket_center", representative_rule::bucket_center},
    {"bucket_start", representative_rule::bucket_start},
    {"linspace", representative_rule::linspace},
    {"stride", representative_rule::stride},
}};

inline constexpr std::array<std::pair<std::string_view, crush_split>, 2> crush_split_names{{
    {"fixed", crush_split::fixed},
    {"adaptive", crush_split::adaptive},
}};

}  // namespace detail

inline threshold_mode parse_threshold_mode(std::string_view text) {
  return detail::parse_enum(text, detail::threshold_names, "threshold mode");
}
inline anchor_mode parse_anchor_mode(std::string_view text) {
  return detail::parse_enum(text, detail::anchor_names, "anchor");
}
inline representative_rule parse_representative_rule(std::string_view text) {
  return detail::parse_enum(text, detail::representative_names, "representative rule");
}
inline crush_split parse_crush_split(std::string_view text) {
  return detail::parse_enum(text, detail::crush_split_names, "crush split");
}

inline std::string_view to_string(threshold_mode m) { return detail::enum_name(m, detail::threshold_names); }
inline std::string_view to_string(anchor_mode m) { return detail::enum_name(m, detail::anchor_names); }
inline std::string_view to_string(representative_rule r) {
  return detail::enum_name(r, detail::representative_names);
}
inline std::string_view to_string(crush_split s) { return detail::enum_name(s, detail::crush_split_names); }

}  // namespace kvcrush
