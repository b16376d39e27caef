#!/usr/bin/env bash
# tools/bench_compare.sh: the benchmarks of two commits, old against new, in one run.
#
#   tools/bench_compare.sh OLD NEW [--rounds N] [--quick] [--callgrind] [--json FILE]
#                          [--args 'FLAGS'] [--timeout S] [--keep] [bench ...]
#
# OLD and NEW are commits (anything git rev-parse takes) or directories that already
# hold the bench binaries (then nothing is built). For a commit, a detached git worktree
# is made under a fresh /tmp directory and the benches are built there with
# `tools/bazel --output_base=<tmp>/ob build -c opt --config=bench //bench:NAME` (its own
# Bazel server and output base, both removed at the end, as is the worktree); the
# binaries are copied aside. Then, for N rounds (default 3), every bench runs old then
# new (new then old in even rounds), with the same flags: --json, --quick if asked, and
# the --args flags; a flag one of the two binaries does not list in its --help is
# dropped for that bench (said on stderr). Rows are matched by bench, case, impl,
# threads and the extras named in $BENCH_COMPARE_KEYS (default "blocks resident dist":
# what tells apart rows of one case); a key met twice in one output gets "#2", "#3".
# Per row: min over the rounds of ns_per_op_min, median over the rounds of
# ns_per_op_median, the new/old ratio of each, marked ** outside [0.9, 1.1], and the
# spread (largest / smallest per-round median, the worse side) as the run's own noise.
#
# --callgrind: then each binary of a bench runs once more under valgrind's callgrind
# (--json --quick --reps 1, plus per-bench flags that keep it short: kv_bench --impl
# cllm_kv, kv_tier_bench --tokens 256; old and new side by side). Reported: the
# instruction count of the whole run and of the library, i.e. the inclusive cost of
# every call from outside the library into a cllm_* function plus the library's inline
# header code executed inside the benchmark's own functions; and the cllm_* functions
# (inclusive) whose ratio leaves [0.9, 1.1] and that weigh at least 1% of the run.
# Instruction counts repeat from run to run where wall times do not.
#
# Output: a markdown report on stdout (for bench/RESULTS.md), progress on stderr, a JSON
# file with every figure with --json FILE. Exit 0 unless a build or a run failed (or a
# usage error: 2); performance is reported, never asserted. A bench that does not exist
# at one commit (no bench/NAME.c or .cc) is reported and skipped.
#
#   --rounds N     rounds of old+new (default 3)
#   --quick        pass --quick to the benches (each at most about 20 s)
#   --args 'F'     more flags for every bench, e.g. --args '--reps 9 --threads 2'
#   --timeout S    limit per bench run (default 1800 s; under callgrind 4x)
#   --keep         keep the temporary directory (binaries, raw outputs); its path is printed
#   bench ...      default: arena_bench heap_bench kv_bench monitor_bench weights_bench
#                  kv_tier_bench
#
# Environment: BENCH_COMPARE_KEYS (see above), BENCH_COMPARE_TMP (parent of the temporary
# directory, default /tmp).
set -euo pipefail
# One compound command: bash reads it whole before running it, so a checkout or an edit of
# this file during a run changes nothing in that run.
{

ALL_BENCHES=(arena_bench heap_bench kv_bench monitor_bench weights_bench kv_tier_bench)
say() { printf 'bench_compare: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=3 quick=0 callgrind=0 json_out="" extra_args="" timeout_s=1800 keep=0
pos=() benches=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || usage; rounds=$2; shift 2 ;;
    --rounds=*) rounds=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --callgrind) callgrind=1; shift ;;
    --json) [ $# -ge 2 ] || usage; json_out=$2; shift 2 ;;
    --json=*) json_out=${1#*=}; shift ;;
    --args) [ $# -ge 2 ] || usage; extra_args=$2; shift 2 ;;
    --args=*) extra_args=${1#*=}; shift ;;
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    -*) say "unknown option $1"; usage ;;
    *) pos+=("$1"); shift ;;
  esac
