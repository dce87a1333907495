#!/usr/bin/env bash
# test_install.sh - `cmake --install` into a temporary prefix, then use it as
# an outsider would: build examples/consumer once with pkg-config and once
# with find_package(altgrad) (shared, and static), check the man pages and the
# installed unit, start the installed altgradd and run every consumer against
# it. Usage: test_install.sh BUILD_DIR SOURCE_DIR. Exit 77: the library parts
# passed but the daemon or CLI is not built, so the rest was skipped.
set -uo pipefail
build=$(realpath "$1")
src=$(realpath "$2")
tmp=$(mktemp -d /tmp/altgrad-install-XXXXXX)
prefix=$tmp/prefix
daemon_pid=
cleanup() {
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
run() { # run a command, show its output only when it fails
  local out
  if out=$("$@" 2>&1); then return 0; fi
  printf '%s\n' "$out" | tail -40
  return 1
}

# Build flags of the tree under test: a sanitized libaltgrad needs sanitized
# consumers.
cflags="-std=c11 -Wall -Wextra -Werror"
if grep -q '^AG_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  san="-fsanitize=address,undefined"
  cflags="$cflags $san"
else
  san=
fi

echo "== install into $prefix"
if ! run cmake --install "$build" --prefix "$prefix"; then
  bad "cmake --install"
  exit 1
fi
libdir=$(sed -n 's/^libdir=\${prefix}\///p' "$prefix"/lib*/pkgconfig/altgrad.pc 2>/dev/null | head -1)
libdir=$prefix/${libdir:-lib}
for f in "$libdir/libaltgrad.so" "$libdir/libaltgrad.so.0.2" "$libdir/libaltgrad.a" \
         "$prefix/include/altgrad/altgrad.h" "$libdir/pkgconfig/altgrad.pc" \
         "$libdir/cmake/altgrad/altgradConfig.cmake" \
         "$libdir/cmake/altgrad/altgradConfigVersion.cmake" \
         "$prefix/lib/systemd/system/altgradd.service" "$prefix/lib/sysusers.d/altgrad.conf" \
         "$prefix/etc/altgrad/altgradd.conf" "$prefix/share/doc/altgrad/examples/altgradd.conf" \
         "$prefix/share/man/man8/altgradd.8" "$prefix/share/man/man1/altgrad.1" \
         "$prefix/share/man/man3/libaltgrad.3" "$libdir/altgrad/libaltgrad_sqlite.so"; do
  [[ -e $f ]] && ok "installed ${f#$prefix/}" || bad "missing ${f#$prefix/}"
done
have_daemon=0; have_cli=0
[[ -x $prefix/sbin/altgradd ]] && have_daemon=1 && ok "installed sbin/altgradd"
[[ -x $prefix/bin/altgrad ]] && have_cli=1 && ok "installed bin/altgrad"
[[ $(readlink "$libdir/libaltgrad.so") == libaltgrad.so.0.2 ]] \
  && ok "libaltgrad.so -> libaltgrad.so.0.2" || bad "libaltgrad.so does not link to the SONAME"

echo "== man pages"
if command -v man >/dev/null; then
  for page in "$prefix"/share/man/man*/*; do
    warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
    text=$(LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$page" 2>/dev/null)
    if [[ -z $warn && $text == *NAME* && $text == *"SEE ALSO"* ]]; then
      ok "man page ${page##*/} renders without warnings"
    else
      bad "man page ${page##*/}: ${warn:-no NAME/SEE ALSO section}"
    fi
  done
else
  echo "     man is not installed: rendering not checked"
fi

echo "== unit file under the prefix"
unit=$prefix/lib/systemd/system/altgradd.service
grep -q "^ExecStart=$prefix/sbin/altgradd --config $prefix/etc/altgrad/altgradd.conf\$" "$unit" \
  && ok "ExecStart names the installed binary and config" || bad "ExecStart: $(grep ExecStart= "$unit")"
if command -v systemd-analyze >/dev/null && ((have_daemon)); then
  if out=$(MANPATH=$prefix/share/man systemd-analyze verify "$unit" 2>&1) && [[ -z $out ]]; then
    ok "systemd-analyze verify is clean"
  else
    bad "systemd-analyze verify: $out"
  fi
fi

echo "== consumer with pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
cons=$src/examples/consumer/consumer.c
pc_cflags=$(pkg-config --cflags altgrad) && pc_libs=$(pkg-config --libs altgrad) \
  && pc_static=$(pkg-config --static --libs altgrad) || bad "pkg-config altgrad"
