# The include graph of the public headers must point one way, down the
# layers (README, "Folder map"):
#
#   0  kvcrush/*.hpp          vocabulary: views, errors, ISA tags, formats
#   1  simd/   io/            kernels; .npy files
#   2  select/                keep sets, signatures, selection
#   3  scores/ quant/         score sources; quantized storage
#   4  policy/                policies, select(), the workspace
#   5  cache/                 caches, compaction, eviction controller
#   6  dispatch/              run-time ISA dispatch (declarations of kvcrush::dispatch)
#   7  kvcrush/kvcrush.hpp    the umbrella
#
# A header may include its own folder and any lower layer, never a higher
# layer nor another folder of its own layer. Usage:
#   cmake -DINCLUDE_DIR=<dir holding kvcrush/> -P check_layers.cmake
if(NOT INCLUDE_DIR)
  message(FATAL_ERROR "check_layers: pass -DINCLUDE_DIR=<directory that holds kvcrush/>")
endif()
get_filename_component(INCLUDE_DIR "${INCLUDE_DIR}" ABSOLUTE)

function(kvcrush_layer_of relative out_layer out_folder)
  # relative: path below kvcrush/, e.g. "select/keep.hpp" or "error.hpp".
  if(relative STREQUAL "kvcrush.hpp")
    set(layer 7)
    set(folder umbrella)
  elseif(NOT relative MATCHES "/")
    set(layer 0)
    set(folder vocabulary)
  else()
    string(REGEX REPLACE "/.*" "" folder "${relative}")
    if(folder STREQUAL "simd" OR folder STREQUAL "io")
      set(layer 1)
    elseif(folder STREQUAL "select")
      set(layer 2)
    elseif(folder STREQUAL "scores" OR folder STREQUAL "quant")
      set(layer 3)
    elseif(folder STREQUAL "policy")
      set(layer 4)
    elseif(folder STREQUAL "cache")
      set(layer 5)
    elseif(folder STREQUAL "dispatch")
      set(layer 6)
    else()
      set(layer -1)
    endif()
  endif()
  set(${out_layer} ${layer} PARENT_SCOPE)
  set(${out_folder} ${folder} PARENT_SCOPE)
endfunction()

file(GLOB_RECURSE headers RELATIVE "${INCLUDE_DIR}/kvcrush" "${INCLUDE_DIR}/kvcrush/*.hpp")
list(SORT headers)
set(violations "")
set(arrows 0)
foreach(header IN LISTS headers)
  kvcrush_layer_of("${header}" from_layer from_folder)
  if(from_layer EQUAL -1)
    string(APPEND violations "  ${header}: folder '${from_folder}' has no layer (add it to check_layers.cmake and the README's folder map)\n")
    continue()
  endif()
  file(STRINGS "${INCLUDE_DIR}/kvcrush/${header}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*[\"<]kvcrush/")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[\"<]kvcrush/([^\">]+)[\">].*" "\\1" target "${line}")
    kvcrush_layer_of("${target}" to_layer to_folder)
    math(EXPR arrows "${arrows} + 1")
    if(target STREQUAL "c_api.h")
      string(APPEND violations "  ${header} -> ${target}: C++ headers do not include the C API\n")
    elseif(to_layer EQUAL -1)
      string(APPEND violations "  ${header} -> ${target}: folder '${to_folder}' has no layer\n")
    elseif(to_layer GREATER from_layer)
      string(APPEND violations "  ${header} (layer ${from_layer}) -> ${target} (layer ${to_layer}): points up the layers\n")
    elseif(to_layer EQUAL from_layer AND NOT to_folder STREQUAL from_folder)
      string(APPEND violations "  ${header} -> ${target}: ${from_folder}/ and ${to_folder}/ share layer ${from_layer} and must not include each other\n")
    endif()
  endforeach()
endforeach()

list(LENGTH headers count)
if(count EQUAL 0)
  message(FATAL_ERROR "check_layers: no headers under ${INCLUDE_DIR}/kvcrush")
endif()
if(violations)
  message(FATAL_ERROR "check_layers: include arrows against the layering:\n${violations}")
endif()
message(STATUS "check_layers: ${count} headers, ${arrows} kvcrush includes, all pointing down the layers")
