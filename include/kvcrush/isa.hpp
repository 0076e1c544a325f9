// Instruction-set tags. Every kernel is a template on one of these, so a
// translation unit built with AVX-512 flags and one built for baseline x86-64
// instantiate different symbols and can be linked into one binary safely:
// the linker never merges an AVX-512 body into the scalar path.
#pragma once

#include <string_view>
#include <type_traits>

#include "kvcrush/config.hpp"

namespace kvcrush::isa {

struct scalar {
  static constexpr int level = KVCRUSH_ISA_LEVEL_scalar;
  static constexpr std::string_view name = "scalar";
};

struct avx2 {
  static constexpr int level = KVCRUSH_ISA_LEVEL_avx2;
  static constexpr std::string_view name = "avx2";
};

// AVX-512 F/BW/VL/DQ plus VPOPCNTDQ (Ice Lake, Zen 4 and later).
struct avx512 {
  static constexpr int level = KVCRUSH_ISA_LEVEL_avx512;
  static constexpr std::string_view name = "avx512";
};

template <class Isa>
inline constexpr bool is_tag_v = std::is_same_v<Isa, scalar> || std::is_same_v<Isa, avx2> ||
                                 std::is_same_v<Isa, avx512>;

// The best tag this translation unit may use: what its compiler flags allow,
// capped by KVCRUSH_MAX_ISA.
#if KVCRUSH_ISA_LEVEL == KVCRUSH_ISA_LEVEL_avx512
using active = avx512;
#elif KVCRUSH_ISA_LEVEL == KVCRUSH_ISA_LEVEL_avx2
using active = avx2;
#else
using active = scalar;
#endif

// True when kernels for Isa can be compiled in this translation unit (its
// intrinsics are enabled by the compiler flags), regardless of the cap.
template <class Isa>
inline constexpr bool compiled_v = Isa::level <= KVCRUSH_COMPILER_ISA_LEVEL;

// Runtime check, for tests and benchmarks that must skip when the machine
// lacks an instruction set. Library code never dispatches on it.
template <class Isa>
bool cpu_supports() noexcept {
  static_assert(is_tag_v<Isa>, "not a kvcrush ISA tag");
  if constexpr (std::is_same_v<Isa, scalar>) {
    return true;
  } else {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
    if constexpr (std::is_same_v<Isa, avx2>) {
      return has_avx2;
    } else {
      bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vpopcntdq");
      // Optional extensions count only when this translation unit was compiled
      // to use them: the kernels then execute them unconditionally.
#if defined(__AVX512VBMI__)
      has_avx512 = has_avx512 && __builtin_cpu_supports("avx512vbmi");
#endif
#if defined(__GFNI__)
      has_avx512 = has_avx512 && __builtin_cpu_supports("gfni");
#endif
      return has_avx512;
    }
#else
    return false;
#endif
  }
}

// Name of the tag in use in the calling translation unit ("scalar", "avx2",
// "avx512"). A template so that each translation unit gets its own answer.
template <class Isa = active>
constexpr std::string_view name() noexcept {
  return Isa::name;
}

}  // namespace kvcrush::isa
