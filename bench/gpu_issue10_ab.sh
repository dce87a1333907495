#!/usr/bin/env bash
# bench/gpu_issue10_ab.sh - two builds of the snapshot pass side by side on a
# many-core host (issue 10): bench_core of each, alternated, then the
# snapshot stream of bench_ingest (one tensor, and as many clients as cores
# up to 16) against each build's altgradd, alternated, the same bench binary.
#
#   bench/gpu_issue10_ab.sh NEW_BUILD_DIR OLD_BUILD_DIR
#
# OLD_BUILD_DIR needs daemon/altgradd and bench/bench_core; NEW_BUILD_DIR
# also bench/bench_ingest. AG_BENCH_STEPS (default 100) snapshots per client.
set -uo pipefail
new=$(cd "$1" && pwd) || exit 2
old=$(cd "$2" && pwd) || exit 2
cores=$(nproc)
tensors=${AG_BENCH_TENSORS:-$((cores < 16 ? cores : 16))}
steps=${AG_BENCH_STEPS:-100}
echo "host: $(uname -n), $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in 1 2; do
  for b in old new; do
    dir=$old; [[ $b == new ]] && dir=$new
    echo "== bench_core, $b build, round $round"
    "$dir/bench/bench_core" | grep -E "plain read|multi 5 formats|daemon pass 5|snapshot job"
  done
done
for b in new old new old; do
  dir=$old; [[ $b == new ]] && dir=$new
  echo "== snapshot stream against the $b altgradd ($steps snapshots of 1M elements a client, $tensors clients)"
  AG_BUILD_DIR=$dir AG_BENCH_ONLY=snapshots AG_BENCH_STEPS=$steps AG_BENCH_TENSORS=$tensors \
    timeout 150 "$new/bench/bench_ingest" | grep -v "send alone\|1 client, CPU"
done
