# kvcrush-llama's compression, counting and sampling options on the shared
# model: the full policy is llama2.c's text, a budget covering every position
# changes nothing, a small one holds the cache (stderr reports it) and
# changes the text after the budget (the same on the paged cache), slack
# spaces the selections, --steps counts generated tokens,
# sampling is reproducible for a seed, and the errors that need the model
# exit 2. Prints "SKIPPED:" when the shared files are missing, unless CI=true.
#   cmake -DCLI=<kvcrush-llama> -DSHARED_DIR=<dir> -P cli_policies.cmake
if(DEFINED ENV{KVCRUSH_SHARED_DIR} AND NOT "$ENV{KVCRUSH_SHARED_DIR}" STREQUAL "")
  set(SHARED_DIR "$ENV{KVCRUSH_SHARED_DIR}")
endif()
set(model "${SHARED_DIR}/models/stories260K.bin")
set(tokenizer "${SHARED_DIR}/models/tok512.bin")
set(reference "${SHARED_DIR}/models/stories260K_greedy200.txt")
include("${CMAKE_CURRENT_LIST_DIR}/../../../cmake/KvcrushSharedFiles.cmake")
kvcrush_require_shared_files("${model}" "${tokenizer}" "${reference}")
file(READ "${reference}" golden)

# Runs kvcrush-llama with the model and the given arguments; sets out, err
# and fails unless the exit code is `expected`.
function(llama expected)
  execute_process(COMMAND "${CLI}" --model "${model}" --tokenizer "${tokenizer}" ${ARGN}
    OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE result)
  if(NOT result EQUAL expected)
    message(FATAL_ERROR "kvcrush-llama ${ARGN}: exit ${result}, expected ${expected}; stderr '${errors}'")
  endif()
  set(out "${output}" PARENT_SCOPE)
  set(err "${errors}" PARENT_SCOPE)
endfunction()

llama(0 --steps 200 --policy full)
if(NOT out STREQUAL "${golden}\n" OR NOT err STREQUAL "")
  message(FATAL_ERROR "--policy full must print llama2.c's text and a newline, nothing on stderr: '${out}' '${err}'")
endif()

llama(0 --steps 200 --policy h2o --budget 200)
if(NOT out STREQUAL "${golden}\n")
  message(FATAL_ERROR "a budget covering every position must change nothing: '${out}'")
endif()
if(NOT err MATCHES "at most 200 of 200 positions cached per layer, 0 selections")
  message(FATAL_ERROR "the report must say nothing was evicted: '${err}'")
endif()

foreach(policy IN ITEMS h2o snapkv+kvcrush tova streaming knorm random)
  llama(0 --steps 200 --policy ${policy} --budget 64 --sink 4 --window 16)
  string(REPLACE "+" "\\+" pattern "${policy}")
  if(NOT err MATCHES "^kvcrush-llama: policy ${pattern}, budget 64 [^\n]*: at most 64 of 200 positions cached per layer, [1-9][0-9]* selections\n$")
    message(FATAL_ERROR "--policy ${policy} --budget 64: the cache must hold 64 rows at most: '${err}'")
  endif()
  if(out STREQUAL "${golden}\n" OR NOT out MATCHES "\n$")
    message(FATAL_ERROR "--policy ${policy} --budget 64 must change the text and end with a newline: '${out}'")
  endif()
  string(SUBSTRING "${golden}" 0 100 head)
  string(FIND "${out}" "${head}" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "--policy ${policy}: the first 64 tokens come before any eviction: '${out}'")
  endif()
  # The paged cache evicts the same tokens (knorm needs contiguous keys).
  if(NOT policy STREQUAL "knorm")
    set(contiguous "${out}")
    llama(0 --steps 200 --policy ${policy} --budget 64 --sink 4 --window 16 --paged)
    if(NOT out STREQUAL contiguous)
      message(FATAL_ERROR "--policy ${policy} --budget 64 --paged differs from the contiguous cache: '${out}'")
    endif()
  endif()
  message("kvcrush-llama --policy ${policy} --budget 64: ${err}")
endforeach()

# AdaKV: nothing changes while the budget covers everything; with slack the
# heads' shares differ, and their mean stays within budget + slack.
llama(0 --steps 200 --policy adakv --budget 200)
if(NOT out STREQUAL "${golden}\n")
  message(FATAL_ERROR "--policy adakv with a budget covering every position must change nothing: '${out}'")
