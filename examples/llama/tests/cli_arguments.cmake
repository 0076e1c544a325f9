# Bad command lines make kvcrush-llama print one line on stderr and exit 2;
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
  "positional")
foreach(command_line IN LISTS bad_command_lines)
  string(REPLACE "|" ";" arguments "${command_line}")
  execute_process(COMMAND "${CLI}" ${arguments}
    OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE result)
  string(REGEX MATCHALL "\n" newlines "${errors}")
  list(LENGTH newlines lines)
  if(NOT result EQUAL 2 OR NOT lines EQUAL 1 OR NOT errors MATCHES "^kvcrush-llama: " OR NOT output STREQUAL "")
    message(FATAL_ERROR "kvcrush-llama ${command_line}: expected exit 2 and one stderr line, "
                        "got exit ${result}, stderr '${errors}', stdout '${output}'")
  endif()
  message("kvcrush-llama ${command_line} -> exit 2: ${errors}")
endforeach()

execute_process(COMMAND "${CLI}" --help OUTPUT_VARIABLE output RESULT_VARIABLE result)
if(NOT result EQUAL 0 OR NOT output MATCHES "^usage: kvcrush-llama")
  message(FATAL_ERROR "kvcrush-llama --help: exit ${result}, output '${output}'")
endif()

# A missing file is a runtime error (exit 1), not a usage error.
execute_process(COMMAND "${CLI}" --model /nonexistent/kvcrush/model.bin
  ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 1 OR NOT errors MATCHES "/nonexistent/kvcrush/model.bin")
  message(FATAL_ERROR "kvcrush-llama with a missing model: exit ${result}, stderr '${errors}'")
endif()
