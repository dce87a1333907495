#!/usr/bin/env bash
# Run ctest in build dir $1 verbosely into a log, print each Criterion
# synthesis line and ctest's own summary; on failure print the failing output.
set -uo pipefail
dir=$1; shift
log=$dir/ctest.log
# One rerun of a failed test (--repeat until-pass:2): a test that fails twice
# fails the run; a single failure is still printed below as a flake to chase.
ctest --test-dir "$dir" --output-on-failure -V --repeat until-pass:2 "$@" >"$log" 2>&1
rc=$?
grep -E '^[0-9]+: \[====\] Synthesis|^ *[0-9]+/[0-9]+ Test +#' "$log" | sed 's/^[0-9]*: //'
if ((rc != 0)); then
  echo "---- ctest failed in $dir; failing output (from $log) ----"
  grep -E 'FAIL|Failed|ERROR|Sanitizer|\[FAIL\]|\[----\]' "$log" | head -200
fi
if grep -qE '\*\*\*(Failed|Timeout)|Test Failed' "$log" && ((rc == 0)); then
  echo "---- flaky: a test failed once and passed on its rerun (from $log) ----"
  grep -E '\*\*\*(Failed|Timeout)' "$log" | head -20
fi
grep -E 'tests passed|tests failed|Total Test time' "$log"
exit $rc
