#!/usr/bin/env bash
# The library's version, read from its one source: include/cllm/version.h.
#   version.sh [HEADER] [what]   what: full (0.1.0, default), major, soname
#   (libcllm-mem.so.MAJOR), soname-opts (the linker option that sets it).
set -euo pipefail
header=${1:-include/cllm/version.h}
what=${2:-full}
get() {
  sed -n "s/^#define CLLM_VERSION_$1 \([0-9][0-9]*\)\$/\1/p" "$header"
}
major=$(get MAJOR); minor=$(get MINOR); patch=$(get PATCH)
if [ -z "$major" ] || [ -z "$minor" ] || [ -z "$patch" ]; then
  echo "version.sh: no CLLM_VERSION_MAJOR/MINOR/PATCH in $header" >&2; exit 1
fi
string=$(sed -n 's/^#define CLLM_VERSION_STRING "\(.*\)"$/\1/p' "$header")
if [ "$string" != "$major.$minor.$patch" ]; then
  echo "version.sh: CLLM_VERSION_STRING \"$string\" is not $major.$minor.$patch" >&2; exit 1
fi
case "$what" in
  full) echo "$major.$minor.$patch" ;;
  major) echo "$major" ;;
  soname) echo "libcllm-mem.so.$major" ;;
  soname-opts) echo "-Wl,-soname,libcllm-mem.so.$major" ;;
  *) echo "version.sh: unknown request $what" >&2; exit 1 ;;
esac
