#!/usr/bin/env bash
# Run ctest in build dir $1 verbosely into a log, print each Criterion
# synthesis line and ctest's own summary; on failure print the failing output.
set -uo pipefail
dir=$1; shift
log=$dir/ctest.log
# No reruns: a test that fails once fails the run (make stress repeats the
# suites that start daemons and clients to catch what fails rarely).
ctest --test-dir "$dir" --output-on-failure -V "$@" >"$log" 2>&1
rc=$?
grep -E '^[0-9]+: \[====\] Synthesis|^ *[0-9]+/[0-9]+ Test +#' "$log" | sed 's/^[0-9]*: //'
if ((rc != 0)); then
  echo "---- ctest failed in $dir; failing output (from $log) ----"
  grep -E 'FAIL|Failed|ERROR|Sanitizer|\[FAIL\]|\[----\]' "$log" | head -200
fi
# A daemon test that hung printed every thread's stack (tests/daemon/harness.c).
if grep -q 'still running after' "$log"; then
  echo "---- stacks of a test that was still running (from $log) ----"
  grep -E 'still running after|---- thread|\[0x[0-9a-f]+\]$' "$log" | head -400
fi
grep -E 'tests passed|tests failed|Total Test time' "$log"
exit $rc
