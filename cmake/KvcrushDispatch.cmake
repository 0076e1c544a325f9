# ISA levels and whole-program run-time dispatch. Included by kvcrush's own
# build (cmake/KvcrushTargets.cmake) and by the installed package
# (kvcrushConfig.cmake), so that consumers get the same flags and function.
#
#   KVCRUSH_X86                 ON on x86-64
#   KVCRUSH_ISA_FLAGS_<level>   compiler flags of each level (scalar, avx2, avx512)
#   kvcrush_add_dispatched_executable(<name> SOURCES ... [LINK ...] ...)
#                               one program compiled once per level, one
#                               baseline main choosing the level at run time

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(KVCRUSH_X86 ON)
else()
  set(KVCRUSH_X86 OFF)
endif()

# Flags per ISA level. The scalar build also turns off auto-vectorisation so
# that it really exercises (and measures) the scalar kernels.
set(KVCRUSH_ISA_FLAGS_scalar -march=x86-64 -fno-tree-vectorize)
set(KVCRUSH_ISA_FLAGS_avx2 -mavx2 -mfma -mbmi2 -mpopcnt)
# GFNI and VBMI come with VPOPCNTDQ on every CPU that has it (Ice Lake,
# Zen 4 and later); kernels use them when the flags allow and fall back
# otherwise, so consumers may leave them out.
set(KVCRUSH_ISA_FLAGS_avx512
  -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq -mavx512vbmi -mgfni ${KVCRUSH_ISA_FLAGS_avx2})

if(NOT KVCRUSH_X86)
  set(KVCRUSH_ISA_FLAGS_scalar "")
endif()

