#!/bin/bash
# stepsim end to end: a tiny preset under a tight limit, --compare --json --timeline
# --metrics; checks the JSON report (KV accounting balances, peak <= limit, every
# request finished and every preempted one was re-run, both sides present), the
# timeline, the Prometheus text, bad arguments (exit status 2) and --help.
# Sizes: huge ones exit 2 within 2 s under 200 MiB RSS (measured here), a limit too
# small for one request says what it needs, prompts longer than --max-seq-len are
# rejected and the run goes on. Outputs: unwritable paths fail before any work,
# "-" is stdout, a failed run writes no report. Reproducibility: --threads 1 gives
# the same memory figures for the same seed.
# Usage: stepsim_test.sh [path/to/stepsim]   (Bazel: data = //tools:stepsim)
set -u
STEPSIM="${1:-tools/stepsim}"
if [ ! -x "$STEPSIM" ]; then
  echo "FAIL: stepsim binary not found at $STEPSIM" >&2
  exit 1
fi
PY=/usr/bin/python3
if [ ! -x "$PY" ]; then PY="$(command -v python3 || true)"; fi
if [ -z "$PY" ]; then
  echo "FAIL: python3 is needed to check the JSON report" >&2
  exit 1
fi
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
fail=0
die() { echo "FAIL: $*" >&2; fail=1; }

# ---- a run under memory pressure: reclaims, deferrals and preemptions happen ----
ARGS=(--model tiny --requests 40 --prompt-dist lognormal:48:0.8:8:200
      --output-dist lognormal:24:0.8:4:96 --shared-prefix-tokens 32 --mem-limit 6.5M
      --seed 7 --progress off)
"$STEPSIM" "${ARGS[@]}" --compare --json "$TMP/r.json" --timeline "$TMP/t.csv" --metrics \
  > "$TMP/out.txt" 2> "$TMP/err.txt"
rc=$?
[ $rc -eq 0 ] || { cat "$TMP/err.txt" >&2; die "stepsim --compare exited with $rc"; }

"$PY" - "$TMP/r.json" "$TMP/t.csv" <<'EOF' || fail=1
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
def check(cond, msg):
    if not cond: bad.append(msg)
for side in ("library", "malloc"):
    check(side in r, f"no '{side}' object")
check("ratios" in r and "config" in r, "no 'ratios' or 'config'")
if bad: print("\n".join(bad)); sys.exit(1)
for k in ("tokens_per_s", "steps_per_s", "peak_bytes", "max_concurrent_seqs"):
    for side in ("library", "malloc"):
        check(k in r[side], f"{side} lacks {k}")
for k in ("throughput", "peak_memory", "max_concurrent_seqs"):
    check(k in r["ratios"], f"ratios lacks {k}")
def close(a, b): return abs(a - b) <= 1e-6 * abs(b) + 1e-12
check(close(r["ratios"]["throughput"], r["library"]["tokens_per_s"] / r["malloc"]["tokens_per_s"]), "throughput ratio is not library/malloc")
check(close(r["ratios"]["max_concurrent_seqs"], r["library"]["max_concurrent_seqs"] / r["malloc"]["max_concurrent_seqs"]), "concurrency ratio is not library/malloc")
check(close(r["ratios"]["peak_memory"], r["library"]["peak_bytes"] / r["malloc"]["peak_bytes"]), "peak ratio is not library/malloc")
cfg = r["config"]
for side in ("library", "malloc"):
    s = r[side]
    check(s["ok"], f"{side}: run not ok")
    check(s["tokens_per_s"] > 0 and s["steps_per_s"] > 0, f"{side}: no throughput")
    check(s["peak_bytes"] <= s["limit_bytes"] == cfg["mem_limit_bytes"], f"{side}: peak {s['peak_bytes']} above limit {s['limit_bytes']}")
    check(sum(s["peak_bytes_by_category"].values()) >= s["peak_bytes"], f"{side}: category peaks below total peak")
    q = s["requests"]
    check(q["total"] == cfg["requests"] == q["finished"], f"{side}: {q['finished']} of {q['total']} requests finished")
    check(q["reruns"] >= q["preempted"], f"{side}: {q['preempted']} preempted but {q['reruns']} re-runs")
    p = s["preemptions"]
    check(p["kv_cache"] + p["scheduler"] == q["reruns"], f"{side}: preemptions {p} != re-runs {q['reruns']}")
    check(s["tokens_generated"] == s["expected_tokens"], f"{side}: generated {s['tokens_generated']} != expected {s['expected_tokens']}")
    check(s["end_used_bytes"] == 0, f"{side}: {s['end_used_bytes']} bytes still charged after teardown")
    check(s["steps"] > 0 and s["max_concurrent_seqs"] >= 1, f"{side}: no steps")
    check(s["step_ms_p99"] >= s["step_ms_median"] > 0, f"{side}: step time percentiles")
    check(len(s["temp_high_water_bytes"]) == cfg["threads"], f"{side}: per-thread high-water missing")
