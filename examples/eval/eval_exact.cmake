cmake_minimum_required(VERSION 3.25)
# kvcrush-eval runs exactly what was asked and says what it defaults to:
# --policies/--budgets alone run those rows and no equal-byte ones, a byte
# option adds those, --help names the real default files (both models) and each model's own
# context, and the context default is the model's seq_len (512 for
# stories260K, 1024 for austen-kjv-14m, seen through a text too short for
# 1024). Prints "SKIPPED:" without the shared files, unless CI=true.
#   cmake -DEVAL=<kvcrush-eval> -DSHARED_DIR=<dir> -DWORK_DIR=<dir> -P eval_exact.cmake
# The defaults --help must name are the build's, whatever the environment
# points the test's own runs at.
set(BUILD_SHARED_DIR "${SHARED_DIR}")
if(DEFINED ENV{KVCRUSH_SHARED_DIR} AND NOT "$ENV{KVCRUSH_SHARED_DIR}" STREQUAL "")
  set(SHARED_DIR "$ENV{KVCRUSH_SHARED_DIR}")
endif()
include("${CMAKE_CURRENT_LIST_DIR}/../../cmake/KvcrushSharedFiles.cmake")
kvcrush_require_shared_files(
  "${SHARED_DIR}/models/stories260K.bin"
  "${SHARED_DIR}/models/austen-kjv-14m.bin"
  "${SHARED_DIR}/models/tok512.bin"
  "${SHARED_DIR}/data/pride_and_prejudice.txt")

# --help: the resolved default paths, the model's own context, no 512.
execute_process(COMMAND "${EVAL}" --help RESULT_VARIABLE result OUTPUT_VARIABLE help)
file(REAL_PATH "${BUILD_SHARED_DIR}/models/austen-kjv-14m.bin" default_model)
file(REAL_PATH "${BUILD_SHARED_DIR}/models/stories260K.bin" second_model)
file(REAL_PATH "${BUILD_SHARED_DIR}/models/tok512.bin" default_tokenizer)
file(REAL_PATH "${BUILD_SHARED_DIR}/data/pride_and_prejudice.txt" default_text)
foreach(expected "(default: ${default_model}" "${second_model}" "(default ${default_tokenizer})" "${default_text}"
                 "default: each model's")
  string(FIND "${help}" "${expected}" at)
  if(at LESS 0)
    message(FATAL_ERROR "kvcrush-eval --help must show '${expected}':\n${help}")
  endif()
endforeach()
if(help MATCHES "model's 512" OR help MATCHES "default 512" OR help MATCHES "\\.\\./shared")
  message(FATAL_ERROR "kvcrush-eval --help states a default it does not use:\n${help}")
endif()

file(REAL_PATH "${SHARED_DIR}/models/stories260K.bin" model)
file(REAL_PATH "${SHARED_DIR}/models/tok512.bin" tokenizer)

# A short text: about 700 tokens, one context of stories260K, less than one of
# austen-kjv-14m.
file(READ "${SHARED_DIR}/data/pride_and_prejudice.txt" prefix LIMIT 1200)
file(WRITE "${WORK_DIR}/eval_short.txt" "${prefix}")
set(common --text "${WORK_DIR}/eval_short.txt" --tokenizer "${tokenizer}" --chunks 1 --quiet --format csv)

# Runs kvcrush-eval; sets rows (CSV lines after the header) and err.
function(evaluate expected_exit)
  execute_process(COMMAND "${EVAL}" ${common} ${ARGN}
    RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE errors)
  if(NOT result EQUAL expected_exit)
    message(FATAL_ERROR "kvcrush-eval ${ARGN}: exit ${result}, expected ${expected_exit}: ${errors}")
  endif()
  string(REGEX REPLACE "\n$" "" out "${out}")
  string(REPLACE "\n" ";" lines "${out}")
  if(lines)
    list(POP_FRONT lines)
  endif()
  set(rows "${lines}" PARENT_SCOPE)
  set(err "${errors}" PARENT_SCOPE)
endfunction()

function(expect_rows what)
  list(LENGTH rows count)
  list(LENGTH ARGN expected_count)
  if(NOT count EQUAL expected_count)
    message(FATAL_ERROR "${what}: ${count} rows, expected ${expected_count} (${ARGN}):\n${rows}")
  endif()
  foreach(row expected IN ZIP_LISTS rows ARGN)
    if(NOT row MATCHES "^[^,]+,eval_short,${expected},")
      message(FATAL_ERROR "${what}: row '${row}' is not '${expected}'")
    endif()
  endforeach()
endfunction()

# 3 runs, not 19 (with --opt=value, which every tool takes).
evaluate(0 --model "${model}" --policies full,snapkv,snapkv+kvcrush --budgets=0.25)
expect_rows("--policies full,snapkv,snapkv+kvcrush --budgets 0.25"
            "full,,1.000000,512" "snapkv,,0.250000,128" "snapkv\\+kvcrush,,0.250000,128")
if(NOT err MATCHES "3 runs per chunk")
  message(FATAL_ERROR "expected 3 runs per chunk: ${err}")
endif()
# --budgets alone: the 19 default policies at that budget, no byte rows.
evaluate(0 --model "${model}" --budgets 0.5)
list(LENGTH rows count)
if(NOT count EQUAL 19 OR rows MATCHES ",fp16,")
  message(FATAL_ERROR "--budgets 0.5 alone: 19 rows (full + 18 policies at 0.5), got ${count}:\n${rows}")
endif()
# A byte option adds the equal-byte rows it describes.
evaluate(0 --model "${model}" --policies full --byte-budgets 0.25 --precisions fp16,int4)
expect_rows("--policies full --byte-budgets 0.25 --precisions fp16,int4"
            "full,,1.000000,512" "snapkv,,0.250000,128,.*,fp16" "snapkv,,0.250000,[0-9]+,.*,int4")

# The context is the model's seq_len: 1024 tokens do not fit in this text.
evaluate(2 --model "${SHARED_DIR}/models/austen-kjv-14m.bin" --policies full)
if(NOT err MATCHES "^kvcrush-eval: error: text '[^']*' holds [0-9]+ tokens, fewer than one context of 1023\n$")
  message(FATAL_ERROR "austen-kjv-14m's context must be 1024 by default: ${err}")
endif()
# A budget below what is always kept is refused before anything runs.
evaluate(2 --model "${model}" --policies snapkv --budgets 0.03)
if(NOT err MATCHES "^kvcrush-eval: error: budget 0.030 of the 512-token context is 15 tokens, fewer than snapkv keeps always \\(20: --sink \\+ --window\\)\n$")
  message(FATAL_ERROR "a budget below sink + window must be refused: ${err}")
endif()
# The results do not depend on the threads or on how many runs decode together.
set(same_rows --model "${model}" --policies full,h2o,snapkv+kvcrush,adakv --budgets 0.25 --byte-budgets 0.25
    --precisions int4,mixed-int4)
evaluate(0 ${same_rows} --threads 1 --batch 1)
set(one_thread "${rows}")
evaluate(0 ${same_rows} --threads 3 --batch 256)
if(NOT rows STREQUAL one_thread)
  message(FATAL_ERROR "--threads 1 --batch 1 and --threads 3 --batch 256 differ:\n${one_thread}\n---\n${rows}")
endif()
message("kvcrush-eval: exactly the rows asked for, defaults as documented, the same on any threads and batch")
