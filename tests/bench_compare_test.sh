#!/usr/bin/env bash
# tools/bench_compare.sh on prebuilt fake benches (directories, so nothing is built) and a
# fake valgrind that writes a known callgrind file: row matching, ratios and marks, rows
# on one side, flags only one binary accepts, failures, instruction counts, exit status.
#   tests/bench_compare_test.sh [path/to/bench_compare.sh]
set -euo pipefail
script=${1:-$(dirname "$0")/../tools/bench_compare.sh}
script=$(cd "$(dirname "$script")" && pwd)/$(basename "$script")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$work/old" "$work/new" "$work/fakebin" "$work/tmp"

# fake_bench DIR NAME HELP_FLAGS ROWS: a bench that logs its arguments and prints ROWS
fake_bench() {
  cat > "$1/$2" <<EOF
#!/usr/bin/env bash
for a in "\$@"; do [ "\$a" = --help ] && { echo "usage: $2 [--json] [--quick] [--reps N] [--threads N] $3"; exit 0; }; done
echo "\$*" >> "$work/args.$2.\$(basename "\$(dirname "\$0")")"
cat <<'ROWS'
$4
ROWS
EOF
  chmod +x "$1/$2"
}
row() {  # case impl threads min median [extra json]
  printf '{"bench":"foo_bench","case":"%s","impl":"%s","threads":%s,"ns_per_op_min":%s,"ns_per_op_median":%s,"ops":10%s}\n' "$@"
}

fake_bench "$work/old" foo_bench "--size,--old-only" "$(
  row same x 1 10 10; row slower x 1 10 10; row gone y 2 5 5
  row twice z 1 4 4; row twice z 1 8 8
  row sized k 1 3 3 ',"blocks":1024'; row sized k 1 6 6 ',"blocks":2048'
  echo 'a note line that is not JSON')"
fake_bench "$work/new" foo_bench "--size" "$(
  row same x 1 10.5 9.5; row slower x 1 12 10.2; row added w 1 1 1
  row twice z 1 4 4; row twice z 1 8 4
  row sized k 1 3 3 ',"blocks":1024'; row sized k 1 6 6.2 ',"blocks":2048')"
fake_bench "$work/old" old_only_bench "" "$(row a b 1 1 1)"

