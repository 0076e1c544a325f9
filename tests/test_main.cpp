// Entry point of every per-ISA test binary: names the ISA in use and skips
// (exit code 77, reported by ctest as "Skipped") when this CPU cannot run it.
#include <gtest/gtest.h>

#include <cstdio>

#include "kvcrush/isa.hpp"
#include "kvcrush/version.hpp"

int main(int argc, char** argv) {
  const auto isa_name = kvcrush::isa::name();
  std::printf("kvcrush %s test suite, ISA in use: %.*s\n", kvcrush::version_string,
              static_cast<int>(isa_name.size()), isa_name.data());
  if (!kvcrush::isa::cpu_supports<kvcrush::isa::active>()) {
    std::printf("SKIPPED: this CPU lacks the %.*s instruction set\n",
                static_cast<int>(isa_name.size()), isa_name.data());
    return 77;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
