#!/usr/bin/env bash
# bench/gpu_shm_ab.sh - snapshots through shared memory against through the
# socket (AG_BENCH_SHM=off), alternated, on a many-core host: bench_ingest's
# snapshot lines (one tensor; AG_BENCH_TENSORS clients), ROUNDS times each
# (default 2). Then, unless NO_MONITOR=1, the ~85 M char-LM with
# compute="daemon" and with counts on the device (bench/gpu_monitor.py).
#
#   bench/gpu_shm_ab.sh [BUILD_DIR] [OUT_JSON]
set -uo pipefail
build=$(cd "${1:-build}" && pwd) || exit 2
out=${2:-}
bench=$build/bench/bench_ingest
cores=$(nproc)
tensors=${AG_BENCH_TENSORS:-$((cores < 16 ? cores : 16))}
steps=${AG_BENCH_STEPS:-100}
rounds=${ROUNDS:-2}
export AG_BUILD_DIR=$build
echo "host: $(uname -n), $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
for r in $(seq 1 "$rounds"); do
  for mode in shm off; do
    echo "== round $r, $( [[ $mode == off ]] && echo 'through the socket (AG_BENCH_SHM=off)' || echo 'through shared memory (default)')"
    AG_BENCH_SHM=$([[ $mode == off ]] && echo off || echo on) AG_BENCH_ONLY=snapshots \
      AG_BENCH_STEPS=$steps AG_BENCH_TENSORS=$tensors timeout 150 "$bench" | grep -v "^snapshot send\|^  1 client" || rc=1
  done
done
if [[ ${NO_MONITOR:-0} != 1 ]]; then
  echo "== ~85 M char-LM (bench/gpu_monitor.py)"
  here=$(cd "$(dirname "$0")" && pwd)
  python3 "$here/gpu_monitor.py" --altgradd "$build/daemon/altgradd" --only 85m-daemon 85m-device \
    ${out:+--json "$out"} || rc=1
fi
exit $rc