endif()
llama(0 --steps 200 --policy snapkv+adakv+kvcrush --budget 64 --slack 16)
if(NOT err MATCHES "at most 80.00 of 200 positions cached per layer \\(mean over its KV heads; longest head (8[1-9]|9[0-6])\\), [1-9][0-9]* selections")
  message(FATAL_ERROR "--policy snapkv+adakv+kvcrush --slack 16: heads of different lengths, mean <= 80: '${err}'")
endif()
if(out STREQUAL "${golden}\n")
  message(FATAL_ERROR "--policy snapkv+adakv+kvcrush --budget 64 must change the text")
endif()
# --alpha is AdaKV's floor: at 1 every head keeps exactly its even share.
llama(0 --steps 200 --policy adakv --budget 64 --slack 16 --alpha 1)
if(NOT err MATCHES "at most 80.00 of 200 positions cached per layer \\(mean over its KV heads; longest head 80\\)")
  message(FATAL_ERROR "--alpha 1: every head's share is the budget: '${err}'")
endif()

# Slack: the cache at most budget + slack, a selection once per slack tokens
# (27 per layer: from token 70 to 200 every 5 tokens, in 5 layers).
llama(0 --steps 200 --policy h2o --budget 64 --slack 5)
if(NOT err MATCHES "slack 5\\): at most 69 of 200 positions cached per layer, 135 selections")
  message(FATAL_ERROR "--slack 5: 64 + 5 rows at most, one selection per 5 tokens in each of 5 layers: '${err}'")
endif()

# --steps counts generated tokens: the prompt is echoed, then N more tokens.
# 200 positions from BOS are llama2.c's 200 steps; with a 5-token prompt
# (BOS included, with tok512), --steps 196 runs the same 200 positions.
llama(0 --steps 10 --prompt "Once upon a time")
set(ten "${out}")
llama(0 --steps 196 --prompt "Once upon a time")
if(NOT out STREQUAL "${golden}\n")
  message(FATAL_ERROR "--steps 196 after 'Once upon a time' must give the 200-position text: '${out}'")
endif()
string(REGEX REPLACE "\n$" "" ten "${ten}")
string(FIND "${golden}" "${ten}" at)
string(LENGTH "${ten}" length)
if(NOT at EQUAL 0 OR NOT length GREATER 30)
  message(FATAL_ERROR "--steps 10 after the prompt must continue it with 10 greedy tokens: '${ten}'")
endif()

# Sampling: the same seed, the same text; another seed, another text.
llama(0 --steps 100 --temperature 1 --seed 5)
set(first "${out}")
llama(0 --steps 100 --temperature 1 --seed 5)
if(NOT out STREQUAL first)
  message(FATAL_ERROR "--seed 5 twice must print the same text")
endif()
llama(0 --steps 100 --temperature 1 --seed 6)
if(out STREQUAL first)
  message(FATAL_ERROR "--seed 6 and --seed 5 printed the same text")
endif()

# Errors that need the model: one line, exit 2.
foreach(arguments IN ITEMS "--steps;600" "--policy;knorm;--budget;64;--paged")
  llama(2 ${arguments})
  string(REGEX MATCHALL "\n" newlines "${err}")
  list(LENGTH newlines lines)
  if(NOT err MATCHES "^kvcrush-llama: error: " OR NOT lines EQUAL 1 OR NOT out STREQUAL "")
    message(FATAL_ERROR "kvcrush-llama ${arguments}: expected one error line, got '${err}' '${out}'")
  endif()
endforeach()
# A prompt longer than the context is bad input too.
string(REPEAT "Lily and Tom played in the park. " 120 long_prompt)
llama(2 --prompt "${long_prompt}")
if(NOT err MATCHES "^kvcrush-llama: error: the prompt's [0-9]+ tokens fill the model's 512 positions\n$")
  message(FATAL_ERROR "a prompt beyond the context must be refused: '${err}'")
endif()

# A failure to write the output is the tool's, not the user's: exit 1.
if(EXISTS /dev/full)
  execute_process(COMMAND "${CLI}" --model "${model}" --tokenizer "${tokenizer}" --steps 20
    OUTPUT_FILE /dev/full ERROR_VARIABLE errors RESULT_VARIABLE result)
  if(NOT result EQUAL 1 OR NOT errors MATCHES "^kvcrush-llama: error: cannot write the output\n$")
    message(FATAL_ERROR "stdout on /dev/full: exit ${result}, stderr '${errors}' (expected 1, one error line)")
  endif()
endif()
message("kvcrush-llama policies, steps and sampling: as documented")
