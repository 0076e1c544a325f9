# Proves that check_layers.cmake can fail: a tiny header tree with one
# arrow up the layers (simd -> policy) and one across a layer (scores ->
# quant) must be rejected, naming both. Usage:
#   cmake -DWORK_DIR=<scratch dir> -P check_layers_rejects.cmake
set(root "${WORK_DIR}/layering_fixture")
file(REMOVE_RECURSE "${root}")
file(WRITE "${root}/kvcrush/error.hpp" "#pragma once\n")
file(WRITE "${root}/kvcrush/policy/select.hpp" "#pragma once\n#include \"kvcrush/error.hpp\"\n")
file(WRITE "${root}/kvcrush/simd/kernel.hpp" "#pragma once\n#include \"kvcrush/policy/select.hpp\"\n")
file(WRITE "${root}/kvcrush/quant/layer.hpp" "#pragma once\n")
file(WRITE "${root}/kvcrush/scores/h2o.hpp" "#pragma once\n#include \"kvcrush/quant/layer.hpp\"\n")
execute_process(
  COMMAND "${CMAKE_COMMAND}" -DINCLUDE_DIR=${root} -P "${CMAKE_CURRENT_LIST_DIR}/check_layers.cmake"
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(result EQUAL 0)
  message(FATAL_ERROR "check_layers accepted a tree with arrows against the layering:\n${out}${err}")
endif()
foreach(expected "simd/kernel.hpp (layer 1) -> policy/select.hpp (layer 4): points up the layers"
                 "scores/h2o.hpp -> quant/layer.hpp: scores/ and quant/ share layer 3")
  string(FIND "${err}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "check_layers did not name '${expected}':\n${err}")
  endif()
endforeach()
file(REMOVE_RECURSE "${root}")
message(STATUS "check_layers rejects the fixture, naming both arrows")
