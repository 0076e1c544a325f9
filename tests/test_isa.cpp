#include <gtest/gtest.h>

#include <string>

#include "kvcrush/simd/isa.hpp"
#include "kvcrush/version.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;

TEST(Isa, ActiveTagMatchesTheBuild) {
#if defined(KVCRUSH_EXPECTED_ISA)
  EXPECT_EQ(isa::name(), KVCRUSH_TEST_STR(KVCRUSH_EXPECTED_ISA));
#endif
  EXPECT_EQ(isa::name(), isa::active::name);
  EXPECT_TRUE(isa::compiled_v<isa::active>);
  EXPECT_TRUE(isa::compiled_v<isa::scalar>);
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
  // The binary runs, so the CPU supports what it was built for.
  EXPECT_TRUE(isa::cpu_supports<isa::active>());
}

TEST(Version, MatchesTheCMakeProject) {
#if defined(KVCRUSH_PROJECT_VERSION)
  EXPECT_EQ(std::string(kvcrush::version_string), KVCRUSH_PROJECT_VERSION);
#endif
  EXPECT_EQ(std::string(kvcrush::version_string),
            std::to_string(kvcrush::version_major) + "." + std::to_string(kvcrush::version_minor) +
                "." + std::to_string(kvcrush::version_patch));
}
