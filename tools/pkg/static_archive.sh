#!/usr/bin/env bash
# static_archive.sh OUT.a INPUT...: the release archive from the library's PIC
# objects (the first .a/.lo among INPUT): one relocatable object (ld -r) whose hidden
# symbols are made local (objcopy --localize-hidden), so a program linking it sees
# the public cllm_* symbols only; debug info stripped.
set -euo pipefail
out=$1; shift
in=
for f in "$@"; do
  case "$f" in *.a|*.lo) in=$f; break ;; esac
done
[ -n "$in" ] || { echo "static_archive.sh: no archive among: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ld -r --whole-archive "$in" -o "$tmp/cllm-mem.o"
objcopy --localize-hidden --strip-debug "$tmp/cllm-mem.o"
rm -f "$out"
ar rcsD "$out" "$tmp/cllm-mem.o"
