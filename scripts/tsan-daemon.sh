#!/usr/bin/env bash
# tsan-daemon.sh TSAN_BUILD BENCH: ThreadSanitizer over the real altgradd.
# Criterion's runner does not start under TSan here, so the daemon alone is
# built with -fsanitize=thread (TSAN_BUILD/daemon/altgradd) and driven by the
# plain bench_ingest (BENCH), which starts it on temporary sockets:
#   - snapshots: one tensor, then 4 tensors from 4 clients, each with the
#     default pool and with one pool thread (chunks on the pool, pipelined
#     snapshots of one tensor, the writer, the query threads answering the
#     clients' flushes);
#   - polled: snapshot ingest while a browser-like client polls /api/history
#     and /metrics (the HTTP workers beside the pool).
# Every report TSan writes (log_path) fails the run, as does a failed bench.
# TSan needs ASLR off here (setarch -R), which the daemon inherits.
set -uo pipefail
tsan=${1:?usage: tsan-daemon.sh TSAN_BUILD BENCH} bench=${2:?usage: tsan-daemon.sh TSAN_BUILD BENCH}
daemon=$tsan/daemon/altgradd
if [ "$(nm "$daemon" 2>/dev/null | grep -c '__tsan_')" -eq 0 ]; then
  echo "tsan-daemon: $daemon is not built with -fsanitize=thread" >&2
  exit 1
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rc=0
for only in snapshots polled; do
  echo "tsan-daemon: $only (AG_BENCH_ONLY=$only) against $daemon"
  if ! TSAN_OPTIONS="log_path=$logs/altgradd:halt_on_error=0" AG_BUILD_DIR=$tsan \
    AG_BENCH_ONLY=$only AG_BENCH_STEPS=6 AG_BENCH_TENSORS=4 AG_BENCH_ROUNDS=1 \
    setarch "$(uname -m)" -R "$bench" >"$logs/bench-$only.out" 2>&1; then
    echo "tsan-daemon: bench_ingest ($only) failed:" >&2
    tail -20 "$logs/bench-$only.out" >&2
    rc=1
  fi
done
reports=$(find "$logs" -name 'altgradd.*' | sort)
if [ -n "$reports" ]; then
  for r in $reports; do
    echo "---- $r" >&2
    cat "$r" >&2
  done
  echo "tsan-daemon: $(echo "$reports" | wc -l) daemon process(es) reported data races" >&2
  rc=1
fi
((rc == 0)) && echo "tsan-daemon: no ThreadSanitizer report from altgradd (snapshots, polled)"
exit $rc
