// Names of enumerators as configs and the CLI spell them: one table per
// enum, parsed and printed by these two functions so that the names and the
// error message listing them never drift apart.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "kvcrush/error.hpp"

namespace kvcrush {
namespace detail {

template <class Enum, std::size_t N>
Enum parse_enum(std::string_view text, const std::array<std::pair<std::string_view, Enum>, N>& names,
                std::string_view what) {
  for (const auto& [name, value] : names) {
    if (text == name) return value;
  }
  std::string known;
  for (const auto& [name, value] : names) {
    if (!known.empty()) known += ", ";
    known += name;
  }
  throw_invalid("unknown ", what, " '", text, "' (expected one of: ", known, ")");
}

template <class Enum, std::size_t N>
std::string_view enum_name(Enum value, const std::array<std::pair<std::string_view, Enum>, N>& names) {
  for (const auto& [name, v] : names) {
    if (v == value) return name;
  }
  return "?";
}

}  // namespace detail
}  // namespace kvcrush
