cmake_minimum_required(VERSION 3.25)
# A dispatched tool (kvcrush_add_dispatched_executable) and KVCRUSH_ISA:
# "--version" prints "<tool> <version> (ISA <level>)", at the level
# KVCRUSH_ISA asks for; a value that is not a level, or a level this machine
# lacks, is exit code 2, one line "<tool>: error: ..." on stderr, nothing on
# stdout. Needs no shared file.
#   cmake -DTOOL=<executable> -DNAME=<tool name> -DVERSION=<x.y.z> -DLEVELS=<levels built> -P check_tool_isa_env.cmake
set(ENV{KVCRUSH_ISA} "")
execute_process(COMMAND "${TOOL}" --version OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 0 OR NOT output MATCHES "^${NAME} ${VERSION} \\(ISA (scalar|avx2|avx512)\\)\n$")
  message(FATAL_ERROR "${NAME} --version: exit ${result}, stdout '${output}', stderr '${errors}'")
endif()
set(best ${CMAKE_MATCH_1})
message("${NAME} --version: ${output}")
# The machine's best level is the best built level that runs here; every
# built level at or below it is chosen when asked for.
set(order scalar avx2 avx512)
list(FIND order ${best} best_rank)
foreach(level IN LISTS LEVELS)
  list(FIND order ${level} rank)
  if(rank GREATER best_rank)
    continue()
  endif()
  set(ENV{KVCRUSH_ISA} ${level})
  execute_process(COMMAND "${TOOL}" --version OUTPUT_VARIABLE output RESULT_VARIABLE result)
  if(NOT result EQUAL 0 OR NOT output STREQUAL "${NAME} ${VERSION} (ISA ${level})\n")
    message(FATAL_ERROR "KVCRUSH_ISA=${level} ${NAME} --version: exit ${result}, stdout '${output}'")
  endif()
endforeach()

set(refused avx1024 AVX2 "avx2 " sse4)
if(NOT best STREQUAL "avx512" AND "avx512" IN_LIST LEVELS)
  list(APPEND refused avx512)  # built but not supported here
endif()
foreach(value IN LISTS refused)
  set(ENV{KVCRUSH_ISA} "${value}")
  foreach(arguments IN ITEMS "--version" "--help")
    execute_process(COMMAND "${TOOL}" ${arguments} OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE result)
    string(REGEX MATCHALL "\n" newlines "${errors}")
    list(LENGTH newlines lines)
    if(NOT result EQUAL 2 OR NOT lines EQUAL 1 OR NOT errors MATCHES "^${NAME}: error: KVCRUSH_ISA='${value}' "
       OR NOT output STREQUAL "")
      message(FATAL_ERROR "KVCRUSH_ISA='${value}' ${NAME} ${arguments}: expected exit 2 and one stderr line, "
                          "got exit ${result}, stderr '${errors}', stdout '${output}'")
    endif()
  endforeach()
  message("KVCRUSH_ISA='${value}' -> exit 2: ${errors}")
endforeach()
