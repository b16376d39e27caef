#!/usr/bin/env bash
# tools/install.sh [--prefix DIR]: build the release library (-c opt) and install it.
#   DIR/include/cllm/*.h, *.hpp
#   DIR/lib/libcllm-mem.so.X.Y.Z  (SONAME libcllm-mem.so.X) + libcllm-mem.so.X, libcllm-mem.so
#   DIR/lib/libcllm-mem.a         (private symbols local, no debug info, PIC)
#   DIR/lib/pkgconfig/cllm-mem.pc, cllm-mem-static.pc           (relocatable)
#   DIR/lib/cmake/cllm-mem/cllm-memConfig.cmake, cllm-memConfigVersion.cmake
# DIR defaults to /usr/local. The version comes from include/cllm/version.h.
# Also: tools/bazel run -c opt //tools:install -- --prefix DIR (the same, built by
# that Bazel command; a relative DIR is taken from the directory it is run in).
set -euo pipefail

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }
say() { printf 'install.sh: %s\n' "$*" >&2; }

prefix=/usr/local
so= archive=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --built) so=$2; archive=$3; shift 3 ;;   # from //tools:install: already built
    -h|--help) usage; exit 0 ;;
    *) say "unknown argument: $1"; usage >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { say "empty --prefix"; exit 2; }

if [ -z "$so" ]; then
  # Run directly: build and install through the Bazel target, one code path.
  case "$prefix" in /*) ;; *) prefix=$PWD/$prefix ;; esac
  cd "$(dirname "$0")/.."
  exec tools/bazel run -c opt //tools:install -- --prefix "$prefix"
fi
# Under `bazel run`: the working directory is the runfiles tree (a copy of the source
# layout for what the target lists as data: the headers of //:cllm_mem, templates);
# a relative prefix is relative to where the user ran the command.
root=$PWD
case "$prefix" in /*) ;; *) prefix=${BUILD_WORKING_DIRECTORY:-$PWD}/$prefix ;; esac

version_sh=$root/tools/pkg/version.sh
vh=$root/include/cllm/version.h
version=$("$version_sh" "$vh" full)
major=$("$version_sh" "$vh" major)
soname=$("$version_sh" "$vh" soname)
real=libcllm-mem.so.$version

# The built library must carry the SONAME the version says.
got=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$got" = "$soname" ] || { say "$so has SONAME '$got', want $soname"; exit 1; }

subst() {  # subst TEMPLATE OUT
  sed -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" -e "s|@SONAME@|$soname|g" "$1" >"$2"
  chmod 644 "$2"
}

mkdir -p "$prefix/include/cllm" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/cllm-mem"
for h in "$root"/include/cllm/*; do
  install -m 644 "$h" "$prefix/include/cllm/"
done
install -m 755 "$so" "$prefix/lib/$real"
ln -sfn "$real" "$prefix/lib/$soname"
ln -sfn "$soname" "$prefix/lib/libcllm-mem.so"
install -m 644 "$archive" "$prefix/lib/libcllm-mem.a"
subst "$root/tools/pkg/cllm-mem.pc.in" "$prefix/lib/pkgconfig/cllm-mem.pc"
subst "$root/tools/pkg/cllm-mem-static.pc.in" "$prefix/lib/pkgconfig/cllm-mem-static.pc"
subst "$root/tools/pkg/cllm-memConfig.cmake.in" "$prefix/lib/cmake/cllm-mem/cllm-memConfig.cmake"
subst "$root/tools/pkg/cllm-memConfigVersion.cmake.in" \
  "$prefix/lib/cmake/cllm-mem/cllm-memConfigVersion.cmake"
say "installed cllm-mem $version into $prefix"
