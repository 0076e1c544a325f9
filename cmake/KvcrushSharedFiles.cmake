# kvcrush_require_shared_files(<file>...): for the ctest scripts (cmake -P)
# that run the real models and texts of ../shared. When one of the files is
# missing, the script stops with a visible "SKIPPED:" line (the tests set it
# as their SKIP_REGULAR_EXPRESSION), except under CI=true, where the files
# are required and a missing one fails the test.
#
# A macro, not a function: its return() ends the calling script.
macro(kvcrush_require_shared_files)
  foreach(_kvcrush_shared_file IN ITEMS ${ARGN})
    if(NOT EXISTS "${_kvcrush_shared_file}")
      if("$ENV{CI}" STREQUAL "true")
        message(FATAL_ERROR "missing shared file ${_kvcrush_shared_file} (CI=true requires it)")
      endif()
      message("SKIPPED: missing shared file ${_kvcrush_shared_file}; set KVCRUSH_SHARED_DIR or -DKVCRUSH_SHARED_DIR")
      return()
    endif()
  endforeach()
endmacro()
