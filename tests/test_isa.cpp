#include <gtest/gtest.h>

#include <string>

#include "kvcrush/isa.hpp"
#include "kvcrush/version.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;

namespace {

// The compiler's own feature macros, listed here independently of
// config.hpp: what each tag needs from the compiler flags.
constexpr bool compiler_has_avx2 =
#if defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__) && defined(__POPCNT__)
    true;
#else
    false;
#endif
constexpr bool compiler_has_avx512 = compiler_has_avx2 &&
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VPOPCNTDQ__)
    true;
#else
    false;
#endif

}  // namespace

TEST(Isa, ActiveTagMatchesTheBuild) {
  // The build system names the ISA this test binary is for; the tag chosen
  // from the compiler flags in config.hpp must agree (the test binaries are
  // built without a cap below their flags).
#if defined(KVCRUSH_EXPECTED_ISA)
  EXPECT_EQ(isa::name(), KVCRUSH_TEST_STR(KVCRUSH_EXPECTED_ISA));
  EXPECT_EQ(std::string(isa::active::name), KVCRUSH_TEST_STR(KVCRUSH_EXPECTED_ISA));
#endif
  // compiled_v follows the compiler's macros, not the cap or the CPU.
  EXPECT_EQ(isa::compiled_v<isa::avx2>, compiler_has_avx2);
  EXPECT_EQ(isa::compiled_v<isa::avx512>, compiler_has_avx512);
  [[maybe_unused]] const std::string expected_best = compiler_has_avx512 ? "avx512" : compiler_has_avx2 ? "avx2" : "scalar";
  EXPECT_LE(isa::active::level, compiler_has_avx512 ? isa::avx512::level : compiler_has_avx2 ? isa::avx2::level : isa::scalar::level);
#if !defined(KVCRUSH_MAX_ISA)
  EXPECT_EQ(std::string(isa::active::name), expected_best) << "uncapped: the best the flags allow";
#endif
}

TEST(Isa, LevelsAreOrdered) {
  EXPECT_LT(isa::scalar::level, isa::avx2::level);
  EXPECT_LT(isa::avx2::level, isa::avx512::level);
  EXPECT_EQ(isa::name<isa::scalar>(), "scalar");
  EXPECT_EQ(isa::name<isa::avx2>(), "avx2");
  EXPECT_EQ(isa::name<isa::avx512>(), "avx512");
}

TEST(Isa, CpuSupportIsMonotone) {
  EXPECT_TRUE(isa::cpu_supports<isa::scalar>());
  // A CPU with the AVX-512 set we need always has the AVX2 set too.
  if (isa::cpu_supports<isa::avx512>()) {
    EXPECT_TRUE(isa::cpu_supports<isa::avx2>());
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

TEST(Isa, CpuSupportAgreesWithCpuid) {
  // An independent reading of the CPU: CPUID feature bits and the OS's
  // saved register state (XGETBV), instead of __builtin_cpu_supports.
  unsigned a = 0, b = 0, c = 0, d = 0;
  ASSERT_TRUE(__get_cpuid(1, &a, &b, &c, &d));
  const bool fma = c & (1u << 12), popcnt = c & (1u << 23), osxsave = c & (1u << 27), avx = c & (1u << 28);
  unsigned xcr0 = 0, xcr0_high = 0;
  if (osxsave) __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
  const bool os_ymm = (xcr0 & 0x6u) == 0x6u, os_zmm = (xcr0 & 0xe6u) == 0xe6u;
  unsigned b7 = 0, c7 = 0;
  if (__get_cpuid_max(0, nullptr) >= 7) __cpuid_count(7, 0, a, b7, c7, d);
  const bool avx2 = b7 & (1u << 5), bmi2 = b7 & (1u << 8);
  const bool f = b7 & (1u << 16), dq = b7 & (1u << 17), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
  const bool vpopcntdq = c7 & (1u << 14);
  const bool expect_avx2 = avx && os_ymm && avx2 && fma && bmi2 && popcnt;
  bool expect_avx512 = expect_avx2 && os_zmm && f && dq && bw && vl && vpopcntdq;
#if defined(__AVX512VBMI__)
  expect_avx512 = expect_avx512 && (c7 & (1u << 1));
#endif
#if defined(__GFNI__)
  expect_avx512 = expect_avx512 && (c7 & (1u << 8));
#endif
  EXPECT_EQ(isa::cpu_supports<isa::avx2>(), expect_avx2);
  EXPECT_EQ(isa::cpu_supports<isa::avx512>(), expect_avx512);
}
#endif

TEST(Version, MatchesTheCMakeProject) {
#if defined(KVCRUSH_PROJECT_VERSION)
  EXPECT_EQ(std::string(kvcrush::version_string), KVCRUSH_PROJECT_VERSION);
#endif
  EXPECT_EQ(std::string(kvcrush::version_string),
            std::to_string(kvcrush::version_major) + "." + std::to_string(kvcrush::version_minor) +
                "." + std::to_string(kvcrush::version_patch));
}
