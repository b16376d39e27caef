#!/usr/bin/env bash
# tools/numa_vm.sh: run programs inside a booted multi-node NUMA Linux guest.
#
#   tools/numa_vm.sh [options] -- 'CMD ARGS...' ['CMD ARGS...' ...]
#   tools/numa_vm.sh --layout 2x1 -- bazel-out/k8-opt/bin/tests/numa_test
#
# Boots QEMU with a Debian cloud kernel and an initramfs made of busybox plus every
# command's program and its ldd closure, copied to the same absolute paths. TCG: this
# machine's /dev/kvm cannot run a guest, and TCG works everywhere. CPU model
# $CLLM_NUMA_VM_CPU, default qemu64 (with -cpu max, which offers AVX2, tests ran about
# 2.5x slower under TCG).
# In the guest /init mounts proc, sys, devtmpfs and tmpfs on /tmp and /dev/shm,
# prints the node count, runs each command (in the directory numa_vm.sh was started
# from, with sh -c, stdout and stderr to the serial console), then powers off.
# Exits 0 only if the guest saw the layout's node count and every command exited 0;
# prints one "numa_vm: PASS|FAIL <layout> <command>" line per command.
#
# Layouts (--layout, default 2x1):
#   2x1   2 nodes x 1 CPU, 2 GiB each
#   2x4i  2 nodes, 4 CPUs interleaved (CPUs 0,2 on node 0; 1,3 on node 1), 2 GiB each
#   4x1u  4 nodes x 1 CPU, unequal memory: 2048 + 1024 + 1024 + 512 MiB
# (weights_load_test loads a 256 MiB file from tmpfs into a 456 MiB region bound to one node,
# while Criterion runs another test beside it: 1 GiB nodes run out.)
# Options:
#   --layout L        as above
#   --file PATH       also copy PATH (file, relative or absolute) into the guest
#   --env K=V         export K=V in the guest (repeatable)
#   --timeout S       wall-clock limit for the whole boot (default 1500)
#   --log FILE        keep the serial console log in FILE (default: a temporary file,
#                     printed as the commands run)
#   --quiet           do not echo the guest console
#   --suite           add the project's guest suite (build it first:
#                     tools/bazel build -c opt //tests:all //tools:doctor //tools:stepsim):
#                     every test binary under bazel-out/k8-opt/bin/tests (numa_place_test
#                     fails if one of its tests skips), doctor (must print every node and
#                     heap mode numa) and stepsim --model tiny (also with
#                     --weights-numa replicate)
# Needs qemu-system-x86 and busybox-static (installed with apt-get as root when
# missing, like tools/bazel) and Debian's cloud kernel image package, fetched once
# with apt-get download into $CLLM_NUMA_VM_CACHE (default /var/cache/cllm-numa-vm).
set -euo pipefail

say() { printf 'numa_vm: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

layout=2x1
timeout_s=1500
log=""
quiet=0
suite=0
files=()
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --layout) layout=$2; shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --suite) suite=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
cmds=("$@")
progs=()

# ---- layout -> QEMU arguments ---------------------------------------------------------
numa_args=()
case "$layout" in
  2x1)  nodes=2; smp=2; mem_mb=(2048 2048); cpus=("cpus=0" "cpus=1") ;;
  2x4i) nodes=2; smp=4; mem_mb=(2048 2048); cpus=("cpus=0,cpus=2" "cpus=1,cpus=3") ;;
  4x1u) nodes=4; smp=4; mem_mb=(2048 1024 1024 512); cpus=("cpus=0" "cpus=1" "cpus=2" "cpus=3") ;;
  *) die "unknown layout $layout (2x1, 2x4i, 4x1u)" ;;
esac
total_mb=0
for ((i = 0; i < nodes; i++)); do
  total_mb=$((total_mb + mem_mb[i]))
  numa_args+=(-object "memory-backend-ram,id=m$i,size=${mem_mb[i]}M"
              -numa "node,nodeid=$i,${cpus[i]},memdev=m$i")
done
for ((i = 0; i < nodes; i++)); do
  for ((j = 0; j < nodes; j++)); do
    [ $i -eq $j ] || numa_args+=(-numa "dist,src=$i,dst=$j,val=20")
  done
done

