# ctest script: a benchmark binary run with --benchmark_format=json writes
# nothing but JSON to stdout, so that pipes such as `... | python3 -m json.tool`
# work, and an unknown option exits with 2. Called with -DBENCH=<binary>
# -DFILTER=<regex>.
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

# An option it does not know is bad usage: exit status 2, as in every tool.
execute_process(COMMAND ${BENCH} --no-such-option OUTPUT_QUIET ERROR_QUIET RESULT_VARIABLE bad_rc)
if(NOT bad_rc EQUAL 2)
  message(FATAL_ERROR "${BENCH} --no-such-option exited with ${bad_rc}, expected 2")
endif()
