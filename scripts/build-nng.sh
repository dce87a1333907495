#!/usr/bin/env bash
# Build the nng that altgrad links: Debian's nng source package (fetched with
# apt-get source, so apt checks every file against the archive's signed
# index), Debian's own patches, then ours from scripts/nng/, built static and
# position-independent into a private prefix that CMake uses
# (AG_NNG_PREFIX, default ./.deps/nng). Why: docs/nng.md.
#
#   scripts/build-nng.sh [PREFIX]
#
# Idempotent: a stamp in the prefix names the source version and the patches'
# checksum; a matching stamp means nothing to do. Needs cmake, a C compiler,
# dpkg-dev (dpkg-source), libmbedtls-dev (nng's TLS engine) and network access
# to deb.debian.org; no root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=${1:-${AG_NNG_PREFIX:-$repo/.deps/nng}}
# The newest nng whose source this workplace's Debian mirror serves is
# bookworm's 1.5.2-2 (trixie's 1.10.1 source answers 404 there); see docs/nng.md.
suite=${AG_NNG_SUITE:-bookworm}
version=${AG_NNG_VERSION:-1.5.2-2}
patches=("$here"/nng/*.patch)
sum=$(cat "${patches[@]}" | sha256sum | cut -c1-16)
# "tls mbedtls": built with NNG_ENABLE_TLS (tls+tcp://, docs/nng.md); a prefix
# built before that has another stamp and is rebuilt.
stamp="nng $version patches $sum tls mbedtls"
if [[ -f $prefix/.altgrad-stamp && $(cat "$prefix/.altgrad-stamp") == "$stamp" \
      && -f $prefix/lib/libnng.a ]]; then
  exit 0
fi
echo "building nng $version (+${#patches[@]} altgrad patch(es)) into $prefix"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt=(apt-get -q -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
     -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1)
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian $suite main" >"$work/sources.list"
"${apt[@]}" update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; exit 1; }
(cd "$work/src" && "${apt[@]}" source --download-only "nng=$version" >>"$work/apt.log" 2>&1) \
  || { cat "$work/apt.log" >&2; echo "build-nng: cannot fetch nng $version source" >&2; exit 1; }
dsc=$(ls "$work"/src/nng_*.dsc)
# dpkg-source unpacks the orig tarball and applies Debian's quilt series.
(cd "$work/src" && dpkg-source --no-check -x "$dsc" nng >/dev/null)
for p in "${patches[@]}"; do
  patch -d "$work/src/nng" -p1 -s --no-backup-if-mismatch <"$p"
done

cmake -S "$work/src/nng" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DNNG_TESTS=OFF -DNNG_TOOLS=OFF -DNNG_ENABLE_NNGCAT=OFF -DNNG_ENABLE_TLS=ON \
  -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib >"$work/cmake.log" 2>&1 \
  || { cat "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log" >&2; exit 1; }
rm -rf "$prefix"
cmake --install "$work/build" >/dev/null
cp "${patches[@]}" "$prefix/"
echo "$stamp" >"$prefix/.altgrad-stamp"
echo "nng $version installed in $prefix"