# kvcrush_add_dispatched_executable(<name>
#     SOURCES <file>...                the program (one entry function, see ENTRY)
#     [LINK <library>...]              linked into every level and the executable
#     [COMPILE_DEFINITIONS <def>...] [COMPILE_OPTIONS <option>...]
#     [INCLUDE_DIRECTORIES <dir>...]   for the program's sources
#     [LEVELS <level>...]              default scalar avx2 avx512; scalar is always built
#     [ENTRY <identifier>]             default <name>_main (as a C identifier)
#     [ENTRY_MACRO <macro>]            default KVCRUSH_TOOL_ENTRY
#     [VERSION <text>])                adds "--version": "<name> <text> (ISA <level>)"
#
# Whole-program dispatch: the sources are compiled once per level with that
# level's flags (object library <name>_<level>), and each copy defines its
# entry as ENTRY_MACRO, expanding to <ENTRY>_<level>: the program writes
# `int KVCRUSH_TOOL_ENTRY(int argc, char** argv)` where it would write main.
# A level's objects are partially linked (ld -r, when there are several) and
# rewritten by objcopy so that the entry is their one global symbol: the
# weak inline and template functions every copy instantiates (std::, Eigen,
# kvcrush) stay inside it, instead of being shared by the linker with the
# other levels and the baseline main, which could then run AVX-512 bodies on
# a CPU without it. The level's static constructors (.init_array) are renamed
# too, so that they run only when that level is chosen, right before its
# entry, and no level's instruction runs at start-up.
#
# The executable <name> is the generated main, compiled for baseline x86-64,
# plus every level. It picks the best level that the CPU and OS support
# (kvcrush::isa::detected_level()), capped by KVCRUSH_ISA=scalar|avx2|avx512,
# and calls its entry once. A KVCRUSH_ISA that is not a level, or a level
# this machine lacks, is one line on stderr ("<name>: error: ...") and exit
# code 2. Levels left out of LEVELS fall back to the best one built below.
#
# The executable's properties KVCRUSH_DISPATCH_LEVELS (levels built, best
# first), KVCRUSH_DISPATCH_ENTRY (ENTRY), KVCRUSH_DISPATCH_TARGETS (the per-level object libraries, for extra
# options) and KVCRUSH_DISPATCH_OBJECTS (the rewritten objects) describe it.
# Needs GCC or Clang with binutils (objcopy, ld); no LTO for the levels.
function(kvcrush_add_dispatched_executable name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "ENTRY;ENTRY_MACRO;VERSION"
    "SOURCES;LINK;COMPILE_DEFINITIONS;COMPILE_OPTIONS;INCLUDE_DIRECTORIES;LEVELS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "kvcrush_add_dispatched_executable(${name}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_SOURCES)
    message(FATAL_ERROR "kvcrush_add_dispatched_executable(${name}): SOURCES is required")
  endif()
  if(NOT arg_ENTRY)
    string(MAKE_C_IDENTIFIER "${name}_main" arg_ENTRY)
  endif()
  if(NOT arg_ENTRY_MACRO)
    set(arg_ENTRY_MACRO KVCRUSH_TOOL_ENTRY)
  endif()
  if(NOT arg_LEVELS)
    set(arg_LEVELS scalar avx2 avx512)
  endif()
  foreach(level IN LISTS arg_LEVELS)
    if(NOT level MATCHES "^(scalar|avx2|avx512)$")
      message(FATAL_ERROR "kvcrush_add_dispatched_executable(${name}): '${level}' is not a level (scalar, avx2, avx512)")
    endif()
  endforeach()
  # Best first, scalar always (the level every CPU runs).
  set(levels "")
  foreach(level avx512 avx2 scalar)
    if(level STREQUAL "scalar" OR (KVCRUSH_X86 AND level IN_LIST arg_LEVELS))
      list(APPEND levels ${level})
    endif()
  endforeach()
  if(NOT CMAKE_OBJCOPY OR NOT CMAKE_LINKER)
    message(FATAL_ERROR "kvcrush_add_dispatched_executable(${name}): needs objcopy and ld (binutils)")
  endif()
  set(compiled_sources "")
  foreach(source IN LISTS arg_SOURCES)
    if(source MATCHES "\\.(c|cc|cpp|cxx|c\\+\\+|C)$")
      list(APPEND compiled_sources ${source})
    endif()
  endforeach()
  list(LENGTH compiled_sources source_count)

  set(objects "")
  set(targets "")
  set(declarations "")
  set(entries "")
  foreach(level IN LISTS levels)
    set(target ${name}_${level})
    set(entry ${arg_ENTRY}_${level})
    add_library(${target} OBJECT ${arg_SOURCES})
    target_link_libraries(${target} PRIVATE ${arg_LINK})
    target_compile_definitions(${target} PRIVATE ${arg_ENTRY_MACRO}=${entry} ${arg_COMPILE_DEFINITIONS})
    target_include_directories(${target} PRIVATE ${arg_INCLUDE_DIRECTORIES})
    target_compile_options(${target} PRIVATE ${KVCRUSH_ISA_FLAGS_${level}} ${arg_COMPILE_OPTIONS})
    # objcopy works on machine code: no LTO. GCC marks static locals of
    # inline functions "GNU unique", which objcopy cannot make local; as
    # plain weak symbols they become local like the rest.
    set_target_properties(${target} PROPERTIES INTERPROCEDURAL_OPTIMIZATION OFF)
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      target_compile_options(${target} PRIVATE -fno-lto)
    endif()
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -fno-gnu-unique)
      # GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which
      # -W(maybe-)uninitialized reports once they are inlined (as for
      # kvcrush's own AVX-512 targets). The other levels compile the same
      # sources with these warnings on.
      if(level STREQUAL "avx512")
        target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
      endif()
    endif()
    # int <entry>(int, char**), mangled.
    string(LENGTH "${entry}" length)
    set(symbol _Z${length}${entry}iPPc)
    set(private ${CMAKE_CURRENT_BINARY_DIR}/${target}_private${CMAKE_CXX_OUTPUT_EXTENSION})
    set(input $<TARGET_OBJECTS:${target}>)
    set(partial_link "")
    if(source_count GREATER 1)
      set(input ${CMAKE_CURRENT_BINARY_DIR}/${target}_partial${CMAKE_CXX_OUTPUT_EXTENSION})
      set(partial_link COMMAND ${CMAKE_LINKER} -r -o ${input} $<TARGET_OBJECTS:${target}>)
    endif()
    # Every symbol but the entry becomes local; COMDAT groups become plain
    # sections (else the linker still folds them by name and then finds local
    # references pointing into a discarded copy); the static constructors
    # move to a section of their own, run by the main for the chosen level.
    add_custom_command(OUTPUT ${private}
      ${partial_link}
      COMMAND ${CMAKE_OBJCOPY} --keep-global-symbol=${symbol} --remove-section=.group
              --rename-section .init_array=${entry}_init ${input} ${private}
      DEPENDS ${target} $<TARGET_OBJECTS:${target}>
      COMMENT "kvcrush dispatch: making the ${level} copy of ${name} private"
      COMMAND_EXPAND_LISTS VERBATIM)
    list(APPEND objects ${private})
    list(APPEND targets ${target})
    string(APPEND declarations
      "int ${entry}(int, char**);\n"
      "extern \"C\" const init_function __start_${entry}_init[] __attribute__((weak));\n"
      "extern \"C\" const init_function __stop_${entry}_init[] __attribute__((weak));\n")
    string(APPEND entries
      "    {kvcrush::isa::level::${level}, &${entry}, __start_${entry}_init, __stop_${entry}_init},\n")
  endforeach()

  set(KVCRUSH_DISPATCH_PROGRAM ${name})
  set(KVCRUSH_DISPATCH_VERSION "${arg_VERSION}")
  set(KVCRUSH_DISPATCH_DECLARATIONS "${declarations}")
  set(KVCRUSH_DISPATCH_ENTRIES "${entries}")
  set(main ${CMAKE_CURRENT_BINARY_DIR}/${name}_dispatch_main.cpp)
  configure_file(${CMAKE_CURRENT_FUNCTION_LIST_DIR}/kvcrush_dispatch_main.cpp.in ${main} @ONLY)
  add_executable(${name} ${main} ${objects})
  target_link_libraries(${name} PRIVATE kvcrush::kvcrush ${arg_LINK})
  target_compile_options(${name} PRIVATE ${KVCRUSH_ISA_FLAGS_scalar})
  set_target_properties(${name} PROPERTIES
    KVCRUSH_DISPATCH_LEVELS "${levels}"
    KVCRUSH_DISPATCH_ENTRY ${arg_ENTRY}
    KVCRUSH_DISPATCH_TARGETS "${targets}"
    KVCRUSH_DISPATCH_OBJECTS "${objects}")
endfunction()
