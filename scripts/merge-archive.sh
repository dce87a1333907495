#!/bin/sh
# merge-archive.sh TARGET.a EXTRA.a [AR]: add every member of EXTRA.a to
# TARGET.a (an ar MRI script, so members of the same name in the two archives
# both survive). Used to carry nng's objects inside libaltgrad.a.
set -eu
target=$1 extra=$2 ar=${3:-ar}
tmp=$target.merge.$$
printf 'create %s\naddlib %s\naddlib %s\nsave\nend\n' "$tmp" "$target" "$extra" | "$ar" -M
mv "$tmp" "$target"
