// Error conventions: invalid input is reported at the API boundary with a
// std::invalid_argument whose message starts with "kvcrush: " and names the
// offending argument; kernels behind a checked boundary are noexcept.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "kvcrush/config.hpp"

namespace kvcrush::detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <class... Parts>
[[noreturn]] void throw_invalid(const Parts&... parts) {
  throw std::invalid_argument(concat("kvcrush: ", parts...));
}

template <class... Parts>
void require(bool condition, const Parts&... parts) {
  if (KVCRUSH_UNLIKELY(!condition)) throw_invalid(parts...);
}

}  // namespace kvcrush::detail