lib = r["library"]; kv = lib["kv"]
check(kv["check_ok"], "library: cllm_kv_check failed")
check(kv["final_blocks_free"] + kv["final_blocks_active"] + kv["final_blocks_cached"] == kv["num_blocks"], f"library: KV blocks do not add up: {kv}")
check(kv["final_blocks_active"] == 0, "library: active KV blocks after every request closed")
check(kv["final_kv_bytes"] == (kv["final_blocks_active"] + kv["final_blocks_cached"]) * kv["block_bytes"], "library: KV bytes != (active + cached) x block bytes")
check(kv["final_monitor_kv_bytes"] >= kv["final_kv_bytes"], "library: monitor KV charge below the blocks in use (the cache charges its committed pages)")
check(kv["prefix_hit_tokens"] > 0 and lib["prompt_tokens_cached"] == kv["prefix_hit_tokens"], "library: prefix cache hits not accounted")
check(lib["requests"]["preempted"] > 0, "library: this workload must preempt (the limit is tight)")
check(lib["monitor"]["reclaim_runs"] > 0, "library: this workload must make the monitor reclaim")
check(kv["evictions"] > 0, "library: this workload must evict cached KV blocks")
check(lib["weights"]["sealed"] and lib["weights"]["capacity_bytes"] >= cfg["weights_bytes"], "library: weights not sealed or too small")
pools = lib["kv_pools"]
check(pools["placement"] is not None and sum(pools["pages_per_node"]) + pools["pages_never_touched"] > 0,
      f"library: KV pools' pages per node not read back: {pools}")
check("library_stats" in lib and lib["library_stats"]["kv_caches"][0]["name"] == "kv", "library: embedded library stats missing")
mal = r["malloc"]
check(mal["prefill_tokens"] >= lib["prefill_tokens"], "malloc computed fewer prompt tokens than the library (no prefix cache there)")
check(mal["kv"]["final_monitor_kv_bytes"] == 0, "malloc: KV still charged")
# timeline: one row per step of each run
rows = open(sys.argv[2]).read().splitlines()
hdr = rows[0].split(",")
for col in ("mode", "step", "step_ms", "batch", "mem_weights_bytes", "mem_kv_bytes", "mem_step_bytes",
            "mem_heap_bytes", "mem_total_bytes", "kv_blocks_active", "kv_blocks_cached", "kv_blocks_free"):
    check(col in hdr, f"timeline lacks column {col}")
n = {"library": 0, "malloc": 0}
for line in rows[1:]:
    f = line.split(",")
    check(len(f) == len(hdr), f"timeline row has {len(f)} fields: {line}")
    n[f[0]] += 1
    check(int(f[hdr.index("mem_total_bytes")]) <= cfg["mem_limit_bytes"], "timeline: memory above the limit")
