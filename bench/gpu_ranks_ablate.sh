#!/usr/bin/env bash
# bench/gpu_ranks_ablate.sh OUT_DIR [MODE [SIZE [BLOCKS]]] - where the Monitor's step time
# goes under torch.distributed on 2 GPUs: bench/gpu_ranks.py --interleave-only (two copies of
# the model in one process, blocks of --every steps with and without the Monitor, alternated)
# for the Monitor as shipped and with parts of it turned off. Writes OUT_DIR/abl-<name>.json
# and prints one line per variant. Needs what bench/gpu_ranks_all.sh needs.
set -uo pipefail
out=${1:?OUT_DIR}; mode=${2:-fsdp2}; size=${3:-85m}; blocks=${4:-44}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
rc=0
port=29611
while IFS='|' read -r name kw; do
  [ -z "$name" ] && continue
  timeout 280 "$py" -m torch.distributed.run --nproc-per-node 2 --master-port $port \
    "$here/gpu_ranks.py" --mode "$mode" --size "$size" --interleave "$blocks" \
    --interleave-only --monitor-kw "$kw" --out "$out/abl-$name.json" > "$out/abl-$name.log" 2>&1
  r=$?; ((r)) && rc=$r
  port=$((port + 1))
  echo "== $name $kw: exit $r: $(grep -h '^interleaved' "$out/abl-$name.log")"
done <<'V'
shipped|{}
no-stats|{"activations": false, "gradients": false}
no-sampling|{"start": 1000000000}
shipped-again|{}
V
exit $rc
