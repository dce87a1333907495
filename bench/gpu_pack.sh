#!/usr/bin/env bash
# bench/gpu_pack.sh [BUILD_DIR] - pack what the GPU machines need to run
# altgrad without a compiler or a package registry: .gpu/build (altgradd,
# libaltgrad.so, the benches) and .gpu/lib (the shared libraries they load
# beyond libc). Give ".gpu" to the device's carry, then there:
#   export LD_LIBRARY_PATH=$PWD/.gpu/lib ALTGRAD_LIBRARY=$PWD/.gpu/build/libaltgrad.so
#   export PYTHONPATH=$PWD/python
set -euo pipefail
build=${1:-build}
[[ -x $build/daemon/altgradd && -f $build/libaltgrad.so ]] ||
  { echo "gpu_pack: $build has no altgradd or libaltgrad.so (make build first)" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/build/daemon .gpu/build/bench .gpu/lib
cp "$build/daemon/altgradd" .gpu/build/daemon/
cp -L "$build/libaltgrad.so" .gpu/build/
find "$build/bench" -maxdepth 1 -type f -executable -name 'bench_*' -exec cp {} .gpu/build/bench/ \;
for f in .gpu/build/daemon/altgradd .gpu/build/libaltgrad.so .gpu/build/bench/*; do
  ldd "$f" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" .gpu/lib/; done
du -sh .gpu | cut -f1 | sed 's/^/gpu_pack: .gpu holds /'
