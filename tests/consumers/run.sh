#!/usr/bin/env bash
# tests/consumers/run.sh: cllm-mem used from outside, as a newcomer would.
# Installs into a fresh temporary prefix (tools/install.sh), then builds and runs:
#   make-shared, make-static   the C consumer (consumer.c) through pkg-config and a
#                              plain Makefile, against libcllm-mem.so and libcllm-mem.a
#   cmake-shared, cmake-static the C++ consumer (cmake/main.cpp, <cllm/mem.hpp>) through
#                              find_package(cllm-mem 0.1 REQUIRED), both imported targets
#   bazel                      a separate Bazel workspace (bazel/) through the macro
# and first that README's pkg-config, CMake and Bazel lines are these consumers' own.
# Each program checks its own results and which allocator serves malloc. Prints one
# line per step and a last line "consumers: N passed, N failed"; exit 1 on a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
passed=0
failed=0

step() {  # step NAME COMMAND...: run it, log to $work/NAME.log, count it
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$work/$name.log" 2>&1; then
    echo "consumer $name: PASSED in $((SECONDS - t0))s"
    passed=$((passed + 1))
    return 0
  fi
  echo "consumer $name: FAILED in $((SECONDS - t0))s; last lines of its log:"
  tail -n 30 "$work/$name.log" | sed 's/^/  | /'
  failed=$((failed + 1))
  return 1
}

make_run() {  # make_run TARGET ALLOCATOR
  make -C "$work/make" -f "$root/tests/consumers/make/Makefile" "$1" && "$work/make/$1" "$2"
}
cmake_build() {
  cmake -S "$root/tests/consumers/cmake" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" &&
    cmake --build "$work/cmake"
}
bazel_workspace() {
  local rc=0
  (cd "$root/tests/consumers/bazel" && "$root/tools/bazel" test //:consumer_test) || rc=$?
  (cd "$root/tests/consumers/bazel" && "$root/tools/bazel" shutdown) || true
  return "$rc"
}

readme_lines() {  # the README's build lines are the consumers' own, verbatim
  python3 - "$root" <<'PY'
import re, sys
root = sys.argv[1]
readme = open(root + "/README.md").read()
files = {"make": "make/Makefile", "cmake": "cmake/CMakeLists.txt", "python": "bazel/WORKSPACE"}
bad = 0
for lang, path in files.items():
    have = set(open(root + "/tests/consumers/" + path).read().split("\n"))
    blocks = re.findall(r"```%s\n(.*?)```" % lang, readme, flags=re.S)
    if not blocks:
        print("README.md has no %s block" % lang); bad += 1
    for line in "\n".join(blocks).split("\n"):
        if line and not line.startswith("local_repository(") and line not in have:
            print("README line not in tests/consumers/%s: %s" % (path, line)); bad += 1
sys.exit(1 if bad else 0)
PY
}

step readme-lines readme_lines
if step install tools/install.sh --prefix "$prefix"; then
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  mkdir -p "$work/make"
  # Linking the shared library leaves glibc's malloc in place; the archive brings
  # libmimalloc.so in ahead of libc, so mimalloc's malloc serves the whole process.
  step make-shared make_run consumer-shared libc
  step make-static make_run consumer-static mimalloc
  if step cmake-configure-build cmake_build; then
    step cmake-shared "$work/cmake/consumer_shared" libc
    step cmake-static "$work/cmake/consumer_static" mimalloc
  else
    failed=$((failed + 2))
  fi
fi
step bazel bazel_workspace
echo "consumers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
