#!/usr/bin/env bash
# bench/gpu_staged_ab.sh OLDTREE [ROUNDS] - the Monitor's compute="daemon"
# fetch from CUDA, this tree's Python against OLDTREE's (python/, examples/
# and bench/gpu_monitor.py of an earlier commit, e.g. packed with
#   mkdir -p .gpu/oldtree && git archive REV python examples bench/gpu_monitor.py |
#     tar -x -C .gpu/oldtree ),
# the same altgradd (.gpu/build, bench/gpu_pack.sh) for both, alternated per
# round: the ~85 M char-LM, whole tensors, every 10 steps and every step.
# Prints each run's summary line and the Monitor's fetch seconds.
set -uo pipefail
old=${1:?usage: bench/gpu_staged_ab.sh OLDTREE [ROUNDS]}
rounds=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
daemon=${ALTGRADD:-$PWD/.gpu/build/daemon/altgradd}
rc=0
for r in $(seq "$rounds"); do
  for side in old new; do
    tree=$here/..; [[ $side == old ]] && tree=$old
    echo "== round $r, $side python"
    timeout 280 python3 "$tree/bench/gpu_monitor.py" --altgradd "$daemon" \
      --only 85m-daemon 85m-daemon-every1 > "/tmp/staged-$side-$r.txt" 2>&1 || rc=1
    grep '^{' "/tmp/staged-$side-$r.txt" | python3 "$here/gpu_staged_ab_summary.py"
    tail -4 "/tmp/staged-$side-$r.txt" | grep -v '^{' || true
  done
done
exit $rc
