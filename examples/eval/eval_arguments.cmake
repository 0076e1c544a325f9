cmake_minimum_required(VERSION 3.25)
# kvcrush-eval rejects bad arguments and input files with one line on stderr
# and exit code 2.
foreach(args "--budgets;1.5" "--budgets;abc" "--policies;snapkv+magic" "--crush;2" "--format;xml" "--chunks;0"
             "--wat" "--model" "--anchor;middle" "--context;8" "--prefill;-1" "--byte-budgets;0"
             "--precisions;int3" "--precisions;mixed-fp8" "--byte-policies;knorm" "--quant-group;20"
             "--quant-eviction;never" "--high-fraction;0" "--byte-policies;streaming" "--context;0" "--budgets=abc"
             "--quiet=yes" "--chunks=" "--crush-split;sometimes" "--crush-mass;0.5" "--crush-split;adaptive;--crush-mass;0"
             "--crush-split;adaptive;--crush-mass;1.5" "--crush-split;adaptive;--crush-mass;abc" "--crush-split;adaptive;--crush;0.5"
             "--crush-split;adaptive;--ablation" "--crush-split;adaptive;--policies;keydiff+kvcrush"
             "--crush-split;adaptive;--precisions;crush-int4"
             "--model;/nonexistent.bin")
  execute_process(COMMAND "${EVAL}" ${args} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 2)
    message(FATAL_ERROR "kvcrush-eval ${args}: exit ${result}, expected 2")
  endif()
  if(NOT err MATCHES "^kvcrush-eval: error: [^\n]*\n$")
    message(FATAL_ERROR "kvcrush-eval ${args}: expected one error line, got: ${err}")
  endif()
endforeach()
execute_process(COMMAND "${EVAL}" --help RESULT_VARIABLE result OUTPUT_VARIABLE out)
if(NOT result EQUAL 0 OR NOT out MATCHES "--policies")
  message(FATAL_ERROR "kvcrush-eval --help failed")
endif()
execute_process(COMMAND "${EVAL}" --model /nonexistent.bin --quiet RESULT_VARIABLE result ERROR_VARIABLE err)
if(NOT result EQUAL 2 OR NOT err MATCHES "nonexistent")
  message(FATAL_ERROR "a missing model is bad input, reported with exit 2: ${result} ${err}")
endif()
message("eval arguments: all refused cleanly")
