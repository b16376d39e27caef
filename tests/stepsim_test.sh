#!/bin/bash
# stepsim end to end: a tiny preset under a tight limit, --compare --json --timeline
# --metrics; checks the JSON report (KV accounting balances, peak <= limit, every
# request finished and every preempted one was re-run, both sides present), the
# timeline, the Prometheus text, bad arguments (exit status 2) and --help.
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
check(kv["final_monitor_kv_bytes"] == kv["final_kv_bytes"], "library: monitor KV charge != KV cache bytes")
check(kv["prefix_hit_tokens"] > 0 and lib["prompt_tokens_cached"] == kv["prefix_hit_tokens"], "library: prefix cache hits not accounted")
check(lib["requests"]["preempted"] > 0, "library: this workload must preempt (the limit is tight)")
check(lib["monitor"]["reclaim_runs"] > 0, "library: this workload must make the monitor reclaim")
check(kv["evictions"] > 0, "library: this workload must evict cached KV blocks")
check(lib["weights"]["sealed"] and lib["weights"]["capacity_bytes"] >= cfg["weights_bytes"], "library: weights not sealed or too small")
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
           "--allocator jemalloc" "--requests" "--shared-fraction 2" "--dtype-bytes 3"; do
  # shellcheck disable=SC2086
  "$STEPSIM" $bad > "$TMP/bad.out" 2> "$TMP/bad.err"
  rc=$?
  [ $rc -eq 2 ] || die "'$bad' exited with $rc, expected 2"
  [ -s "$TMP/bad.err" ] || die "'$bad' printed no message"
done
# a limit too small for the weights is a run failure (1), not a usage error
"$STEPSIM" --model tiny --requests 2 --mem-limit 1M --quiet > /dev/null 2>&1
rc=$?
[ $rc -eq 1 ] || die "--mem-limit 1M exited with $rc, expected 1"

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
