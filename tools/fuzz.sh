#!/usr/bin/env bash
# tools/fuzz.sh: the libFuzzer op-sequence fuzzers of cllm-mem.
#
#   tools/fuzz.sh --list            name the fuzzers
#   tools/fuzz.sh NAME SECONDS      build NAME (clang, -fsanitize=fuzzer,address,undefined)
#                                   and run it for SECONDS from its committed seed corpus
#   tools/fuzz.sh --all SECONDS     every fuzzer in turn
#
# Sources: tests/fuzz/NAME_fuzz.c (or .cc). Seed corpus: tests/fuzz/corpus/NAME/
# (committed; add the inputs that found bugs there). New inputs and crash
# reproducers go to tests/fuzz/out/NAME/ (git-ignored): a crash leaves
# tests/fuzz/out/NAME/crash-* and the exit status is non-zero. Reproduce with
# tools/.fuzz-build/NAME tests/fuzz/out/NAME/crash-<hash>.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fuzz_dir=tests/fuzz
build_dir=tools/.fuzz-build

list() {
  for f in "$fuzz_dir"/*_fuzz.c "$fuzz_dir"/*_fuzz.cc; do
    [ -e "$f" ] || continue
    b=$(basename "$f"); echo "${b%_fuzz.*}"
  done
}

build() {
  local name=$1 src
  src=$(ls "$fuzz_dir/${name}_fuzz.c" "$fuzz_dir/${name}_fuzz.cc" 2>/dev/null | head -n1 || true)
  [ -n "$src" ] || { echo "fuzz.sh: no fuzzer '$name' (try --list)" >&2; exit 2; }
  command -v clang >/dev/null || { echo "fuzz.sh: clang not found (tools/bazel installs it)" >&2; exit 1; }
  mkdir -p "$build_dir/obj"
  # One build at a time: several fuzzers may be started together.
  exec 9>"$build_dir/.lock"
  flock 9
  local flags=(-g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
               -D_GNU_SOURCE -DCLLM_FAULT_INJECTION -Iinclude -I. -I"$fuzz_dir")
  # The library's objects are shared by every fuzzer; rebuilt when a source or any
  # header is newer than the object.
  local newest_h objs=()
  newest_h=$(ls -t include/cllm/*.h lib/*.h lib/internal/*.h 2>/dev/null | head -n1)
  for c in lib/*.c; do
    o="$build_dir/obj/$(basename "${c%.c}").o"
    if [ ! -e "$o" ] || [ "$c" -nt "$o" ] || [ "$newest_h" -nt "$o" ]; then
      clang -std=c11 "${flags[@]}" -c "$c" -o "$o"
    fi
    objs+=("$o")
  done
  local cc=clang std=-std=gnu11
  case "$src" in *.cc) cc=clang++ std=-std=c++17 ;; esac
  $cc $std "${flags[@]}" -fsanitize=fuzzer "$src" "${objs[@]}" -o "$build_dir/$name" \
      -lmimalloc -lhwloc -lpthread -ldl
  flock -u 9
}

run() {
  local name=$1 secs=$2
  build "$name"
  local out="$fuzz_dir/out/$name"
  mkdir -p "$out/corpus" "$fuzz_dir/corpus/$name"
  echo "fuzz.sh: running $name for ${secs}s (corpus $fuzz_dir/corpus/$name, artifacts $out/)"
  set +e
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$build_dir/$name" "$out/corpus" "$fuzz_dir/corpus/$name" -max_total_time="$secs" \
    -artifact_prefix="$out/" -print_final_stats=1 -timeout=30 -rss_limit_mb=4096 \
    >"$out/log.txt" 2>&1
  local rc=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$out/log.txt" || true
  grep -E 'cov: [0-9]+' "$out/log.txt" | tail -n1 || true
  if [ $rc -ne 0 ]; then
    echo "fuzz.sh: $name FAILED (exit $rc); reproducer(s):" >&2
    ls "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-* 2>/dev/null >&2 || true
    tail -n 40 "$out/log.txt" >&2
    return 1
  fi
  echo "fuzz.sh: $name clean"
}

case "${1:-}" in
  --list) list ;;
  --all)
    secs=${2:?usage: fuzz.sh --all SECONDS}
    rc=0
    for n in $(list); do run "$n" "$secs" || rc=1; done
    exit $rc ;;
  ""|-h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    [ $# -eq 2 ] || { echo "usage: tools/fuzz.sh NAME SECONDS | --list | --all SECONDS" >&2; exit 2; }
    case "$2" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number" >&2; exit 2 ;; esac
    run "$1" "$2" ;;
esac
