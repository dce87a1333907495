#!/usr/bin/env bash
# Run every libFuzzer target in BUILD_DIR/fuzz for SECONDS seconds each, from a
# corpus seeded with the files of fuzz/corpus/TARGET/ where there is one (text
# inputs, e.g. fuzz_http_query's request targets), else with one valid message
# per type (make_corpus, fuzz_decode's). Exits non-zero
# as soon as a target crashes, leaks or times out; the crashing input is kept
# in BUILD_DIR/fuzz/artifacts/ for replay (`fuzz_decode FILE`).
set -euo pipefail
if (($# != 2)); then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build=$1
seconds=$2
dir=$build/fuzz
seeds=$(cd "$(dirname "$0")/.." && pwd)/fuzz/corpus
shopt -s nullglob
targets=("$dir"/fuzz_*)
if ((${#targets[@]} == 0)); then
  echo "run-fuzz: no fuzz targets in $dir (configure with CC=clang -DAG_FUZZ=ON)" >&2
  exit 1
fi
mkdir -p "$dir/artifacts"
rc=0
for bin in "${targets[@]}"; do
  [[ -x $bin && -f $bin ]] || continue
  name=$(basename "$bin")
  corpus=$dir/corpus-$name
  mkdir -p "$corpus"
  if [[ -d $seeds/$name ]]; then
    cp "$seeds/$name"/* "$corpus"/
  elif [[ -x $dir/make_corpus ]]; then
    "$dir/make_corpus" "$corpus"
  fi
  echo "run-fuzz: $name for ${seconds}s"
  if ! "$bin" -max_total_time="$seconds" -max_len=1048576 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$dir/artifacts/$name-" -print_final_stats=1 "$corpus" \
      >"$dir/$name.log" 2>&1; then
    echo "run-fuzz: $name FAILED; last lines of $dir/$name.log:" >&2
    tail -40 "$dir/$name.log" >&2
    rc=1
  else
    grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "$dir/$name.log" | tail -2 || true
    echo "run-fuzz: $name passed"
  fi
done
exit $rc
