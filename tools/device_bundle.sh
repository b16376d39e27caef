#!/usr/bin/env bash
# tools/device_bundle.sh: package the benchmarks for a machine without Bazel,
# mimalloc or hwloc (the 16-core device machine some sessions are lent).
#
#   tools/device_bundle.sh [BENCH...]     (default: every //bench target)
#
# Builds the benchmarks optimised, copies them with the shared libraries they load
# (mimalloc, hwloc, and jemalloc / tcmalloc for the dlopen'd baselines) into
# tools/.device-bundle/ (git-ignored), and writes tools/.device-bundle/run.sh, which
# runs each with --json and writes <bench>.jsonl into $OUT (or ./out).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dest=tools/.device-bundle
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  for f in bench/*_bench.c bench/*_bench.cc; do
    [ -e "$f" ] || continue
    b=$(basename "$f"); benches+=("${b%.*}")
  done
fi
targets=()
for b in "${benches[@]}"; do targets+=("//bench:$b"); done
tools/bazel build --config=bench "${targets[@]}"
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib"
for b in "${benches[@]}"; do cp "bazel-bin/bench/$b" "$dest/bin/"; done
for l in libmimalloc.so.2 libhwloc.so.15 libjemalloc.so.2 libtcmalloc_minimal.so.4; do
  cp -L "/usr/lib/x86_64-linux-gnu/$l" "$dest/lib/"
done
cat > "$dest/run.sh" <<'RUN'
#!/usr/bin/env bash
# Run every bundled benchmark with --json; results in $OUT/<bench>.jsonl.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nproc > "$out/nproc.txt"; uname -a >> "$out/nproc.txt"; lscpu >> "$out/nproc.txt" 2>/dev/null || true
for b in "$here"/bin/*; do
  name=$(basename "$b")
  echo "== $name $(date +%T)"
  timeout "${BENCH_TIMEOUT:-240}" "$b" --json "$@" > "$out/$name.jsonl" 2> "$out/$name.err"
  echo "   exit $? ($(wc -l < "$out/$name.jsonl") rows)"
done
RUN
chmod +x "$dest/run.sh"
du -sh "$dest"