check(n["library"] == lib["steps"] and n["malloc"] == mal["steps"], f"timeline rows {n} != steps")
if bad:
    print("\n".join(bad)); sys.exit(1)
print("json ok:", {s: (r[s]["tokens_per_s"], r[s]["max_concurrent_seqs"]) for s in ("library", "malloc")}, r["ratios"])
EOF

# ---- --metrics: the library's Prometheus text ----
grep -q '^# TYPE cllm_kv_blocks_active gauge$' "$TMP/out.txt" || die "--metrics: no cllm_kv_blocks_active family"
grep -q '^cllm_kv_blocks_active{cache="kv"} 0$' "$TMP/out.txt" || die "--metrics: KV active blocks sample"
grep -q '^cllm_arena_resets_total{arena="worker1"} [1-9]' "$TMP/out.txt" || die "--metrics: arena resets of worker1"
grep -q '^cllm_memory_total_limit_bytes 6815744$' "$TMP/out.txt" || die "--metrics: total limit"
grep -q '^cllm_weights_info{weights="model",' "$TMP/out.txt" || die "--metrics: weights info"

# ---- the same seed gives the same workload; without memory pressure (no races
# between workers growing their arenas) also the same schedule ----
"$STEPSIM" "${ARGS[@]}" --json "$TMP/l.json" --quiet || die "library-only run failed"
"$STEPSIM" "${ARGS[@]}" --mem-limit 64M --json "$TMP/a.json" --quiet || die "roomy run 1 failed"
"$STEPSIM" "${ARGS[@]}" --mem-limit 64M --json "$TMP/b.json" --quiet || die "roomy run 2 failed"
"$PY" - "$TMP/r.json" "$TMP/l.json" "$TMP/a.json" "$TMP/b.json" <<'EOF' || fail=1
import json, sys
r, l, a, b = (json.load(open(p)) for p in sys.argv[1:5])
if "malloc" in l or "ratios" in l: print("a library-only run wrote a malloc side"); sys.exit(1)
for k in ("expected_tokens", "tokens_generated"):
    if r["library"][k] != l["library"][k]: print(f"same seed, different {k}"); sys.exit(1)
a, b = a["library"], b["library"]
for k in ("steps", "tokens_generated", "prefill_tokens", "max_concurrent_seqs", "prompt_tokens_cached"):
    if a[k] != b[k]: print(f"same seed, different {k}: {a[k]} vs {b[k]}"); sys.exit(1)
if a["requests"]["preempted"] != 0: print("64M should be roomy"); sys.exit(1)
EOF

# ---- bad arguments: a message and exit status 2 ----
for bad in "--threads 0" "--threads x" "--model nope" "--bogus" "--block-tokens 3" \
           "--prompt-dist weird:1" "--mem-limit 12Q" "--heads 5 --kv-heads 2" \
           "--allocator jemalloc" "--requests" "--shared-fraction 2" "--dtype-bytes 3" \
           "--kv-budget 0" "--mem-limit 0" "--json --compare" "--timeline --quiet"; do
  # shellcheck disable=SC2086
  "$STEPSIM" $bad > "$TMP/bad.out" 2> "$TMP/bad.err"
  rc=$?
  [ $rc -eq 2 ] || die "'$bad' exited with $rc, expected 2"
  [ -s "$TMP/bad.err" ] || die "'$bad' printed no message"
