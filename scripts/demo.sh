#!/usr/bin/env bash
# demo.sh BUILD_DIR - what `make demo` runs: start altgradd on its embedded
# defaults (./var/*.sock, ./var/altgrad.db) from the project root, with
# block-scaled formats beside per-tensor ones ($AG_DEMO_FORMATS), train the
# demo MLP against it, print the stall rate per tensor and format with a
# sparkline, the current scales and the worst tensors and the address of the
# daemon's web page (http://127.0.0.1:8787/ unless that port was taken), then
# stop the daemon with SIGTERM and check that it exited cleanly.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
DAEMON=$BUILD/daemon/altgradd
CLI=$BUILD/client/cli/altgrad
TRAINER=$BUILD/examples/ag_mlp_train
STEPS=${AG_DEMO_STEPS:-200}
RUN=${AG_DEMO_RUN:-mlp-demo-$(date +%Y%m%d-%H%M%S)}
LOG=var/altgradd-demo.log

for bin in "$DAEMON" "$CLI" "$TRAINER"; do
    if [[ ! -x $bin ]]; then
        echo "demo.sh: $bin is not built (run: make build)" >&2
        exit 1
    fi
done

# The daemon's defaults, spelled out so the client and CLI never pick the
# systemd sockets of an installed altgradd instead.
export ALTGRAD_QUERY=ipc://var/query.sock
export ALTGRAD_INGEST=ipc://var/ingest.sock

if "$CLI" --timeout 300 status >/dev/null 2>&1; then
    echo "demo.sh: an altgradd already answers on $ALTGRAD_QUERY; stop it first" >&2
    exit 1
fi

mkdir -p var
DPID=
cleanup() {
    local rc=$?
    if [[ -n $DPID ]] && kill -0 "$DPID" 2>/dev/null; then
        kill -TERM "$DPID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$DPID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DPID" 2>/dev/null || true
        wait "$DPID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "demo.sh: failed (exit $rc); daemon log: $LOG" >&2
        tail -n 20 "$LOG" >&2 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n== %s\n\n' "$*"; }

# The seed's five formats, OCP FP8 E4M3 per tensor, and two block-scaled
# formats (MX FP8 with an E8M0 scale per 32 elements, NVFP4 with an E4M3
# scale per 16): docs/numerics.md.
FORMATS=${AG_DEMO_FORMATS:-E0M7,E1M6,E3M4,E5M2,E7M0,E4M3,MXFP8_E4M3,NVFP4}

section "starting altgradd --formats $FORMATS (log: $LOG)"
"$DAEMON" --formats "$FORMATS" >"$LOG" 2>&1 &
DPID=$!
ready=0
for _ in $(seq 1 30); do
    if ! kill -0 "$DPID" 2>/dev/null; then
        echo "demo.sh: altgradd exited at start:" >&2
        cat "$LOG" >&2
        DPID=
        exit 1
    fi
    if "$CLI" --timeout 300 status >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ $ready -ne 1 ]]; then
    echo "demo.sh: altgradd did not answer on $ALTGRAD_QUERY in time" >&2
    exit 1
fi
"$CLI" status

section "training run '$RUN' ($STEPS steps)"
"$TRAINER" --run "$RUN" --steps "$STEPS" | tee var/demo-trainer.out
# The daemon may have filed the run under another name (RUN.2 when another
# launch had RUN): the trainer's first line says which.
used=$(sed -n "1s/^ag_mlp_train: run '\([^']*\)'.*/\1/p" var/demo-trainer.out)
if [[ -n $used && $used != "$RUN" ]]; then
    RUN=$used
fi

# The trainer exits 0 only once the daemon confirmed it stored every message
# (3 when it did not, which stops the demo), so the run is committed; check
# (bounded) that the last step's snapshot is there.
committed=0
for _ in $(seq 1 100); do
    last=$("$CLI" history "$RUN" fc1.weight --csv 2>/dev/null | tail -n 1 | cut -d, -f1 || true)
    if [[ $last == "$STEPS" ]]; then
        committed=1
        break
    fi
    sleep 0.1
done
if [[ $committed -ne 1 ]]; then
    echo "demo.sh: the daemon did not commit step $STEPS within 10 s" >&2
    exit 1
fi

section "stall rate per tensor and format over the steps"
"$CLI" report "$RUN" --width 32

section "per-tensor E4M3 beside block-scaled MXFP8_E4M3 and NVFP4 (same elements, E4M3; scales per block)"
"$CLI" report "$RUN" --format E4M3,MXFP8_E4M3,NVFP4 --width 32

section "current scales (E5M2)"
"$CLI" scales "$RUN" --format E5M2

section "tensors losing the most updates (E5M2, last 50 steps)"
"$CLI" top "$RUN" --format E5M2 --window 50

# The web page, if HTTP came up: a taken port is only a warning in the log
# (the daemon goes on without HTTP), so ask the log rather than assume 8787.
PAGE=$(sed -n 's|^.*http: serving the page, API and metrics on \(http://[^ ]*\).*$|\1|p' \
    "$LOG" | tail -n 1)
if [[ -n $PAGE ]]; then
    echo
    echo "web page (stall rate, amax and scale curves, top tensors): $PAGE"
    echo "(served while altgradd runs; the demo stops it next)"
fi

section "stopping altgradd"
kill -TERM "$DPID"
set +e
wait "$DPID"
code=$?
set -e
DPID=
if [[ $code -ne 0 ]]; then
    echo "demo.sh: altgradd exited with status $code on SIGTERM" >&2
    exit 1
fi
echo "altgradd stopped cleanly (exit 0)"

section "read back from var/altgrad.db with the daemon stopped"
"$CLI" --db var/altgrad.db top "$RUN" --format E3M4 --limit 5