if [ "$suite" = 1 ]; then
  bin=bazel-out/k8-opt/bin
  [ -d "$bin/tests" ] || die "--suite: no $bin/tests (run tools/bazel build -c opt //tests:all //tools:doctor //tools:stepsim from the repository root)"
  for f in "$bin"/tests/*; do
    [ -f "$f" ] && [ -x "$f" ] && [ "$(head -c 4 "$f" | tr -d '\0')" = $'\x7fELF' ] || continue
    case "$f" in
      */numa_place_test)  # these prove multi-node behaviour: a skip is a failure here
        cmds+=("o=\$($f --verbose 2>&1); rc=\$?; echo \"\$o\"; [ \$rc = 0 ] && ! echo \"\$o\" | grep -q SKIP") ;;
      *) cmds+=("$f") ;;
    esac
  done
  files+=(README.md)  # bad_input_test compares its table with README.md's
  for f in "$bin"/tests/*_test "$bin"/tests/*_mt; do
    [ -f "$f" ] && [ "$(head -c 4 "$f" | tr -d '\0')" = $'\x7fELF' ] && progs+=("$f")
  done
  [ -x "$bin/tools/doctor" ] || die "--suite: no $bin/tools/doctor"
  [ -x "$bin/tools/stepsim" ] || die "--suite: no $bin/tools/stepsim"
  progs+=("$bin/tools/doctor" "$bin/tools/stepsim")
  # KV pools interleaved over every node: each node holds some of their pages.
  cmds+=("$bin/tools/stepsim --model tiny --requests 20 --progress off --kv-numa interleave --json /tmp/kv.json > /dev/null || exit 1; grep -o '\"kv_pools\":{[^}]*}' /tmp/kv.json > /tmp/kvp.txt; cat /tmp/kvp.txt; grep -q '\"placement\":\"interleave\"' /tmp/kvp.txt && [ \$(grep -o 'pages_per_node\":\[[0-9,]*' /tmp/kvp.txt | tr ',[' '\n\n' | grep -c '^[1-9]') = $nodes ]")
  # kv_redis_test starts its own redis-server (and redis-cli for the cluster test).
  for r in /usr/bin/redis-server /usr/bin/redis-cli; do [ -x "$r" ] && progs+=("$r"); done
  # doctor: every node listed, and the heaps in NUMA mode.
  cmds+=("$bin/tools/doctor > /tmp/doctor.txt; cat /tmp/doctor.txt; grep -q 'mode: numa' /tmp/doctor.txt && [ \$(grep -c '^  node [0-9]* (OS node' /tmp/doctor.txt) = $nodes ]")
  cmds+=("$bin/tools/stepsim --model tiny --requests 60 --progress off")
  # stepsim with a copy of the weights per node: the report must say replicate.
  cmds+=("$bin/tools/stepsim --model tiny --requests 20 --progress off --weights-numa replicate > /tmp/ss.txt; rc=\$?; cat /tmp/ss.txt; [ \$rc = 0 ] && grep -q 'placement replicate' /tmp/ss.txt")
fi
[ "${#cmds[@]}" -gt 0 ] || die "no command given (see --help)"

# ---- packages -------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} (run as root or apt-get install them)"
  say "installing: ${need[*]} (one time)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/tmp/cllm-numa-vm-apt.log 2>&1; then
    apt-get update -qq >>/tmp/cllm-numa-vm-apt.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >>/tmp/cllm-numa-vm-apt.log 2>&1 || die "could not install ${need[*]}; see /tmp/cllm-numa-vm-apt.log"
  fi
fi
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' && ldd /bin/busybox >/dev/null 2>&1; then
  die "/bin/busybox is not static (install busybox-static)"
fi

# ---- kernel ---------------------------------------------------------------------------
cache=${CLLM_NUMA_VM_CACHE:-/var/cache/cllm-numa-vm}
mkdir -p "$cache"
kernel=$(ls "$cache"/vmlinuz-* 2>/dev/null | head -n 1 || true)
if [ -z "$kernel" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || die "no Debian cloud kernel package found (apt-cache depends linux-image-cloud-amd64)"
  say "fetching kernel package $pkg into $cache (one time)"
  (cd "$cache" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
  deb=$(ls "$cache"/"$pkg"_*.deb | head -n 1)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache" --wildcards --strip-components=2 './boot/vmlinuz-*' \
    || die "could not unpack the kernel from $deb"
  rm -f "$deb"
  kernel=$(ls "$cache"/vmlinuz-* | head -n 1)
fi

# ---- initramfs ------------------------------------------------------------------------
work=$(mktemp -d /tmp/cllm-numa-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,cmds}
cp /bin/busybox "$root/bin/busybox"

copied=" "
copy_file() {  # copy_file PATH: at its absolute path, links followed
  local abs
  abs=$(readlink -f "$1") || die "cannot resolve $1"
  [ -f "$abs" ] || die "not a file: $1"
  case "$copied" in *" $abs "*) return 0 ;; esac
  copied+="$abs "
  mkdir -p "$root$(dirname "$abs")"
  cp -L "$abs" "$root$abs"
  # A link given by path (e.g. bazel-out/...): make the same path work in the guest.
  local given
  given=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  if [ "$given" != "$abs" ] && [ ! -e "$root$given" ]; then
    mkdir -p "$root$(dirname "$given")"
    ln -s "$abs" "$root$given"
  fi
}
copy_program() {  # copy_program PATH: the program and its shared-library closure
  copy_file "$1"
  local lib
  while read -r lib; do
    [ -n "$lib" ] && copy_file "$lib"
  done < <(ldd "$(readlink -f "$1")" 2>/dev/null | grep -oE '(/[^ ]+)( \(0x|$)' | awk '{print $1}' || true)
}

cwd=$(pwd)
mkdir -p "$root$cwd"
i=0
for c in "${cmds[@]}"; do
  prog=${c%% *}
  if [ -f "$prog" ]; then copy_program "$prog"
  elif [[ "$prog" =~ ^[A-Za-z0-9_./-]+$ && "$prog" == */* ]]; then die "command $i: no file $prog"
  fi
  printf '%s\n' "$c" > "$root/cmds/$i"
  i=$((i + 1))