done
# ---- sizes the machine cannot hold: exit 2 at once, nothing mapped ----
# (one line per case: exit status, seconds, peak RSS MiB of the child, stderr)
measure() {
  "$PY" - "$STEPSIM" "$@" <<'EOF'
import resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
el = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
print(p.returncode, "%.3f" % el, "%.1f" % rss, " | ".join(p.stderr.strip().splitlines()))
EOF
}
for huge in "--weights-bytes 64T" "--kv-budget 64T" "--mem-limit 64T" "--weights-bytes 1T --compare" \
            "--model llama-3.1-8b --weights-bytes 16T" \
            "--layers 1024 --hidden 65536 --heads 1024 --kv-heads 1024 --head-dim 1024 --max-seq-len 1048576" \
            "--model llama-3.1-8b --max-seq-len 1048576 --kv-budget 1G"; do
  # shellcheck disable=SC2086
  read -r rc secs rss msg < <(measure $huge --requests 4)
  echo "huge '$huge': exit $rc in ${secs}s, ${rss} MiB RSS: $msg"
  [ "$rc" = 2 ] || die "'$huge' exited with $rc, expected 2"
  "$PY" -c "import sys; sys.exit(0 if $secs < 2.0 and $rss < 200 else 1)" ||
    die "'$huge' took ${secs}s and ${rss} MiB (must be under 2 s and 200 MiB)"
  case "$msg" in *"more than"*|*"cannot hold"*) ;; *) die "'$huge': message does not say what is available: $msg" ;; esac
done
# the value is echoed as typed, not in bytes
"$STEPSIM" --weights-bytes 64T --quiet 2> "$TMP/huge.err"
grep -q -- "--weights-bytes 64T: 64.0 TiB is more than the .* available" "$TMP/huge.err" ||
  die "--weights-bytes 64T: message: $(cat "$TMP/huge.err")"

# ---- a limit that cannot hold weights + temps + one sequence: the breakdown, exit 2 ----
"$STEPSIM" --model tiny --requests 2 --mem-limit 1M --quiet > /dev/null 2> "$TMP/small.err"
rc=$?
[ $rc -eq 2 ] || die "--mem-limit 1M exited with $rc, expected 2"
grep -q -- "--mem-limit 1M cannot hold one request in library mode: weights [0-9.]* MiB + temps [0-9.]* MiB (2 workers) + bookkeeping [0-9.]* MiB + one sequence of --max-seq-len [0-9]* [0-9.]* MiB = [0-9.]* MiB > 1.0 MiB; raise --mem-limit to at least [0-9]*M" "$TMP/small.err" ||
  die "--mem-limit 1M: no breakdown: $(cat "$TMP/small.err")"
[ "$(wc -l < "$TMP/small.err")" -eq 1 ] || die "--mem-limit 1M: more than one line: $(cat "$TMP/small.err")"
"$STEPSIM" --mem-limit 118M --quiet > /dev/null 2> "$TMP/small.err"
[ $? -eq 2 ] || die "--mem-limit 118M (small model) should be refused"
grep -q "> 118.0 MiB" "$TMP/small.err" && ! grep -q "123731968" "$TMP/small.err" ||
  die "--mem-limit 118M: not in the units typed: $(cat "$TMP/small.err")"
"$STEPSIM" --kv-budget 1K --quiet > /dev/null 2> "$TMP/small.err"
[ $? -eq 2 ] || die "--kv-budget 1K should be refused"
grep -q -- "--kv-budget 1K .*raise --kv-budget to at least" "$TMP/small.err" ||
  die "--kv-budget 1K: the message must name --kv-budget: $(cat "$TMP/small.err")"
# RLIMIT_AS below what the run needs
(ulimit -v 262144; "$STEPSIM" --quiet > /dev/null 2> "$TMP/as.err"; echo $? > "$TMP/as.rc")
if grep -q "Sanitizer" "$TMP/as.err"; then
  echo "RLIMIT_AS case skipped: a sanitizer's shadow memory does not start under ulimit -v"
else
  [ "$(cat "$TMP/as.rc")" = 2 ] && grep -q "RLIMIT_AS" "$TMP/as.err" ||
    die "ulimit -v 256 MiB: exit $(cat "$TMP/as.rc"): $(cat "$TMP/as.err")"
fi

