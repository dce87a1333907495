#!/usr/bin/env bash
# bench/gpu_host_ingest.sh - altgradd's snapshot ingest on a many-core host
# (issue 10: >= 8 GB/s of w+g on the 16-core GPU host; CPU only). Runs the
# prebuilt bench_ingest (no compiler or package registry needed there): one
# tensor from one client and several tensors from as many clients, each with
# the default pool (a thread per core) and with one pool thread, where the
# CPU went per GB, and the bench's clients alone against a receiver that
# discards; then the whole benchmark (statistics, RSS). About 1-3 minutes, 290 s at most.
#
#   bench/gpu_host_ingest.sh [BUILD_DIR]     (default: build)
#
# AG_BENCH_STEPS (default 100) snapshots per client and line; AG_BENCH_TENSORS
# (default: the cores, at most 16) clients of the several-tensor lines.
set -uo pipefail
build=$(cd "${1:-build}" && pwd) || exit 2
bench=$build/bench/bench_ingest
daemon=$build/daemon/altgradd
for f in "$bench" "$daemon"; do
  [[ -x $f ]] || { echo "gpu_host_ingest: $f is missing (make build first)" >&2; exit 2; }
  if ldd "$f" | grep -q "not found"; then
    echo "gpu_host_ingest: $f needs libraries this host lacks:" >&2
    ldd "$f" | grep "not found" >&2
    exit 2
  fi
done
cores=$(nproc)
tensors=${AG_BENCH_TENSORS:-$((cores < 16 ? cores : 16))}
steps=${AG_BENCH_STEPS:-100}
export AG_BUILD_DIR=$build
echo "host: $(uname -n), $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== snapshot stream ($steps snapshots of 1M elements per client; $tensors clients in the several-tensor lines)"
AG_BENCH_ONLY=snapshots AG_BENCH_STEPS=$steps AG_BENCH_TENSORS=$tensors timeout 150 "$bench"
rc=$?
echo "== the whole benchmark (statistics, snapshots, RSS)"
AG_BENCH_TENSORS=$tensors timeout 140 "$bench" || rc=$?
exit $rc
