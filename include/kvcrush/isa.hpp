// Instruction-set tags. Every kernel is a template on one of these, so a
// translation unit built with AVX-512 flags and one built for baseline x86-64
// instantiate different symbols and can be linked into one binary safely:
// the linker never merges an AVX-512 body into the scalar path.
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define KVCRUSH_HAS_CPUID 1
#else
#define KVCRUSH_HAS_CPUID 0
#endif

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
// lacks an instruction set. Header-only code never dispatches on it; run-time
// dispatch (kvcrush/dispatch/dispatch.hpp) uses detected_level() below.
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

// ---- Run-time detection ------------------------------------------------------
//
// What the CPU and the operating system support, read from CPUID and XGETBV.
// The decision is a pure function of the words read (best_level(decode(w))),
// so that it can be tested with synthetic words. The compile-time tags above
// do not depend on it; kvcrush/dispatch/dispatch.hpp uses it to choose its
// kernels once at run time.

// The levels as run-time values (the tags' level constants).
enum class level : int {
  scalar = KVCRUSH_ISA_LEVEL_scalar,
  avx2 = KVCRUSH_ISA_LEVEL_avx2,
  avx512 = KVCRUSH_ISA_LEVEL_avx512,
};

constexpr std::string_view to_string(level l) noexcept {
  return l == level::avx512 ? "avx512" : l == level::avx2 ? "avx2" : "scalar";
}

// "scalar", "avx2", "avx512" -> the level; false for anything else.
constexpr bool parse_level(std::string_view text, level& out) noexcept {
  for (level l : {level::scalar, level::avx2, level::avx512}) {
    if (text == to_string(l)) {
      out = l;
      return true;
    }
  }
  return false;
}

// The raw words the decision reads.
struct cpuid_words {
  std::uint32_t max_leaf = 0;   // CPUID.0:EAX
  std::uint32_t leaf1_ecx = 0;  // CPUID.1:ECX (FMA, POPCNT, OSXSAVE, AVX)
  std::uint32_t leaf7_ebx = 0;  // CPUID.(7,0):EBX (AVX2, BMI2, AVX-512 F/DQ/BW/VL)
  std::uint32_t leaf7_ecx = 0;  // CPUID.(7,0):ECX (VBMI, GFNI, VPOPCNTDQ)
  std::uint64_t xcr0 = 0;       // XGETBV(0), read only when OSXSAVE is set
};

// Bit positions (Intel SDM vol. 2A, CPUID; vol. 1 13.3, XCR0).
namespace cpuid_bit {
inline constexpr std::uint32_t fma = 1u << 12, popcnt = 1u << 23, osxsave = 1u << 27, avx = 1u << 28;  // leaf 1 ECX
inline constexpr std::uint32_t avx2 = 1u << 5, bmi2 = 1u << 8, avx512f = 1u << 16, avx512dq = 1u << 17,
                               avx512bw = 1u << 30, avx512vl = 1u << 31;  // leaf 7 EBX
inline constexpr std::uint32_t avx512vbmi = 1u << 1, gfni = 1u << 8, avx512vpopcntdq = 1u << 14;  // leaf 7 ECX
inline constexpr std::uint64_t xcr0_ymm = 0x6;    // SSE and AVX state
inline constexpr std::uint64_t xcr0_zmm = 0xe0;   // opmask, ZMM0-15 upper halves, ZMM16-31
}  // namespace cpuid_bit

struct cpu_features {
  bool fma = false, popcnt = false, avx = false, avx2 = false, bmi2 = false;
  bool avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false, avx512vpopcntdq = false;
  bool avx512vbmi = false, gfni = false;
  bool os_ymm = false;  // the OS saves YMM state (XCR0 bits 1, 2)
  bool os_zmm = false;  // the OS saves opmask and ZMM state (XCR0 bits 5, 6, 7)
};

constexpr cpu_features decode(const cpuid_words& w) noexcept {
  namespace b = cpuid_bit;
  cpu_features f;
  if (w.max_leaf < 1) return f;
  f.fma = (w.leaf1_ecx & b::fma) != 0;
  f.popcnt = (w.leaf1_ecx & b::popcnt) != 0;
  f.avx = (w.leaf1_ecx & b::avx) != 0;
  // Without OSXSAVE, XCR0 cannot be read and no AVX state is saved.
  const std::uint64_t xcr0 = (w.leaf1_ecx & b::osxsave) != 0 ? w.xcr0 : 0;
  f.os_ymm = (xcr0 & b::xcr0_ymm) == b::xcr0_ymm;
  f.os_zmm = f.os_ymm && (xcr0 & b::xcr0_zmm) == b::xcr0_zmm;
  if (w.max_leaf < 7) return f;
  f.avx2 = (w.leaf7_ebx & b::avx2) != 0;
  f.bmi2 = (w.leaf7_ebx & b::bmi2) != 0;
  f.avx512f = (w.leaf7_ebx & b::avx512f) != 0;
  f.avx512dq = (w.leaf7_ebx & b::avx512dq) != 0;
  f.avx512bw = (w.leaf7_ebx & b::avx512bw) != 0;
  f.avx512vl = (w.leaf7_ebx & b::avx512vl) != 0;
  f.avx512vbmi = (w.leaf7_ecx & b::avx512vbmi) != 0;
  f.gfni = (w.leaf7_ecx & b::gfni) != 0;
  f.avx512vpopcntdq = (w.leaf7_ecx & b::avx512vpopcntdq) != 0;
  return f;
}

// The best level whose kernels may run: every instruction set its build
// flags enable (cmake/KvcrushTargets.cmake, KVCRUSH_ISA_FLAGS_<level>) and
// the OS-saved register state it needs. The AVX-512 level is built with
// VBMI and GFNI, so it needs them too (every CPU with VPOPCNTDQ has both).
constexpr level best_level(const cpu_features& f) noexcept {
  const bool avx2 = f.avx && f.avx2 && f.fma && f.bmi2 && f.popcnt && f.os_ymm;
  if (!avx2) return level::scalar;
  const bool avx512 = f.avx512f && f.avx512dq && f.avx512bw && f.avx512vl && f.avx512vpopcntdq && f.avx512vbmi &&
                      f.gfni && f.os_zmm;
  return avx512 ? level::avx512 : level::avx2;
}

// The words of the CPU this runs on (all zero where CPUID does not exist).
inline cpuid_words read_cpuid() noexcept {
  cpuid_words w;
#if KVCRUSH_HAS_CPUID
  unsigned a = 0, b = 0, c = 0, d = 0;
  w.max_leaf = static_cast<std::uint32_t>(__get_cpuid_max(0, nullptr));
  if (w.max_leaf >= 1 && __get_cpuid(1, &a, &b, &c, &d)) w.leaf1_ecx = c;
  if (w.max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    w.leaf7_ebx = b;
    w.leaf7_ecx = c;
  }
  if ((w.leaf1_ecx & cpuid_bit::osxsave) != 0) {
    // XGETBV with ECX = 0, spelled as bytes so that no -mxsave is needed.
    std::uint32_t lo = 0, hi = 0;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    w.xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
#endif
  return w;
}

// The best level this machine runs (read once per call; cheap, but not free).
inline level detected_level() noexcept { return best_level(decode(read_cpuid())); }

}  // namespace kvcrush::isa
