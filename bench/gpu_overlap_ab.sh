#!/usr/bin/env bash
# bench/gpu_overlap_ab.sh - two prebuilt builds' snapshot lines of bench_ingest
# alternated on a many-core host (no compiler there), ROUNDS times (default
# 3), after a check of what the host's cores add to a pure compute loop
# (bench/cpu_ceiling: 1 thread against 2). Each DIR holds daemon/altgradd and
# bench/bench_ingest (a build folder, or a copy of those two).
#
#   bench/gpu_overlap_ab.sh OLD_DIR NEW_DIR [CEILING_BINARY]
set -uo pipefail
old=$(cd "$1" && pwd) || exit 2
new=$(cd "$2" && pwd) || exit 2
ceiling=${3:-}
echo "host: $(uname -n), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -n $ceiling && -x $ceiling ]] && "$ceiling"
for r in $(seq 1 "${ROUNDS:-3}"); do
  for b in "$old" "$new"; do
    echo "== $b round $r"
    AG_BENCH_ONLY=snapshots AG_BENCH_STEPS=${AG_BENCH_STEPS:-100} \
      AG_BENCH_TENSORS=${AG_BENCH_TENSORS:-16} timeout 150 "$b/bench/bench_ingest" |
      grep -E "^snapshot ingest"
  done
done
