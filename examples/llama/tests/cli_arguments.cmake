# Bad command lines and input files make kvcrush-llama print one line
# "kvcrush-llama: error: ..." on stderr and exit 2;
# --help prints the usage on stdout and exits 0.
#   cmake -DCLI=<kvcrush-llama> -P cli_arguments.cmake
# One command line per entry, arguments separated by "|".
set(bad_command_lines
  "--bogus"
  "--steps"
  "--steps|abc"
  "--steps|-3"
  "--steps|12x"
  "--steps|99999999999999999999999"
  "--model"
  "--prompt"
  "positional"
  "--steps=abc"
  "--paged=yes"
  "--temperature|-1"
  "--temperature|hot"
  "--seed|0"
  "--policy|magic"
  "--policy|snapkv+magic"
  "--policy|h2o"
  "--policy|h2o|--budget|0"
  "--policy|h2o|--budget|10"
  "--policy|snapkv+adakv|--budget|64|--paged"
  "--policy|precomputed|--budget|64"
  "--budget|64"
  "--policy|full|--budget|64"
  "--policy|h2o|--budget|64|--crush|0.5"
  "--policy|h2o+kvcrush|--budget|64|--crush|2"
  "--policy|h2o|--budget|64|--window|0"
  "--policy|h2o|--budget|64|--alpha|0.3"
  "--policy|adakv|--budget|64|--alpha|2"
  "--policy|adakv|--budget|64|--alpha|x"
  "--model|/nonexistent/kvcrush/model.bin")
foreach(command_line IN LISTS bad_command_lines)
  string(REPLACE "|" ";" arguments "${command_line}")
  execute_process(COMMAND "${CLI}" ${arguments}
    OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE result)
  string(REGEX MATCHALL "\n" newlines "${errors}")
  list(LENGTH newlines lines)
  if(NOT result EQUAL 2 OR NOT lines EQUAL 1 OR NOT errors MATCHES "^kvcrush-llama: error: " OR NOT output STREQUAL "")
    message(FATAL_ERROR "kvcrush-llama ${command_line}: expected exit 2 and one stderr line, "
                        "got exit ${result}, stderr '${errors}', stdout '${output}'")
  endif()
  message("kvcrush-llama ${command_line} -> exit 2: ${errors}")
endforeach()

execute_process(COMMAND "${CLI}" --help OUTPUT_VARIABLE output RESULT_VARIABLE result)
if(NOT result EQUAL 0 OR NOT output MATCHES "^usage: kvcrush-llama" OR NOT output MATCHES "--policy"
   OR NOT output MATCHES "--budget" OR NOT output MATCHES "--temperature" OR NOT output MATCHES "--seed")
  message(FATAL_ERROR "kvcrush-llama --help: exit ${result}, output '${output}'")
endif()

# A missing model is bad input, named in the message.
execute_process(COMMAND "${CLI}" --model /nonexistent/kvcrush/model.bin
  ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 2 OR NOT errors MATCHES "/nonexistent/kvcrush/model.bin")
  message(FATAL_ERROR "kvcrush-llama with a missing model: exit ${result}, stderr '${errors}'")
endif()