done
for p in "${progs[@]}"; do copy_program "$p"; done
for f in "${files[@]}"; do copy_file "$f"; done
: > "$root/cmds/env"
for e in "${envs[@]}"; do printf 'export %q\n' "$e" >> "$root/cmds/env"; done

cat > "$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
# Programs copied under /tmp stay visible (the initramfs root is writable anyway).
[ -n "\$(ls -A /tmp)" ] || mount -t tmpfs tmp /tmp
mount -t tmpfs shm /dev/shm
echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd
ifconfig lo 127.0.0.1 up 2>/dev/null
n=\$(ls -d /sys/devices/system/node/node[0-9]* | wc -l)
echo "CLLM-VM nodes=\$n cpus=\$(nproc) kernel=\$(uname -r)"
for d in /sys/devices/system/node/node[0-9]*; do
  echo "CLLM-VM \$(basename \$d) cpus=\$(cat \$d/cpulist) \$(grep MemTotal \$d/meminfo | sed 's/.*MemTotal: *//')"
done
. /cmds/env
export TMPDIR=/tmp HOME=/tmp
cd $(printf '%q' "$cwd")
i=0
while [ -e /cmds/\$i ]; do
  echo "CLLM-VM start \$i: \$(cat /cmds/\$i)"
  t0=\$(cut -d' ' -f1 /proc/uptime)
  sh -c "\$(cat /cmds/\$i)" </dev/null 2>&1
  rc=\$?
  t1=\$(cut -d' ' -f1 /proc/uptime)
  echo "CLLM-VM rc \$i=\$rc t0=\$t0 t1=\$t1"
  i=\$((i + 1))
done
echo "CLLM-VM done"
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) > "$work/initrd.cpio"

# ---- boot -----------------------------------------------------------------------------
[ -n "$log" ] || log=$work/console.log
: > "$log"
say "layout $layout: $nodes nodes, $smp CPUs, ${total_mb} MiB; initramfs $(du -h "$work/initrd.cpio" | cut -f1); ${#cmds[@]} command(s)"
t_start=$(date +%s)
if [ "$quiet" = 0 ]; then tail -n +1 -f "$log" & tail_pid=$!; else tail_pid=""; fi
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu "${CLLM_NUMA_VM_CPU:-qemu64}" -smp "$smp" -m "${total_mb}M" \
  "${numa_args[@]}" -kernel "$kernel" -initrd "$work/initrd.cpio" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  -display none -monitor none -serial "file:$log" -no-reboot </dev/null
qrc=$?
set -e
[ -n "$tail_pid" ] && { sleep 0.5; kill "$tail_pid" 2>/dev/null; wait "$tail_pid" 2>/dev/null || true; }
t_end=$(date +%s)

# ---- verdict (the console log; SeaBIOS escape codes mean no ^ anchors) ---------------
clean=$(tr -d '\r' < "$log")
fail=0
seen=$(printf '%s\n' "$clean" | grep -oE 'CLLM-VM nodes=[0-9]+' | head -n 1 | cut -d= -f2 || true)
if [ "$seen" != "$nodes" ]; then
  say "FAIL $layout: the guest saw ${seen:-no} nodes, expected $nodes"
  fail=1
fi
for ((i = 0; i < ${#cmds[@]}; i++)); do
  line=$(printf '%s\n' "$clean" | grep -oE "CLLM-VM rc $i=[0-9]+ t0=[0-9.]+ t1=[0-9.]+" | tail -n 1 || true)
  rc=$(printf '%s' "$line" | sed -nE 's/.*=([0-9]+) t0=.*/\1/p')
  secs=$(printf '%s' "$line" | awk -F'[ =]' '{printf "%.1f", $8 - $6}')
  if [ "$rc" = 0 ]; then
    echo "numa_vm: PASS $layout ${cmds[i]} (${secs} s in the guest)"
  else
    echo "numa_vm: FAIL $layout ${cmds[i]} (exit ${rc:-none: the guest never finished it})"
    fail=1
  fi
done
if ! printf '%s\n' "$clean" | grep -q 'CLLM-VM done'; then
  say "FAIL $layout: the guest did not finish (qemu exit $qrc after $((t_end - t_start)) s)"
  fail=1
fi
say "layout $layout: $((t_end - t_start)) s wall, $([ $fail = 0 ] && echo passed || echo FAILED)"
exit $fail
