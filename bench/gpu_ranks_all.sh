#!/usr/bin/env bash
# bench/gpu_ranks_all.sh OUT_DIR [SIZE [gpu_ranks.py options...]] - issue 11's measurement on a host with 2 GPUs:
# bench/gpu_ranks.py under torchrun with FSDP2 (fully_shard) and with DDP, the
# Monitor counting on the device, each checked against the gathered whole
# tensors and timed against the same training without the Monitor. Writes
# OUT_DIR/ranks-<mode>-<size>.json and prints one line per run.
# Needs: torch with CUDA and FSDP2, altgradd at $AG_BUILD_DIR/daemon/altgradd,
# libaltgrad (ALTGRAD_LIBRARY or the build's), PYTHONPATH with python/.
set -uo pipefail
out=${1:?OUT_DIR}; size=${2:-85m}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
rc=0
port=29511
for mode in ddp fsdp2; do
  f=$out/ranks-$mode-$size.json
  timeout 560 "$py" -m torch.distributed.run --nproc-per-node 2 --master-port $port \
    "$here/gpu_ranks.py" --mode "$mode" --size "$size" --out "$f" "${@:3}" > "$out/ranks-$mode-$size.log" 2>&1
  r=$?; ((r)) && rc=$r
  port=$((port + 1))
  echo "== $mode $size: exit $r"
  "$py" - "$f" <<'PY' || tail -20 "$out/ranks-$mode-$size.log"
import json, sys
d = json.load(open(sys.argv[1]))
keys = [k for k in d if k not in ("report", "mismatches")]
print({k: d[k] for k in keys})
PY
done
exit $rc
