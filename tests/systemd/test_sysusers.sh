#!/usr/bin/env bash
# test_sysusers.sh - the sysusers.d snippet creates system user and group
# altgrad, home /var/lib/altgrad, no login shell, in a scratch root.
# Usage: test_sysusers.sh SNIPPET. Exit 77: skipped.
set -uo pipefail
snippet=$(realpath "$1")
if ! command -v systemd-sysusers >/dev/null; then
  echo "SKIP systemd-sysusers is not installed (apt-get install systemd)"
  exit 77
fi
root=$(mktemp -d /tmp/altgrad-sysusers-XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc"
systemd-sysusers --root="$root" "$snippet" || { echo "FAIL systemd-sysusers rc $?"; exit 1; }
fail=0
user=$(grep '^altgrad:' "$root/etc/passwd") || { echo "FAIL no user altgrad"; exit 1; }
group=$(grep '^altgrad:' "$root/etc/group") || { echo "FAIL no group altgrad"; exit 1; }
IFS=: read -r _ _ uid ugid _ home shell <<<"$user"
IFS=: read -r _ _ gid _ <<<"$group"
echo "passwd: $user"
echo "group:  $group"
((uid < 1000)) || { echo "FAIL uid $uid is not a system uid"; fail=1; }
[[ $ugid == "$gid" ]] || { echo "FAIL user's primary group $ugid is not altgrad ($gid)"; fail=1; }
[[ $home == /var/lib/altgrad ]] || { echo "FAIL home $home"; fail=1; }
[[ $shell == */nologin || $shell == /bin/false ]] || { echo "FAIL shell $shell allows login"; fail=1; }
((fail == 0)) && echo "ok   system user and group altgrad, no login"
exit $fail
