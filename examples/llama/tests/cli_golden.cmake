# Runs kvcrush-llama with 200 steps and compares its stdout with llama2.c's
# reference output and the newline kvcrush-llama ends its output with, byte
# for byte. Prints "SKIPPED:" (ctest reports the test
# as skipped) when the shared files are missing, unless CI=true.
#   cmake -DCLI=<kvcrush-llama> -DSHARED_DIR=<dir> -DOUTPUT=<file> [-DEXTRA_ARGS=--paged] -P cli_golden.cmake
if(DEFINED ENV{KVCRUSH_SHARED_DIR} AND NOT "$ENV{KVCRUSH_SHARED_DIR}" STREQUAL "")
  set(SHARED_DIR "$ENV{KVCRUSH_SHARED_DIR}")
endif()
set(model "${SHARED_DIR}/models/stories260K.bin")
set(tokenizer "${SHARED_DIR}/models/tok512.bin")
set(reference "${SHARED_DIR}/models/stories260K_greedy200.txt")

include("${CMAKE_CURRENT_LIST_DIR}/../../../cmake/KvcrushSharedFiles.cmake")
kvcrush_require_shared_files("${model}" "${tokenizer}" "${reference}")

execute_process(
  COMMAND "${CLI}" --model "${model}" --tokenizer "${tokenizer}" --steps 200 ${EXTRA_ARGS}
  OUTPUT_FILE "${OUTPUT}"
  ERROR_VARIABLE errors
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "kvcrush-llama exited with ${result}: ${errors}")
endif()
file(READ "${OUTPUT}" output HEX)
file(READ "${reference}" expected HEX)
if(NOT output STREQUAL "${expected}0a")
  file(READ "${OUTPUT}" text)
  message(FATAL_ERROR "kvcrush-llama's output (${OUTPUT}) differs from ${reference} and a newline:\n${text}")
endif()
file(SIZE "${OUTPUT}" size)
message("kvcrush-llama printed ${size} bytes: ${reference} and a newline")
