#!/usr/bin/env bash
# bench/gpu_store_checks.sh OUT [BUILD_DIR] - issues 10 and 17 on the GPU host
# in one command (the device's time is counted): the snapshot stream on many
# cores (bench/gpu_host_ingest.sh: >= 8 GB/s of w+g, R, all cores / one),
# the small-snapshot and counts-message ingest of bench_store there (CPU a
# snapshot; the 100,000/s target is the 2-core dev machine's), and the ~85 M
# char-LM with the Monitor, whole-tensor snapshots to the daemon and counts
# on the device, every 10 steps (bench/gpu_monitor.py: dropped and stored).
# BUILD_DIR holds daemon/altgradd and bench/ (default .gpu/build: what
# /work/gpu-pack.sh-style packing carries to a machine without compilers);
# libaltgrad.so is found through ALTGRAD_LIBRARY / LD_LIBRARY_PATH.
set -uo pipefail
out=${1:?usage: bench/gpu_store_checks.sh OUT [BUILD_DIR]}
build=$(cd "${2:-.gpu/build}" && pwd) || exit 2
mkdir -p "$out"
rc=0
echo "== host ingest (issue 10)"
bash "$(dirname "$0")/gpu_host_ingest.sh" "$build" > "$out/host-ingest.txt" 2>&1 || rc=1
grep -E "^snapshot|CPU s per GB" "$out/host-ingest.txt" | head -12
echo "== small snapshots and counts messages (issue 17)"
for mode in ingest counts; do
  AG_BUILD_DIR=$build AG_BENCH_ONLY=$mode AG_BENCH_STEPS=1500 timeout 120 \
    "$build/bench/bench_store" >> "$out/host-store.txt" 2>&1 || rc=1
done
cat "$out/host-store.txt"
echo "== the ~85 M model, Monitor every 10 steps"
timeout 300 python3 "$(dirname "$0")/gpu_monitor.py" --altgradd "$build/daemon/altgradd" \
  --only 85m-daemon 85m-device --json "$out/monitor-85m.json" > "$out/monitor-85m.txt" 2>&1 || rc=1
tail -20 "$out/monitor-85m.txt"
exit $rc