# ---- prompts longer than --max-seq-len are rejected, counted, reported; the rest run ----
"$STEPSIM" --model tiny --requests 30 --prompt-dist uniform:8:120 --output-dist fixed:8 \
  --shared-prefix-tokens 0 --max-seq-len 64 --progress off --json "$TMP/rej.json" > "$TMP/rej.out" 2>&1 ||
  die "a run with too-long prompts failed: $(tail -3 "$TMP/rej.out")"
grep -q "rejected: prompt > --max-seq-len" "$TMP/rej.out" || die "the report does not show rejected requests"
"$PY" - "$TMP/rej.json" <<'EOF' || fail=1
import json, sys
q = json.load(open(sys.argv[1]))["library"]
r = q["requests"]
ok = r["rejected_too_long"] > 0 and r["finished"] > 0 and r["finished"] + r["rejected"] == r["total"]
ok = ok and q["tokens_generated"] == q["expected_tokens"] and q["ok"]
if not ok: print("rejections not accounted:", r); sys.exit(1)
EOF

# ---- the default workload on two workers serves every request (a KV pool committed in
# huge-page steps once took what the arenas needed for a full step: it could never give
# those pages back, so every step preempted and no request finished) ----
timeout 300 "$STEPSIM" --threads 2 --seed 42 --requests 120 --progress off --json "$TMP/d2.json" \
  > "$TMP/d2.out" 2>&1 || die "the default workload on 2 workers failed or hung: $(tail -3 "$TMP/d2.out")"
"$PY" - "$TMP/d2.json" <<'EOF' || fail=1
import json, sys
q = json.load(open(sys.argv[1]))["library"]
r = q["requests"]
ok = r["finished"] == r["total"] == 120 and r["rejected"] == 0 and q["ok"]
if not ok: print("default workload on 2 workers:", r); sys.exit(1)
EOF

# ---- outputs: checked before the run, "-" is stdout, each file named ----
for out in "--json $TMP/no/such/dir/x.json" "--timeline $TMP/no/such/dir/t.csv" "--plot $TMP/no/such/x.png"; do
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  "$STEPSIM" --requests 360 $out > "$TMP/o.out" 2> "$TMP/o.err"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  [ $rc -eq 2 ] || die "'$out' exited with $rc, expected 2"
  [ $ms -lt 2000 ] || die "'$out' failed only after ${ms} ms (the run must not start)"
  grep -q -- "${out%% *} " "$TMP/o.err" || die "'$out': message does not name the option: $(cat "$TMP/o.err")"
  [ ! -s "$TMP/o.out" ] || die "'$out' printed a report"
done
if command -v gnuplot > /dev/null; then
  (PATH=/nonexistent; "$STEPSIM" --plot "$TMP/x.png" --quiet 2> "$TMP/o.err"; echo $? > "$TMP/o.rc")
  [ "$(cat "$TMP/o.rc")" = 2 ] && grep -q "gnuplot not found" "$TMP/o.err" || die "no gnuplot: $(cat "$TMP/o.err")"
  [ ! -e "$TMP/x.png" ] || die "no gnuplot: the PNG was created"
  # a gnuplot that fails: its own words are shown, before the run
  mkdir -p "$TMP/fakebin"
  printf '#!/bin/sh\ncat > /dev/null\necho "line 1: fake terminal error" >&2\nexit 1\n' > "$TMP/fakebin/gnuplot"
  chmod +x "$TMP/fakebin/gnuplot"
  (PATH="$TMP/fakebin:$PATH"; "$STEPSIM" --plot "$TMP/x.png" --quiet 2> "$TMP/o.err"; echo $? > "$TMP/o.rc")
  [ "$(cat "$TMP/o.rc")" = 2 ] && grep -q "line 1: fake terminal error" "$TMP/o.err" ||
    die "a failing gnuplot: exit $(cat "$TMP/o.rc"), its text not shown: $(cat "$TMP/o.err")"
  TINY=(--model tiny --requests 20 --prompt-dist fixed:40 --output-dist fixed:8 --shared-prefix-tokens 16 --progress off)
  "$STEPSIM" "${TINY[@]}" --compare --plot "$TMP/p.png" > "$TMP/p.out" 2>&1 || die "--plot run failed: $(tail -5 "$TMP/p.out")"
  grep -q "^wrote $TMP/p.png (plot" "$TMP/p.out" || die "--plot: the PNG is not named"
  [ "$(head -c 4 "$TMP/p.png" | od -An -c | tr -d ' ')" = "211PNG" ] || die "--plot did not write a PNG"
