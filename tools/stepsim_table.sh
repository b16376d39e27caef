#!/usr/bin/env bash
# README's stepsim table from a real run, so the README cannot drift from the program.
#
#   tools/stepsim_table.sh            build stepsim (-c opt), run the table's workloads
#                                     (--compare --threads 1 --seed 42: the memory figures
#                                     are then the same on every run), write the dated full
#                                     output to bench/RESULTS.md (section "stepsim") and
#                                     the table into README.md (between the stepsim-table
#                                     markers)
#   tools/stepsim_table.sh --check    exit 1 when README's table differs from the one
#                                     recorded in bench/RESULTS.md (no run)
#   STEPSIM=path/to/stepsim tools/stepsim_table.sh   use that binary, no build
set -euo pipefail
cd "$(dirname "$0")/.."
README=README.md
RESULTS=bench/RESULTS.md
BEGIN_T='<!-- stepsim-table:begin -->'
END_T='<!-- stepsim-table:end -->'
BEGIN_R='<!-- stepsim-results:begin -->'
END_R='<!-- stepsim-results:end -->'

# Print the lines of FILE between the markers $2 and $3 (exclusive).
between() { awk -v b="$2" -v e="$3" '$0 == e {p = 0} p {print} $0 == b {p = 1}' "$1"; }

# Replace what lies between the markers $2 and $3 in FILE with the contents of file $4
# (the markers are appended to FILE when it has none).
replace_between() {
  local file=$1 b=$2 e=$3 body=$4 tmp
  tmp=$(mktemp)
  if [ -f "$file" ] && grep -qxF "$b" "$file"; then
    awk -v b="$b" -v e="$e" -v body="$body" '
      $0 == b {print; while ((getline l < body) > 0) print l; skip = 1; next}
      $0 == e {skip = 0}
      !skip {print}' "$file" > "$tmp"
  else
    { [ -f "$file" ] && cat "$file"; echo; echo "$b"; cat "$body"; echo "$e"; } > "$tmp"
  fi
  cat "$tmp" > "$file"
  rm -f "$tmp"
}

if [ "${1:-}" = "--check" ]; then
  want=$(between "$RESULTS" '<!-- stepsim-table -->' '<!-- /stepsim-table -->')
  have=$(between "$README" "$BEGIN_T" "$END_T")
  if [ -z "$want" ] || [ "$want" != "$have" ]; then
    echo "README's stepsim table differs from the run recorded in $RESULTS; run tools/stepsim_table.sh" >&2
    diff <(echo "$have") <(echo "$want") >&2 || true
    exit 1
  fi
  echo "README's stepsim table matches $RESULTS"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${STEPSIM:-}" ]; then
  tools/bazel build -c opt //tools:stepsim
  cp bazel-bin/tools/stepsim "$work/stepsim" # a later build may repoint bazel-bin
  STEPSIM=$work/stepsim
fi
load=$(cut -d' ' -f1-3 /proc/loadavg)

# name | arguments (after --compare --threads 1 --seed 42 --progress off)
WORKLOADS=(
  "default (\`small\`, 360 requests)|"
  "\`--model llama-3.2-1b\` (weights capped at 256 MiB)|--model llama-3.2-1b"
)
COMMON=(--compare --threads 1 --seed 42 --progress off)
i=0
for w in "${WORKLOADS[@]}"; do
  args=${w#*|}
  echo "stepsim ${COMMON[*]} $args" >&2
  # shellcheck disable=SC2086
  "$STEPSIM" "${COMMON[@]}" $args --json "$work/$i.json" | grep -v '^wrote ' > "$work/$i.txt"
  i=$((i + 1))
done

# the table, from the JSON reports
python3 - "$work" "${WORKLOADS[@]}" > "$work/table.md" <<'EOF'
import json, sys
work, names = sys.argv[1], [w.split("|")[0] for w in sys.argv[2:]]
print("| workload | limit | throughput (generated tok/s) | peak memory | max concurrent sequences "
      "| KV slots used | prefix hits |")
print("|---|---|---|---|---|---|---|")
for i, name in enumerate(names):
    r = json.load(open(f"{work}/{i}.json"))
    l, m, q = r["library"], r["malloc"], r["ratios"]
    print(f"| {name} | {r['config']['mem_limit_bytes'] / 2**20:.1f} MiB "
          f"| {l['tokens_per_s']:.0f} vs {m['tokens_per_s']:.0f} = **{q['throughput']:.2f}x** "
          f"| {q['peak_memory']:.2f}x "
          f"| {l['max_concurrent_seqs']} vs {m['max_concurrent_seqs']} = **{q['max_concurrent_seqs']:.2f}x** "
          f"| {100 * l['kv_utilisation_mean']:.1f}% vs {100 * m['kv_utilisation_mean']:.1f}% "
          f"| {100 * l['prefix_hit_rate']:.1f}% |")
EOF

# bench/RESULTS.md: the dated full output, the machine, the commit, the commands
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- lib include tools || commit="$commit (with uncommitted changes)"
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
{
  echo "## stepsim"
  echo
  echo "Produced by \`tools/stepsim_table.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); commit $commit;"
  echo "machine: $cpu, $(nproc) CPUs, $mem, $(uname -sr); load average before the runs: $load"
  echo "(throughput is this machine's at that load; the memory figures do not depend on it)."
  echo "README's table is copied from here (\`tools/stepsim_table.sh --check\` compares them)."
  echo
  echo "<!-- stepsim-table -->"
  cat "$work/table.md"
  echo "<!-- /stepsim-table -->"
  i=0
  for w in "${WORKLOADS[@]}"; do
    echo
    echo "\`\`\`"
    echo "\$ stepsim ${COMMON[*]} ${w#*|}"
    cat "$work/$i.txt"
    echo "\`\`\`"
    i=$((i + 1))
  done
} > "$work/results.md"
[ -f "$RESULTS" ] || printf '# Benchmark results\n\nDated outputs of the benchmarks, newest run of each.\n' > "$RESULTS"
replace_between "$RESULTS" "$BEGIN_R" "$END_R" "$work/results.md"
replace_between "$README" "$BEGIN_T" "$END_T" "$work/table.md"
cat "$work/table.md"
echo "wrote $RESULTS (section stepsim) and README's stepsim table" >&2
