#!/bin/sh
# Runs one fuzzer from a KVCRUSH_BUILD_FUZZERS build, single process, at low
# priority: usage run_fuzzer.sh <build-dir> <target> <seconds> [extra seed dirs...]
# The committed seeds (tests/fuzz/corpus/<target>) are read, never written:
# new inputs go to <build-dir>/fuzz-corpus/<target>, crashes to
# <build-dir>/fuzz-artifacts/<target>/, the log to <build-dir>/fuzz-<target>.log.
set -eu
build=$1 target=$2 seconds=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
corpus=$build/fuzz-corpus/$target
artifacts=$build/fuzz-artifacts/$target
mkdir -p "$corpus" "$artifacts"
exec nice -n 19 "$build/tests/fuzz/kvcrush_fuzz_$target" \
  -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$artifacts/" "$corpus" "$here/corpus/$target" "$@" \
  > "$build/fuzz-$target.log" 2>&1