[[ $(pkg-config --modversion altgrad) == "$(sed -n 's/^project(altgrad VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")" ]] \
  && ok "pkg-config --modversion matches the project version" || bad "pkg-config --modversion"
# shellcheck disable=SC2086
if run cc $cflags $pc_cflags "$cons" -o "$tmp/consumer-pc" $pc_libs -Wl,-rpath,"$libdir"; then
  ok "built against the shared library with pkg-config"
else
  bad "pkg-config shared build"
fi
static_libs=${pc_static/-laltgrad/-Wl,-Bstatic -laltgrad -Wl,-Bdynamic}
# shellcheck disable=SC2086
if run cc $cflags $pc_cflags "$cons" -o "$tmp/consumer-pc-static" $static_libs; then
  ok "built against the static library with pkg-config --static"
else
  bad "pkg-config static build"
fi

echo "== consumer with find_package(altgrad)"
for kind in shared static; do
  st=OFF; [[ $kind == static ]] && st=ON
  if run cmake -S "$src/examples/consumer" -B "$tmp/cmake-$kind" -DCMAKE_PREFIX_PATH="$prefix" \
       -DCONSUMER_STATIC=$st -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS=$cflags" \
       "-DCMAKE_EXE_LINKER_FLAGS=$san" \
     && run cmake --build "$tmp/cmake-$kind"; then
    cp "$tmp/cmake-$kind/altgrad_consumer" "$tmp/consumer-cmake-$kind"
    ok "built against the $kind library with find_package(altgrad)"
  else
    bad "find_package $kind build"
  fi
done

consumers=()
for b in consumer-pc consumer-pc-static consumer-cmake-shared consumer-cmake-static; do
  [[ -x $tmp/$b ]] && consumers+=("$tmp/$b")
done
for b in "$tmp/consumer-pc" "$tmp/consumer-cmake-shared"; do
  [[ -x $b ]] || continue
  if ldd "$b" | grep "libaltgrad.so.0.2 => $libdir/libaltgrad.so.0.2" >/dev/null; then
    ok "${b##*/} loads libaltgrad.so.0.2 from the prefix"
  else
    bad "${b##*/} does not load the installed library: $(ldd "$b" | grep altgrad)"
  fi
done
for b in "$tmp/consumer-pc-static" "$tmp/consumer-cmake-static"; do
  [[ -x $b ]] || continue
  ldd "$b" | grep libaltgrad >/dev/null && bad "${b##*/} still needs libaltgrad.so" \
    || ok "${b##*/} needs no libaltgrad.so"
done
for b in "${consumers[@]}"; do
  if run "$b"; then ok "${b##*/}: core check passes"; else bad "${b##*/} (core only)"; fi
done

if ((!have_daemon || !have_cli)); then
  echo "SKIP daemon or CLI not built: the installed daemon was not run ($fails failures so far)"
  ((fails == 0)) && exit 77
  exit 1
fi

echo "== consumers against the installed daemon"
mkdir -p "$tmp/run" "$tmp/state" "$tmp/cwd"
ingest=ipc://$tmp/run/ingest.sock
query=ipc://$tmp/run/query.sock
(cd "$tmp/cwd" && exec "$prefix/sbin/altgradd" --ingest "$ingest" --query "$query" \
   --db "$tmp/state/altgrad.db" --log-level notice --http off) &
daemon_pid=$!
# Wait (bounded) until the daemon answers a query.
up=0
for _ in $(seq 600); do
  kill -0 "$daemon_pid" 2>/dev/null || break
  if "$prefix/bin/altgrad" --query "$query" status >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if ((up)); then ok "installed altgradd answers the installed altgrad CLI"; else
  bad "installed altgradd did not come up"
fi
if ((up)); then
  for b in "${consumers[@]}"; do
    if run "$b" "$ingest" "$query"; then ok "${b##*/} streamed and read back its run"
    else bad "${b##*/} against the daemon"; fi
  done
  runs=$("$prefix/bin/altgrad" --query "$query" runs 2>&1)
  n=$(printf '%s\n' "$runs" | grep -c 'consumer-')
  ((n == ${#consumers[@]})) && ok "altgrad runs lists the $n consumer runs" \
    || { bad "altgrad runs lists $n consumer runs, expected ${#consumers[@]}"; printf '%s\n' "$runs"; }
fi
kill -TERM "$daemon_pid" 2>/dev/null
wait "$daemon_pid"
rc=$?
daemon_pid=
((rc == 0)) && ok "installed altgradd exits 0 on SIGTERM" || bad "altgradd exit status $rc"

((fails == 0)) && echo "ok   install test passed" || echo "FAIL $fails checks failed"
((fails == 0))
