#!/usr/bin/env bash
# bench/gpu_pipeline_ab.sh - the snapshot lines of bench_ingest from several
# prebuilt builds, alternated ROUNDS times (default 2), one round each of
# the one-tensor lines (AG_BENCH_ROUNDS=1) and the many-tensor lines
# (AG_BENCH_TENSORS, default 16). Each DIR holds daemon/altgradd and
# bench/bench_ingest (a build folder, or a copy of those two).
#
#   bench/gpu_pipeline_ab.sh DIR...
set -uo pipefail
echo "host: $(uname -n), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for b in "$@"; do
    echo "== $b round $r"
    AG_BENCH_ONLY=snapshots AG_BENCH_STEPS=${AG_BENCH_STEPS:-100} AG_BENCH_ROUNDS=1 \
      AG_BENCH_TENSORS=${AG_BENCH_TENSORS:-16} timeout 150 "$b/bench/bench_ingest" |
      grep -E "^snapshot ingest|on every core"
  done
done
