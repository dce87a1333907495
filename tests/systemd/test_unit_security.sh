#!/usr/bin/env bash
# test_unit_security.sh - the unit's hardening scores 2.0 or lower in
# `systemd-analyze security --offline=true` (prints the score and what is
# left exposed). Usage: test_unit_security.sh UNIT. Exit 77: skipped.
set -uo pipefail
unit=$1
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP systemd-analyze is not installed (apt-get install systemd)"
  exit 77
fi
out=$(systemd-analyze security --offline=true "$unit" 2>&1)
rc=$?
printf '%s\n' "$out" | grep -E '^✗|Overall exposure'
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [[ $rc -ne 0 || -z $score ]]; then
  echo "FAIL systemd-analyze security did not score the unit (rc $rc)"
  printf '%s\n' "$out" | tail -20
  exit 1
fi
# --threshold counts tenths: 20 is an exposure of 2.0.
if ! systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1; then
  echo "FAIL exposure $score is above 2.0"
  exit 1
fi
echo "ok   exposure $score <= 2.0"