done
[ ${#pos[@]} -ge 2 ] || usage
old_spec=${pos[0]} new_spec=${pos[1]}
benches=("${pos[@]:2}")
[ ${#benches[@]} -gt 0 ] || benches=("${ALL_BENCHES[@]}")
case "$rounds" in ''|*[!0-9]*|0) say "--rounds needs a positive number"; exit 2 ;; esac
case "$timeout_s" in ''|*[!0-9]*|0) say "--timeout needs a positive number of seconds"; exit 2 ;; esac
command -v python3 >/dev/null || { say "python3 is needed"; exit 2; }
if [ "$callgrind" = 1 ] && ! command -v valgrind >/dev/null; then say "--callgrind needs valgrind"; exit 2; fi
if [ -n "$json_out" ]; then
  case "$json_out" in /*) ;; *) json_out="$PWD/$json_out" ;; esac
fi

start_s=$(date +%s)
tmp=$(mktemp -d "${BENCH_COMPARE_TMP:-/tmp}/bench_compare.XXXXXX")
mkdir -p "$tmp/bin/old" "$tmp/bin/new" "$tmp/raw" "$tmp/cg"
sampler_pid=""
declare -A WT=()  # side -> worktree path

cleanup() {
  local side
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  for side in "${!WT[@]}"; do
    local wt=${WT[$side]}
    if [ -d "$wt" ]; then
      (cd "$wt" && bazel_in "$wt" --output_base="$tmp/ob_$side" shutdown >/dev/null 2>&1) || true
      git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1 || true
    fi
  done
  git -C "$repo" worktree prune >/dev/null 2>&1 || true
  chmod -R u+w "$tmp"/ob_* 2>/dev/null || true
  rm -rf "$tmp"/ob_* "$tmp"/wt_*
  if [ "$keep" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The commit's own wrapper (it knows that commit's packages); Bazel 4 otherwise.
bazel_in() {
  local wt=$1; shift
  if [ -x "$wt/tools/bazel" ]; then "$wt/tools/bazel" "$@"; else /usr/bin/bazel-4 "$@"; fi
}

failures=()      # "what: why", each makes the exit status 1
declare -A NOTE=()  # bench -> why it is not compared

# prepare SIDE SPEC: fills $tmp/bin/SIDE and $tmp/label.SIDE
prepare() {
  local side=$1 spec=$2
  if [ -d "$spec" ]; then
    local b
    for b in "${benches[@]}"; do
      if [ -x "$spec/$b" ]; then cp "$spec/$b" "$tmp/bin/$side/$b"
      else NOTE[$b]="${NOTE[$b]:-}no binary $b in $spec ($side); "; fi
    done
    echo "$(cd "$spec" && pwd) (prebuilt)" > "$tmp/label.$side"
    return
  fi
  local sha
  sha=$(git -C "$repo" rev-parse --verify --quiet "$spec^{commit}") \
    || { say "$side: '$spec' is neither a commit nor a directory"; exit 2; }
  local short
  short=$(git -C "$repo" rev-parse --short=7 "$sha")
  case "$short" in "$spec"*) echo "$short" ;; *) echo "$short ($spec)" ;; esac > "$tmp/label.$side"
  local wt="$tmp/wt_$side"
  WT[$side]=$wt
  git -C "$repo" worktree add --detach "$wt" "$sha" >/dev/null 2>&1 \
    || { say "$side: git worktree add $sha failed"; exit 1; }
  local targets=() b
  for b in "${benches[@]}"; do
    if [ -f "$wt/bench/$b.c" ] || [ -f "$wt/bench/$b.cc" ]; then targets+=("//bench:$b")
    else NOTE[$b]="${NOTE[$b]:-}does not exist at $side $spec; "; fi
  done
  if [ ${#targets[@]} -gt 0 ]; then
    say "$side $spec: building ${targets[*]} (log: $tmp/build_$side.log)"
    local t0=$SECONDS
    (cd "$wt" && bazel_in "$wt" --output_base="$tmp/ob_$side" build -c opt --config=bench \
       --keep_going "${targets[@]}") > "$tmp/build_$side.log" 2>&1 || true
    say "$side: build took $((SECONDS - t0)) s"
    local bin
    bin=$(cd "$wt" && bazel_in "$wt" --output_base="$tmp/ob_$side" info -c opt --config=bench \
            bazel-bin 2>/dev/null) || bin="$wt/bazel-bin"
    for b in "${targets[@]}"; do
      b=${b#//bench:}
      if [ -x "$bin/bench/$b" ]; then cp "$bin/bench/$b" "$tmp/bin/$side/$b"
      else
        failures+=("build of $b at $side $spec failed")
        NOTE[$b]="${NOTE[$b]:-}BUILD FAILED at $side $spec; "
        say "BUILD FAILED: $b at $side $spec; the log's end:"
        grep -v '^INFO\|^Loading\|^Analyzing' "$tmp/build_$side.log" | tail -15 >&2 || true
      fi
    done
  fi
  (cd "$wt" && bazel_in "$wt" --output_base="$tmp/ob_$side" shutdown >/dev/null 2>&1) || true
  chmod -R u+w "$tmp/ob_$side" 2>/dev/null || true
  rm -rf "$tmp/ob_$side"
  git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1 || true
  unset "WT[$side]"
}

prepare old "$old_spec"
prepare new "$new_spec"

# flags_of BIN: the flags its --help lists
flags_of() { timeout 20 "$1" --help 2>/dev/null | grep -o -- '--[a-z][a-z0-9-]*' | sort -u || true; }

# common_args BENCH WANTED...: prints the wanted flags (a flag and the value after it)
# that both binaries accept, one per line; notes the dropped ones
common_args() {
  local b=$1; shift
  local fo fn
  fo=$(flags_of "$tmp/bin/old/$b"); fn=$(flags_of "$tmp/bin/new/$b")
  local words=("$@") i=0 w
  while [ $i -lt ${#words[@]} ]; do
    w=${words[$i]}
    local val=()
    if [ $((i + 1)) -lt ${#words[@]} ] && [ "${words[$((i + 1))]#-}" = "${words[$((i + 1))]}" ]; then
      val=("${words[$((i + 1))]}"); i=$((i + 1))
    fi
    i=$((i + 1))
    local name=${w%%=*}
    if grep -qxF -- "$name" <<<"$fo" && grep -qxF -- "$name" <<<"$fn"; then
      printf '%s\n' "$w" "${val[@]}"
    else
      say "$b: $name ${val[*]} dropped (not accepted by both binaries)"
    fi
  done
}

compared=()
declare -A ARGS=() CGARGS=()
for b in "${benches[@]}"; do
  if [ -x "$tmp/bin/old/$b" ] && [ -x "$tmp/bin/new/$b" ]; then
    compared+=("$b")
    want=(--json)
    [ "$quick" = 1 ] && want+=(--quick)
    read -r -a more <<<"$extra_args"
    want+=("${more[@]}")
    mapfile -t a < <(common_args "$b" "${want[@]}")
    if [ "${a[0]:-}" != --json ]; then
      failures+=("$b: a binary does not accept --json"); NOTE[$b]="${NOTE[$b]:-}no --json; "
      compared=("${compared[@]:0:${#compared[@]}-1}"); continue
    fi
    ARGS[$b]="${a[*]}"
    cg=(--json --quick --reps 1)
    case "$b" in
      kv_bench) cg+=(--impl cllm_kv) ;;
      kv_tier_bench) cg+=(--tokens 256) ;;
    esac
    mapfile -t a < <(common_args "$b" "${cg[@]}" 2>/dev/null)
    CGARGS[$b]="${a[*]}"
  elif [ -z "${NOTE[$b]:-}" ]; then
    NOTE[$b]="missing on one side; "
  fi
done
for b in "${!NOTE[@]}"; do say "not compared: $b: ${NOTE[$b]}"; done

# The load while the timed rounds run: one sample of /proc/loadavg every 5 s.
# (sleep in the background and wait: the TERM at the end then stops it at once)
(trap 'exit 0' TERM; while :; do cut -d' ' -f1 /proc/loadavg; sleep 5 & wait $!; done) \
  > "$tmp/load" 2>/dev/null &
sampler_pid=$!

# run_one SIDE BENCH ROUND
run_one() {
  local side=$1 b=$2 r=$3 rc=0
  local out="$tmp/raw/$b.$side.$r"
  read -r -a a <<<"${ARGS[$b]}"
  local t0=$SECONDS
  timeout "$timeout_s" "$tmp/bin/$side/$b" "${a[@]}" > "$out.jsonl" 2> "$out.err" || rc=$?
  echo "$((SECONDS - t0))" > "$out.secs"
  if [ "$rc" != 0 ] || ! grep -q '^{' "$out.jsonl"; then
    local why="exit $rc"
    [ "$rc" = 124 ] && why+=", timed out after $timeout_s s"
    failures+=("$b ($side, round $r): $why")
    say "RUN FAILED: $b $side round $r (exit $rc); stderr's end:"; tail -5 "$out.err" >&2 || true
  fi
}

timed_t0=$SECONDS
for ((r = 1; r <= rounds; r++)); do
  for b in "${compared[@]}"; do
    if [ $((r % 2)) = 1 ]; then order=(old new); else order=(new old); fi
    for side in "${order[@]}"; do
      say "round $r/$rounds: $b ($side)"
      run_one "$side" "$b" "$r"
    done
  done
done
timed_s=$((SECONDS - timed_t0))
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

cg_s=0
if [ "$callgrind" = 1 ]; then
  cg_t0=$SECONDS
  for b in "${compared[@]}"; do
    read -r -a a <<<"${CGARGS[$b]}"
    say "callgrind: $b ${a[*]} (old and new side by side)"
    pids=()
    for side in old new; do
      # ARENA_BENCH_REEXEC: arena_bench re-executes itself through /proc/self/exe for a
      # larger static TLS, which under valgrind is valgrind's own binary; give it that
      # environment up front instead.
      ARENA_BENCH_REEXEC=1 GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536 \
        timeout $((4 * timeout_s)) valgrind --tool=callgrind \
          --callgrind-out-file="$tmp/cg/$b.$side.out" "$tmp/bin/$side/$b" "${a[@]}" \
          > "$tmp/cg/$b.$side.jsonl" 2> "$tmp/cg/$b.$side.err" &
      pids+=($!)
    done
    for i in 0 1; do
      side=$([ $i = 0 ] && echo old || echo new)
      if ! wait "${pids[$i]}" || [ ! -s "$tmp/cg/$b.$side.out" ]; then
        failures+=("$b under callgrind ($side) failed")
        say "CALLGRIND FAILED: $b $side; stderr's end:"; tail -5 "$tmp/cg/$b.$side.err" >&2 || true
        rm -f "$tmp/cg/$b.$side.out"
      fi
    done
  done
  cg_s=$((SECONDS - cg_t0))
fi

# The report: reads what the runs left in the temporary directory.
write_report_py() {
  cat <<'PY'
import collections, json, math, statistics, sys

tmp, cmdline, json_out, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
LO, HI = 0.9, 1.1


def lines(path):
    try:
        with open(path) as f:
            return [l.rstrip("\n") for l in f if l.strip()]
    except OSError:
        return []


meta = json.load(open(f"{tmp}/meta.json"))
compared = lines(f"{tmp}/compared")
bench_args = {l.split("\t")[0]: l.split("\t")[1:] for l in lines(f"{tmp}/args")}
notes = dict(l.split("\t", 1) for l in lines(f"{tmp}/notes"))
failures = lines(f"{tmp}/failures")
loads = [float(x) for x in lines(f"{tmp}/load") if x.replace(".", "", 1).isdigit()]


def num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def fmt_val(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def read_rows(path):
    rows = []
    for line in lines(path):
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "case" in r and "impl" in r:
            rows.append(r)
    return rows


def keyed(rows):
    """Row identity: bench, case, impl, threads, the key extras; '#n' for repeats."""
    out, seen = {}, collections.Counter()
    for r in rows:
        extra = " ".join(f"{k}={fmt_val(r[k])}" for k in keys if k in r)
        base = (str(r.get("bench")), str(r.get("case")), str(r.get("impl")), str(r.get("threads")), extra)
        seen[base] += 1
        k = base if seen[base] == 1 else base[:4] + ((extra + " " if extra else "") + f"#{seen[base]}",)
        out[k] = r
    return out


def side_stats(per_round):
    mins = [m for m in (num(r.get("ns_per_op_min")) for r in per_round) if m is not None]
    meds = [m for m in (num(r.get("ns_per_op_median")) for r in per_round) if m is not None]
    return {
        "min": min(mins) if mins else None,
        "median": statistics.median(meds) if meds else None,
        "spread": max(meds) / min(meds) if len(meds) > 1 and min(meds) > 0 else None,
        "rounds": len(per_round),
    }


def ratio(a, b):
    return b / a if a is not None and b is not None and a > 0 else None


rows, only = [], {"old": [], "new": []}
for b in compared:
    per = {}
    for side in ("old", "new"):
        acc = collections.OrderedDict()
        for r in range(1, meta["rounds"] + 1):
            for k, row in keyed(read_rows(f"{tmp}/raw/{b}.{side}.{r}.jsonl")).items():
                acc.setdefault(k, []).append(row)
        per[side] = acc
    for k in per["new"]:
        if k not in per["old"]:
            only["new"].append(k)
    for k, old_rows in per["old"].items():
        if k not in per["new"]:
            only["old"].append(k)
            continue
        o, n = side_stats(old_rows), side_stats(per["new"][k])
        rmin, rmed = ratio(o["min"], n["min"]), ratio(o["median"], n["median"])
        out = any(x is not None and not (LO <= x <= HI) for x in (rmin, rmed))
        rows.append({"bench": k[0], "case": k[1], "impl": k[2], "threads": k[3], "key": k[4],
                     "old": o, "new": n, "ratio_min": rmin, "ratio_median": rmed, "outside": out})

# ---- callgrind ------------------------------------------------------------------------


def is_lib_file(f):
    f = f or ""
    for p in ("/proc/self/cwd/", "./"):
        if f.startswith(p):
            f = f[len(p):]
    # Public headers also come through Bazel's bazel-out/.../_virtual_includes/<lib>/cllm/.
    return (f.startswith("lib/") or f.startswith("include/cllm/")
            or ("/_virtual_includes/" in f and "/cllm/" in f))


def is_cllm(fn):
    return fn is not None and (fn.startswith("cllm_") or fn.startswith("cllm::"))


def parse_callgrind(path):
    """Whole-run Ir; the library's share (calls from outside into cllm_* functions,
    inclusive, plus inline library code run in outside functions); cllm_* inclusive."""
    names, files = {}, {}

    def compressed(tab, v):
        v = v.strip()
        if v.startswith("(") and ")" in v:
            i = v.index(")")
            ident, rest = v[1:i], v[i + 1:].strip()
            if rest:
                tab[ident] = rest
                return rest
            return tab.get(ident, "?")
        return v

    npos, total, lib = 1, None, 0
    self_cost, calls_out = collections.Counter(), collections.Counter()
    fn = fl = cur = cfn = None
    outside = True
    pending = False
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[npos]) if len(parts) > npos and parts[npos].isdigit() else 0
                if pending:
                    pending = False
                    if cfn != fn:
                        calls_out[fn] += cost
                    if outside and (is_cllm(cfn) or is_lib_file(cur)):
                        lib += cost
                else:
                    self_cost[fn] += cost
                    if outside and is_lib_file(cur):
                        lib += cost
                continue
            key, eq, val = line.partition("=")
            if not eq:
                key, colon, val = line.partition(":")
                if key == "positions":
                    npos = len(val.split())
                elif key in ("summary", "totals") and val.split():
                    total = int(val.split()[0])
                continue
            if key == "fl":
                fl = cur = compressed(files, val)
            elif key in ("fi", "fe"):
                cur = compressed(files, val)
            elif key == "fn":
                fn = compressed(names, val)
                outside = not is_cllm(fn) and not is_lib_file(fl)
            elif key == "cfn":
                cfn = compressed(names, val)
            elif key in ("cfi", "cfl"):
                compressed(files, val)
            elif key == "calls":
                pending = True
    if total is None:
        total = sum(self_cost.values())
    funcs = {f: self_cost[f] + calls_out[f] for f in set(self_cost) | set(calls_out) if is_cllm(f)}
    return {"total": total, "cllm": lib, "functions": funcs}


callgrind = {}
if meta["callgrind"]:
    for b in compared:
        res = {}
        for side in ("old", "new"):
            try:
                res[side] = parse_callgrind(f"{tmp}/cg/{b}.{side}.out")
            except OSError:
                res[side] = None
        if res["old"] is None or res["new"] is None:
            callgrind[b] = {"args": bench_args.get(b, ["", ""])[1], "failed": True}
            continue
        o, n = res["old"], res["new"]
        funcs = []
        for f in sorted(set(o["functions"]) | set(n["functions"])):
            a, z = o["functions"].get(f), n["functions"].get(f)
            share = max((a or 0) / max(o["total"], 1), (z or 0) / max(n["total"], 1))
            funcs.append({"function": f, "old": a, "new": z, "ratio": ratio(a, z), "share": share})
        callgrind[b] = {"args": bench_args.get(b, ["", ""])[1],
                        "old": {"total": o["total"], "cllm": o["cllm"]},
                        "new": {"total": n["total"], "cllm": n["cllm"]},
                        "ratio_total": ratio(o["total"], n["total"]),
                        "ratio_cllm": ratio(o["cllm"], n["cllm"]), "functions": funcs}

# ---- markdown -------------------------------------------------------------------------


def ns(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def rt(v):
    if v is None:
        return "-"
    s = f"{v:.3f}"
    return s if LO <= v <= HI else f"**{s}**"


def spread(r):
    s = [x for x in (r["old"]["spread"], r["new"]["spread"]) if x is not None]
    return f"{max(s):.2f}" if s else "-"


def mi(v):
    return "-" if v is None else f"{v / 1e6:.1f} M"


HEAD = ("| bench | case | impl | thr | key | min old | min new | min new/old "
        "| med old | med new | med new/old | spread |\n|" + "---|" * 12)


def table(rs):
    print(HEAD)
    for r in rs:
        print(f"| {r['bench']} | {r['case']} | {r['impl']} | {r['threads']} | {r['key']} "
              f"| {ns(r['old']['min'])} | {ns(r['new']['min'])} | {rt(r['ratio_min'])} "
              f"| {ns(r['old']['median'])} | {ns(r['new']['median'])} | {rt(r['ratio_median'])} "
              f"| {spread(r)} |")


load = ({"mean": statistics.mean(loads), "min": min(loads), "max": max(loads), "samples": len(loads)}
        if loads else None)
print(f"### Old vs new: {meta['old']} -> {meta['new']}\n")
print(f"- {meta['date']}, host `{meta['host']}`, {meta['cpus']} CPUs ({meta['cpu']})")
print(f"- command: `{cmdline.strip()}`")
print(f"- {meta['rounds']} rounds, old and new alternating (old first in odd rounds); "
      f"timed rounds {meta['timed_s']} s, callgrind {meta['callgrind_s']} s, "
      f"whole run {meta['total_s']} s")
for b in compared:
    print(f"- `{b} {bench_args.get(b, [''])[0]}`")
if load:
    print(f"- load average (1 min) during the timed rounds: mean {load['mean']:.2f}, "
          f"min {load['min']:.2f}, max {load['max']:.2f} ({load['samples']} samples, 5 s apart)")
print("- Wall times on a shared machine are noisy: `spread` is the larger of the two sides' "
      "largest/smallest per-round median, the run's own noise; a ratio outside [0.9, 1.1] "
      "(**bold**) within that spread is not a finding by itself. Instruction counts repeat.")
print("- min: smallest ns_per_op_min over the rounds; med: median of the rounds' "
      "ns_per_op_median; ns per op as the bench defines its op.")
print()
outside = [r for r in rows if r["outside"]]
print(f"#### Rows outside [0.9, 1.1]: {len(outside)} of {len(rows)}\n")
if outside:
    table(outside)
    print()
print(f"#### All rows ({len(rows)})\n")
table(rows)
print()
for side in ("old", "new"):
    if only[side]:
        print(f"#### Rows only in {side.upper()} ({len(only[side])})\n")
        for k in only[side]:
            print(f"- {k[0]} {k[1]} {k[2]} threads={k[3]}{' ' + k[4] if k[4] else ''}")
        print()
if notes:
    print("#### Not compared\n")
    for b in sorted(notes):
        print(f"- {b}: {notes[b].strip().rstrip(';')}")
    print()
if meta["callgrind"]:
    print("#### Instruction counts (callgrind, one run each)\n")
    print("`cllm`: calls from outside the library into cllm_* functions (inclusive) plus the "
          "library's inline header code run inside the benchmark's functions.\n")
    print("| bench | flags | Ir old | Ir new | new/old | cllm old | cllm new | cllm new/old |")
    print("|---|---|---|---|---|---|---|---|")
    for b, c in callgrind.items():
        if c.get("failed"):
            print(f"| {b} | `{c['args']}` | failed | | | | | |")
            continue
        mark = " (1)" if any(k[0] == b for side in only.values() for k in side) else ""
        print(f"| {b}{mark} | `{c['args']}` | {mi(c['old']['total'])} | {mi(c['new']['total'])} "
              f"| {rt(c['ratio_total'])} | {mi(c['old']['cllm'])} | {mi(c['new']['cllm'])} "
              f"| {rt(c['ratio_cllm'])} |")
    if any(k[0] in callgrind for side in only.values() for k in side):
        print("\n(1) rows on one side only (listed above): the two runs do different work, and "
              "the whole-run and cllm ratios include that work; the function rows show where.")
    print()
    heavy = [(b, f) for b, c in callgrind.items() if not c.get("failed") for f in c["functions"]
             if f["share"] >= 0.01 and (f["ratio"] is None or not LO <= f["ratio"] <= HI)]
    print("cllm_* functions (inclusive) outside [0.9, 1.1] or on one side only, "
          f"each at least 1% of its run: {len(heavy) or 'none'}\n")
    if heavy:
        print("| bench | function | Ir old | Ir new | new/old |\n|---|---|---|---|---|")
        for b, f in heavy:
            print(f"| {b} | {f['function']} | {mi(f['old'])} | {mi(f['new'])} | {rt(f['ratio'])} |")
        print()
if failures:
    print("#### Failures\n")
    for f in failures:
        print(f"- {f}")
    print()

if json_out:
    def keyd(k):
        return {"bench": k[0], "case": k[1], "impl": k[2], "threads": k[3], "key": k[4]}
    with open(json_out, "w") as f:
        json.dump({"meta": dict(meta, command=cmdline.strip(), load=load,
                                args={b: a[0] for b, a in bench_args.items()},
                                callgrind_args={b: a[1] for b, a in bench_args.items()}),
                   "rows": rows, "only_old": [keyd(k) for k in only["old"]],
                   "only_new": [keyd(k) for k in only["new"]], "not_compared": notes,
                   "callgrind": callgrind, "failures": failures}, f, indent=1)
PY
}

# The report.
meta="$tmp/meta.json"
{
  printf '{"old": "%s", "new": "%s", ' "$(cat "$tmp/label.old")" "$(cat "$tmp/label.new")"
  printf '"date": "%s", "host": "%s", ' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(uname -n)"
  printf '"cpus": %s, "cpu": "%s", ' "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/"//g' || echo unknown)"
  printf '"rounds": %s, "quick": %s, "callgrind": %s, ' "$rounds" "$quick" "$callgrind"
  printf '"timed_s": %s, "callgrind_s": %s, "total_s": %s}\n' "$timed_s" "$cg_s" \
    "$(( $(date +%s) - start_s ))"
} > "$meta"
printf '%s\n' "${compared[@]}" > "$tmp/compared"
for b in "${compared[@]}"; do printf '%s\t%s\t%s\n' "$b" "${ARGS[$b]}" "${CGARGS[$b]}"; done > "$tmp/args"
for b in "${!NOTE[@]}"; do printf '%s\t%s\n' "$b" "${NOTE[$b]}"; done > "$tmp/notes"
printf '%s\n' "${failures[@]}" > "$tmp/failures"
cmdline="tools/bench_compare.sh $(printf '%q ' "${pos[@]:0:2}")"
[ "$rounds" != 3 ] && cmdline+="--rounds $rounds "
[ "$quick" = 1 ] && cmdline+="--quick "
[ "$callgrind" = 1 ] && cmdline+="--callgrind "
[ -n "$extra_args" ] && cmdline+="--args $(printf '%q' "$extra_args") "
[ ${#pos[@]} -gt 2 ] && cmdline+="$(printf '%q ' "${pos[@]:2}")"

write_report_py > "$tmp/report.py"
python3 "$tmp/report.py" "$tmp" "$cmdline" "$json_out" \
  "${BENCH_COMPARE_KEYS-blocks resident dist}" || failures+=("the report failed")

if [ ${#failures[@]} -gt 0 ]; then
  say "failed: ${failures[*]}"
  exit 1
fi
exit 0
}
