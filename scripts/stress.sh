#!/usr/bin/env bash
# stress.sh BUILD_DIR N: run the suites that start daemons, receivers and
# clients (client, identity, query, daemon integration, stray connections, run
# identity, a filling disk, the CLI against the daemon) N times each, in the
# given build (make stress uses the ASan one), with no rerun: the first failure
# or hang (ctest's timeout) fails it.
set -uo pipefail
dir=$1 n=${2:-30}
suites='^(test_client_client|test_client_identity|test_client_query|test_altgradd|test_stray|test_run_identity|test_diskfull|test_cli_daemon|test_cli_sources)$'
log=$dir/stress.log
echo "stress: $suites x $n in $dir (log: $log)"
ctest --test-dir "$dir" -R "$suites" --repeat until-fail:"$n" --timeout 300 \
  --output-on-failure >"$log" 2>&1
rc=$?
grep -E '^ *[0-9]+/[0-9]+ Test +#|tests passed|tests failed' "$log"
((rc == 0)) || { echo "---- stress failed; see $log"; grep -E 'FAIL|Timeout|Sanitizer' "$log" | head -40; }
exit $rc
