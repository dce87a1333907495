#!/usr/bin/env bash
# test_exports.sh - libaltgrad.so exports nothing outside the ag_ prefix and
# carries a SONAME of libaltgrad.so.VERSION, VERSION the SOVERSION (MAJOR.MINOR
# while MAJOR is 0: 0.x releases change the ABI). Usage: test_exports.sh LIB VERSION
set -uo pipefail
lib=$1
major=$2
for tool in nm readelf; do
  command -v $tool >/dev/null || { echo "SKIP $tool is not installed (binutils)"; exit 77; }
done
syms=$(nm -D --defined-only "$lib" | awk 'NF >= 3 {print $3}') || { echo "FAIL nm $lib"; exit 1; }
count=$(printf '%s\n' "$syms" | grep -c .)
stray=$(printf '%s\n' "$syms" | grep -v '^ag_' | grep .)
fail=0
if [[ $count -eq 0 ]]; then
  echo "FAIL $lib exports no symbol at all"
  fail=1
elif [[ -n $stray ]]; then
  echo "FAIL symbols outside the ag_ prefix exported from $lib:"
  printf '  %s\n' $stray
  fail=1
else
  echo "ok   all $count exported symbols start with ag_"
fi
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [[ $soname == "libaltgrad.so.$major" ]]; then
  echo "ok   SONAME $soname"
else
  echo "FAIL SONAME is '$soname', expected libaltgrad.so.$major"
  fail=1
fi
exit $fail
