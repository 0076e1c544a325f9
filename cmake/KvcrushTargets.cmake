# Helpers for kvcrush's own targets (tests, benchmarks, examples). Nothing in
# here touches the exported kvcrush::kvcrush target.

# KVCRUSH_X86, the flags of each ISA level (KVCRUSH_ISA_FLAGS_<level>) and
# kvcrush_add_dispatched_executable(): shared with consumers (installed with
# the package).
include(${CMAKE_CURRENT_LIST_DIR}/KvcrushDispatch.cmake)

# Warnings (as errors when KVCRUSH_WERROR) and optional sanitizers.
function(kvcrush_own_target target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic
    $<$<BOOL:${KVCRUSH_WERROR}>:-Werror>)
  if(KVCRUSH_SANITIZE)
    target_compile_options(${target} PRIVATE
      -fsanitize=${KVCRUSH_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${KVCRUSH_SANITIZE})
  endif()
endfunction()

# Compile a target for one ISA level and record which level it expects, so
# that the code can assert at compile time that the right kernels are in use.
function(kvcrush_target_isa target isa)
  target_compile_options(${target} PRIVATE ${KVCRUSH_ISA_FLAGS_${isa}})
  if(isa STREQUAL "avx512" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12's AVX-512 intrinsics start many operations from
    # _mm512_undefined_*(), which -W(maybe-)uninitialized then reports once
    # Eigen's GEMM kernels are inlined into our code (the "maybe" form at -O3,
    # the plain one at -O1). kvcrush's own kernels avoid those intrinsics;
    # Eigen's cannot be changed from here.
    target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
  endif()
  target_compile_definitions(${target} PRIVATE KVCRUSH_EXPECTED_ISA=${isa})
endfunction()

# The best level this build machine runs, found once by compiling and running
# a probe with that level's flags: the level of the benchmarks, the fuzzers
# and the C API tests, and "host" in KVCRUSH_TOOLS_LEVELS (the CLI, the C API
# and the evaluation tools themselves dispatch at run time). Override with
# -DKVCRUSH_TOOLS_ISA=scalar|avx2|avx512.
if(NOT DEFINED KVCRUSH_TOOLS_ISA)
  set(_kvcrush_host_isa scalar)
  if(KVCRUSH_X86)
    foreach(_isa avx2 avx512)
      string(REPLACE ";" " " _flags "${KVCRUSH_ISA_FLAGS_${_isa}}")
      set(_probe ${CMAKE_BINARY_DIR}/kvcrush_isa_probe_${_isa}.cpp)
      file(WRITE ${_probe} "#include \"kvcrush/isa.hpp\"\nint main() { return kvcrush::isa::cpu_supports<kvcrush::isa::active>() && kvcrush::isa::name() == \"${_isa}\" ? 0 : 1; }\n")
      try_run(_run_result _compile_result ${CMAKE_BINARY_DIR}/kvcrush_isa_probe_${_isa} ${_probe}
        CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${PROJECT_SOURCE_DIR}/include"
        COMPILE_DEFINITIONS ${_flags}
        CXX_STANDARD 17)
      if(_compile_result AND _run_result EQUAL 0)
        set(_kvcrush_host_isa ${_isa})
      endif()
    endforeach()
  endif()
  set(KVCRUSH_TOOLS_ISA ${_kvcrush_host_isa} CACHE STRING "Best ISA level of the build machine (benchmarks, fuzzers; host in KVCRUSH_TOOLS_LEVELS)")
  message(STATUS "kvcrush: this machine runs ${KVCRUSH_TOOLS_ISA}")
endif()

# The levels compiled into kvcrush-eval and kvcrush-llama, which dispatch at
# run time (kvcrush_add_dispatched_executable): each level is one more
# compile of the whole tool. "host" stands for KVCRUSH_TOOLS_ISA, the best
# level of the build machine; scalar is always built.
set(KVCRUSH_TOOLS_LEVELS "scalar;avx2;avx512" CACHE STRING
  "ISA levels compiled into the dispatched tools (scalar;avx2;avx512; host = KVCRUSH_TOOLS_ISA)")
set(KVCRUSH_TOOLS_LEVELS_BUILT "")
foreach(_level IN LISTS KVCRUSH_TOOLS_LEVELS)
  if(_level STREQUAL "host")
    set(_level ${KVCRUSH_TOOLS_ISA})
  endif()
  list(APPEND KVCRUSH_TOOLS_LEVELS_BUILT ${_level})
endforeach()
list(REMOVE_DUPLICATES KVCRUSH_TOOLS_LEVELS_BUILT)

# The test suite is built once per ISA level that this machine runs: a
# native AVX-512 suite on a CPU without AVX-512 would only be compiled to
# report "Skipped". There the AVX-512 kernels are tested through emulation
# instead (tests/CMakeLists.txt, KVCRUSH_TEST_EMULATED_AVX512).
if(KVCRUSH_X86)
  set(KVCRUSH_DEFAULT_TEST_ISAS scalar avx2)
  if(KVCRUSH_TOOLS_ISA STREQUAL "avx512")
    list(APPEND KVCRUSH_DEFAULT_TEST_ISAS avx512)
  endif()
else()
  set(KVCRUSH_DEFAULT_TEST_ISAS scalar)
endif()
set(KVCRUSH_TEST_ISAS "${KVCRUSH_DEFAULT_TEST_ISAS}" CACHE STRING
  "ISA levels the test suite is built and run for natively (scalar;avx2;avx512)")

# A binary compiled with an ISA's flags may execute its instructions before
# main (GCC vectorises static constructors, gtest's registrations among
# them), so a check in main cannot make it skip cleanly on an older CPU.
# This links a baseline-compiled constructor that runs ahead of every other
# one and exits with 77 (ctest's "Skipped") when the CPU lacks a feature the
# flags enable. The feature list is read off the flags themselves (every
# -m<feature> of KVCRUSH_ISA_FLAGS_<isa>), so the two cannot drift apart.
function(kvcrush_isa_guard target isa)
  set(guard kvcrush_isa_guard_${isa})
  if(NOT TARGET ${guard})
    set(features "")
    foreach(flag IN LISTS KVCRUSH_ISA_FLAGS_${isa})
      # -march=... has an "=", so it never matches a feature flag.
      if(flag MATCHES "^-m([a-z0-9]+)$")
        list(APPEND features ${CMAKE_MATCH_1})
      endif()
    endforeach()
    set(checks "")
    foreach(feature IN LISTS features)
      string(APPEND checks "  if (!__builtin_cpu_supports(\"${feature}\")) return \"${feature}\";\n")
    endforeach()
    set(source ${CMAKE_BINARY_DIR}/kvcrush_isa_guard_${isa}.cpp)
    file(WRITE ${source}.in
"// Generated by cmake/KvcrushTargets.cmake (kvcrush_isa_guard); compiled for baseline x86-64.
#include <cstdio>
#include <unistd.h>

namespace {

const char* first_missing_feature() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
${checks}#endif
  return nullptr;
}

__attribute__((constructor(101))) void skip_when_cpu_lacks_${isa}() {
  if (const char* missing = first_missing_feature()) {
    std::printf(\"SKIPPED: built for ${isa}, but this CPU lacks %s\\n\", missing);
    std::fflush(stdout);
    _exit(77);
  }
}

}  // namespace
")
    configure_file(${source}.in ${source} COPYONLY)
    add_library(${guard} OBJECT ${source})
    kvcrush_own_target(${guard})
    if(KVCRUSH_X86)
      target_compile_options(${guard} PRIVATE -march=x86-64)
    endif()
  endif()
  target_link_libraries(${target} PRIVATE ${guard})
endfunction()
