#!/usr/bin/env bash
# Install the Debian packages altgrad needs to build, test and run its demo,
# only those missing (as root it calls apt-get directly, otherwise through
# sudo), then build the patched static nng altgrad links (scripts/build-nng.sh,
# docs/nng.md) unless it is already built.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libuv1-dev libmsgpack-dev
      libsqlite3-dev libcriterion-dev sqlite3 python3 python3-torch python3-pytest
      python3-numpy clang libclang-rt-14-dev systemd bubblewrap libseccomp2 util-linux
      man-db binutils dpkg-dev patch ca-certificates clang-format git chromium curl
      libmbedtls-dev openssl prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash "$(dirname "$0")/build-nng.sh"