# Inclusive cost of cllm_arena_reset: old 200+100, new 300+100; the library's share: the
# inline header code (50, and its call to memset, 40) + the call into cllm_arena_reset;
# totals 490 and 590.
cat > "$work/fakebin/valgrind" <<'EOF'
#!/usr/bin/env bash
out=; bin=
for a in "$@"; do
  case "$a" in --callgrind-out-file=*) out=${a#*=} ;; --*) ;; *) [ -z "$bin" ] && bin=$a ;; esac
done
case "$bin" in */new/*) self=300 total=590 ;; *) self=200 total=490 ;; esac
cat > "$out" <<CG
# callgrind format
version: 1
positions: line
events: Ir
summary: $total

fl=(1) /proc/self/cwd/bench/foo_bench.c
fn=(1) main
10 100
fi=(2) /proc/self/cwd/bazel-out/k8-opt/bin/_virtual_includes/cllm_mem/cllm/arena.h
+1 50
cfl=(4) ???
cfn=(3) memset
calls=1 0
+1 40
fe=(1)
cfl=(3) /proc/self/cwd/lib/arena.c
cfn=(2) cllm_arena_reset
calls=3 5
+1 $((self + 100))

fl=(3)
fn=(2)
5 $self
cfn=(5) cllm__prim_x
calls=1 0
+1 100

fn=(5)
1 100

fl=(4)
fn=(3)
0 40
CG
echo "==1== fake callgrind" >&2
EOF
chmod +x "$work/fakebin/valgrind"

export PATH="$work/fakebin:$PATH" BENCH_COMPARE_TMP="$work/tmp"
rc=0
"$script" "$work/old" "$work/new" --rounds 2 --quick --callgrind --json "$work/r.json" \
  --args '--old-only 3 --size 5' foo_bench old_only_bench > "$work/r.md" 2> "$work/r.err" || rc=$?
[ "$rc" = 0 ] || { cat "$work/r.err" >&2; fail "exit $rc on a clean comparison"; }
[ -z "$(ls -A "$work/tmp")" ] || fail "temporary directory left behind: $(ls "$work/tmp")"

# Both sides ran with the same flags, without the one the new binary does not accept,
# alternating (2 rounds each), under callgrind once more each.
for side in old new; do
  grep -qx -- '--json --quick --size 5' "$work/args.foo_bench.$side" || fail "$side flags: $(cat "$work/args.foo_bench.$side")"
  [ "$(grep -c . "$work/args.foo_bench.$side")" = 2 ] || fail "$side: not 2 timed runs"
done
grep -q -- '--old-only 3 dropped' "$work/r.err" || fail "dropped flag not reported"

python3 - "$work/r.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rows = {(x["case"], x["key"]): x for x in r["rows"]}
def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}: {json.dumps(r, indent=1)[:3000]}")
check(set(rows) == {("same", ""), ("slower", ""), ("twice", ""), ("twice", "#2"),
                    ("sized", "blocks=1024"), ("sized", "blocks=2048")}, "matched rows")
check(abs(rows["same", ""]["ratio_min"] - 1.05) < 1e-9 and abs(rows["same", ""]["ratio_median"] - 0.95) < 1e-9, "ratios")
check(not rows["same", ""]["outside"], "1.05/0.95 is inside")
check(rows["slower", ""]["outside"] and abs(rows["slower", ""]["ratio_min"] - 1.2) < 1e-9, "1.2 is outside")
check(rows["twice", "#2"]["ratio_median"] == 0.5 and rows["twice", ""]["ratio_median"] == 1.0, "repeated key")
check(not rows["sized", "blocks=2048"]["outside"], "1.033 is inside")
check([x["case"] for x in r["only_old"]] == ["gone"] and [x["case"] for x in r["only_new"]] == ["added"], "one side only")
check("old_only_bench" in r["not_compared"], "bench missing on one side")
check(r["meta"]["rounds"] == 2 and r["rows"][0]["old"]["rounds"] == 2, "rounds")
c = r["callgrind"]["foo_bench"]
check(c["old"] == {"total": 490, "cllm": 390} and c["new"] == {"total": 590, "cllm": 490}, "instruction counts")
f = {x["function"]: x for x in c["functions"]}
check(f["cllm_arena_reset"]["old"] == 300 and f["cllm_arena_reset"]["new"] == 400, "inclusive per function")
check(f["cllm__prim_x"]["ratio"] == 1.0 and "memset" not in f and "main" not in f, "cllm_* functions only")
check(c["args"] == "--json --quick --reps 1", "callgrind flags")
EOF

grep -q '^#### Rows outside \[0.9, 1.1\]: 2 of 6' "$work/r.md" || fail "outside count: $(grep Rows "$work/r.md")"
grep -q '| foo_bench | slower | x | 1 |  | 10.0 | 12.0 | \*\*1.200\*\* |' "$work/r.md" || fail "marked row"
grep -q '^- foo_bench gone y threads=2$' "$work/r.md" || fail "only-in-old list"
grep -q '| cllm_arena_reset | 0.0 M | 0.0 M | \*\*1.333\*\* |' "$work/r.md" || fail "function row"
grep -q '^| foo_bench (1) | `--json --quick --reps 1` |' "$work/r.md" || fail "one-side mark in the instruction table"

# A failing run: reported, the others still compared, exit 1.
fake_bench "$work/new" old_only_bench "" ""
printf '#!/usr/bin/env bash\n[ "$1" = --help ] && { echo "usage: x [--json]"; exit 0; }\nexit 3\n' > "$work/new/old_only_bench"
rc=0
"$script" "$work/old" "$work/new" --rounds 1 foo_bench old_only_bench > "$work/f.md" 2> "$work/f.err" || rc=$?
[ "$rc" = 1 ] || fail "a failing bench gave exit $rc"
grep -q 'RUN FAILED: old_only_bench new round 1 (exit 3)' "$work/f.err" || fail "failure not said"
grep -q '| foo_bench | same |' "$work/f.md" || fail "the other bench was not reported"
grep -q 'old_only_bench (new, round 1): exit 3' "$work/f.md" || fail "failure not in the report"

# Usage errors.
rc=0; "$script" "$work/old" 2>/dev/null >/dev/null || rc=$?; [ "$rc" = 2 ] || fail "one operand: exit $rc"
rc=0; "$script" "$work/old" "$work/new" --rounds 0 2>/dev/null || rc=$?; [ "$rc" = 2 ] || fail "--rounds 0: exit $rc"
rc=0; "$script" "$work/old" no-such-commit-xyz 2>/dev/null || rc=$?; [ "$rc" = 2 ] || fail "bad spec: exit $rc"
echo "bench_compare_test: all checks passed"
