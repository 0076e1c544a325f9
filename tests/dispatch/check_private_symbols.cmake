# The per-ISA units of kvcrush::dispatch must define exactly one global
# symbol each, their kernel table, and no type information: any other (a weak std::vector, Eigen or
# kvcrush::detail function) could be picked by the linker for baseline code
# and run AVX-512 instructions there (src/CMakeLists.txt). Usage:
#   cmake -DNM=<nm> -DOBJECTS=<a.o;b.o> -P check_private_symbols.cmake
if(NOT NM OR NOT OBJECTS)
  message(FATAL_ERROR "check_private_symbols: pass -DNM=... -DOBJECTS=...")
endif()
set(failures "")
foreach(object IN LISTS OBJECTS)
  execute_process(COMMAND ${NM} --defined-only --extern-only ${object}
    OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "check_private_symbols: ${NM} failed on ${object}")
  endif()
  string(REGEX REPLACE "\n$" "" out "${out}")
  string(REPLACE "\n" ";" lines "${out}")
  set(tables 0)
  foreach(line IN LISTS lines)
    if(line MATCHES " _ZN7kvcrush8dispatch6detail[0-9]+table_[a-z0-9]+E$")
      math(EXPR tables "${tables} + 1")
    else()
      string(APPEND failures "  ${object}: ${line}\n")
    endif()
  endforeach()
  # Type information made private would break catch-by-type across units:
  # an exception the unit throws must have its typeinfo defined elsewhere
  # (std::invalid_argument and the like, in libstdc++).
  execute_process(COMMAND ${NM} --defined-only ${object} OUTPUT_VARIABLE all RESULT_VARIABLE rc)
  if(all MATCHES "[ \t\n]_ZTI[^\n]*")
    string(APPEND failures "  ${object}: defines type information (${CMAKE_MATCH_0}), now private to the unit\n")
  endif()
  if(NOT tables EQUAL 1)
    string(APPEND failures "  ${object}: ${tables} kernel tables, expected 1\n")
  endif()
endforeach()
if(failures)
  message(FATAL_ERROR "check_private_symbols: per-ISA units export more than their table:\n${failures}")
endif()
list(LENGTH OBJECTS count)
message(STATUS "check_private_symbols: ${count} per-ISA units, each exports only its kernel table")