fi
TINY=(--model tiny --requests 20 --prompt-dist fixed:40 --output-dist fixed:8 --shared-prefix-tokens 16 --progress off)
"$STEPSIM" "${TINY[@]}" --json - > "$TMP/js.out" 2> "$TMP/js.err" || die "--json - failed"
"$PY" -c "import json,sys; json.load(open(sys.argv[1]))" "$TMP/js.out" || die "--json -: stdout is not JSON"
[ ! -e ./- ] || die "--json - wrote a file named -"
grep -q "throughput" "$TMP/js.err" || die "--json -: the text report should go to stderr"
"$STEPSIM" "${TINY[@]}" --timeline - --json "$TMP/j2.json" > "$TMP/tl.out" 2> "$TMP/tl.err" || die "--timeline - failed"
head -1 "$TMP/tl.out" | grep -q "^mode,step,step_ms," || die "--timeline -: no CSV on stdout"
grep -q "^wrote $TMP/j2.json (JSON report)" "$TMP/tl.err" || die "the JSON file is not named"
"$STEPSIM" "${TINY[@]}" --json - --metrics > /dev/null 2>&1
[ $? -eq 2 ] || die "--json - --metrics must be refused (both on stdout)"

# ---- a failed run: exit 1, no report, no "(null)", no output file left ----
mkdir -p "$TMP/adir"
"$STEPSIM" --model tiny --requests 4 --weights-file "$TMP/adir" --json "$TMP/fail.json" > "$TMP/f.out" 2> "$TMP/f.err"
rc=$?
[ $rc -eq 1 ] || die "a failing run (--weights-file a directory) exited with $rc, expected 1"
[ ! -s "$TMP/f.out" ] || die "a failed run printed a report: $(head -3 "$TMP/f.out")"
! grep -q "(null)" "$TMP/f.out" "$TMP/f.err" || die "a failed run printed (null)"
[ ! -e "$TMP/fail.json" ] || die "a failed run left its --json file"

# ---- reproducible: --threads 1, same seed, a tight limit: the same memory figures ----
for i in 1 2; do
  "$STEPSIM" "${ARGS[@]}" --threads 1 --compare --quiet --json "$TMP/rep$i.json" || die "--threads 1 run $i failed"
done
"$PY" - "$TMP/rep1.json" "$TMP/rep2.json" <<'EOF' || fail=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bad = []
for side in ("library", "malloc"):
    x, y = a[side], b[side]
    for k in ("max_concurrent_seqs", "kv_utilisation_mean", "prefix_hit_rate", "peak_bytes",
              "peak_bytes_by_category", "preemptions", "steps", "prompt_tokens_cached", "requests"):
        if x[k] != y[k]: bad.append(f"{side} {k}: {x[k]} vs {y[k]}")
    for k in ("evictions", "prefix_hit_tokens"):
        if x["kv"][k] != y["kv"][k]: bad.append(f"{side} kv.{k}: {x['kv'][k]} vs {y['kv'][k]}")
if a["library"]["preemptions"]["step_retries"] == 0:
    bad.append("the tight limit should make steps retry (else this checks little)")
if bad: print("--threads 1 is not reproducible:", *bad, sep="\n  "); sys.exit(1)
EOF

