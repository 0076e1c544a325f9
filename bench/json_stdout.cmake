# ctest script: a benchmark binary run with --benchmark_format=json writes
# nothing but JSON to stdout, so that `... | python3 bench/summarize.py` and
# other pipes work. Called with -DBENCH=<binary> -DFILTER=<regex>.
execute_process(
  COMMAND ${BENCH} --benchmark_min_time=0.0001 --benchmark_filter=${FILTER} --benchmark_format=json
  OUTPUT_VARIABLE out
  RESULT_VARIABLE rc)
if(rc EQUAL 77)
  message("SKIPPED: ${BENCH} is built for an ISA this CPU lacks")
  return()
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${BENCH} exited with ${rc}")
endif()
string(JSON count ERROR_VARIABLE error LENGTH "${out}" benchmarks)
if(error)
  message(FATAL_ERROR "stdout of ${BENCH} is not benchmark JSON (${error}); it starts with: ${out}")
endif()
if(count EQUAL 0)
  message(FATAL_ERROR "${BENCH} ran no benchmark for filter ${FILTER}")
endif()
message(STATUS "${BENCH}: ${count} benchmarks, stdout is JSON")