# ---- what the kernel holds: the process's peak RSS stays within the limit, plus the
# process's own base (binary and shared libraries: the peak RSS of --help), plus a
# bounded slack of 6 MiB: one 2 MiB huge page of the NUMA heaps' region beyond
# their HEAP charge, and the process's own malloc'd data (request arrays, the hwloc
# topology, the library's metadata) and thread stacks ----
# Under a sanitizer the runtime's shadow memory and quarantine are part of the RSS and
# not the library's: the check runs on plain builds only.
if [ ! -x /usr/bin/time ]; then
  die "/usr/bin/time is missing (tools/bazel installs the package time)"
elif grep -aqE '__(asan|tsan|msan)_init' "$STEPSIM"; then
  echo "SKIP: peak RSS vs limit (stepsim is built with a sanitizer)"
else
  base=$(/usr/bin/time -f %M "$STEPSIM" --help 2>&1 >/dev/null | tail -1)
  peak=$(/usr/bin/time -f %M "$STEPSIM" "${ARGS[@]}" --quiet 2>&1 >/dev/null | tail -1)
  limit_kib=$((6815744 / 1024))
  [ "$peak" -le $((limit_kib + base + 6144)) ] ||
    die "peak RSS ${peak} KiB > limit ${limit_kib} KiB + base ${base} KiB + 6144 KiB slack"
  echo "peak RSS ${peak} KiB: limit ${limit_kib} KiB + base ${base} KiB (+ up to 6144 KiB slack)"
fi

# ---- --kv-store: a second run fetches prompt prefixes the first one stored ----
if [ -x /usr/bin/redis-server ]; then
  SOCK=/tmp/cks$$.sock  # short: the test directory exceeds the unix socket path limit
  /usr/bin/redis-server --port 0 --unixsocket "$SOCK" --save "" --appendonly no --dir /tmp \
    > /dev/null 2>&1 &
  RPID=$!
  for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
  KV=(--model tiny --requests 40 --seed 7 --progress off --quiet --kv-store "unix:$SOCK")
  "$STEPSIM" "${KV[@]}" --json "$TMP/kv1.json" || die "--kv-store run 1 failed"
  "$STEPSIM" "${KV[@]}" --json "$TMP/kv2.json" || die "--kv-store run 2 failed"
  kill "$RPID"; wait "$RPID" 2>/dev/null; rm -f "$SOCK"
  "$PY" - "$TMP/kv1.json" "$TMP/kv2.json" <<'PYEOF' || die "--kv-store: no remote prefix hits"
import json, sys
def lib(p):
    d = json.load(open(p))
    return d.get("library", d)
a, b = lib(sys.argv[1]), lib(sys.argv[2])
assert a["prompt_tokens_remote"] == 0, a["prompt_tokens_remote"]
assert b["prompt_tokens_remote"] > 0, b["prompt_tokens_remote"]
assert b["prefill_tokens"] < a["prefill_tokens"], (a["prefill_tokens"], b["prefill_tokens"])
PYEOF
fi

# ---- --help documents every option ----
"$STEPSIM" --help > "$TMP/help.txt" || die "--help failed"
for opt in --model --layers --hidden --heads --kv-heads --head-dim --intermediate --dtype-bytes \
           --vocab --mem-limit --kv-budget --weights-bytes --weights-file --lock-weights \
           --block-tokens --requests --prompt-dist --output-dist --shared-prefix-tokens \
           --shared-fraction --seed --threads --max-batch --prefill-chunk --max-step-tokens \
           --max-seq-len --allocator --compare --json --timeline --plot --metrics --progress \
           --quiet --kv-store --help; do
  grep -q -- "$opt" "$TMP/help.txt" || die "--help does not mention $opt"
done

if [ $fail -ne 0 ]; then
  echo "--- stepsim stdout ---" >&2; head -60 "$TMP/out.txt" >&2
  exit 1
fi
echo "PASS"
