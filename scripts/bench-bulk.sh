#!/usr/bin/env bash
# The bulk commands side by side with qemu-img's analogous operations, in one run, on a
# 2 GiB sparse raw disk holding 500 MiB of data (1 MiB of random bytes every 4 MiB):
# convert (raw -> FVD plain and compact against raw -> qcow2; raw -> QED against qemu-img's
# QED; FVD -> raw against qcow2 -> raw), commit (an overlay holding 500 MiB into an empty
# raw base), rebase -b '' and prefetch (flattening an overlay over that disk) against
# qemu-img rebase -b ''. Prints each time, the ratio fvd-img / qemu-img (best of REPS runs
# each, the two run alternately) and the bytes on disk and apparent size of both outputs.
#
# Usage: scripts/bench-bulk.sh [DIR] [REPS]
#   DIR defaults to /var/tmp (must not be tmpfs); the images go into a fresh directory
#   under it, deleted on exit. REPS defaults to 3. Needs qemu-img and qemu-io.
# Not part of scripts/test-all.sh: it takes about a minute and its figures depend on the
# machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."

parent=${1:-/var/tmp}
reps=${2:-3}
work=$(mktemp -d "$parent/fvd-bench-bulk.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p fvd-host --bin fvd-img
fvd=$PWD/target/release/fvd-img

echo "== machine"
echo "nproc: $(nproc); kernel: $(uname -sr)"
echo "file system of $parent: $(df -T "$parent" | awk 'NR == 2 { print $2 }')"
echo "qemu-img: $(qemu-img --version | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

cd "$work"
size=$((2 << 30))
# The source: 500 runs of 1 MiB of random bytes, one every 4 MiB.
truncate -s $size src.raw
head -c $((1 << 20)) /dev/urandom > chunk
for i in $(seq 0 499); do
  dd if=chunk of=src.raw bs=1M seek=$((i * 4)) conv=notrunc status=none
  # Vary the chunk so no two runs are alike.
  printf '%08d' "$i" | dd of=chunk bs=8 seek=1 conv=notrunc status=none
done
rm chunk
# qemu-io / fvd-img io commands writing the same 500 MiB (a pattern per run).
data_writes=()
for i in $(seq 0 499); do
  data_writes+=(-c "write -q -P $((i % 255 + 1)) $((i * 4))M 1M")
done
# A few small writes for the overlays that are flattened.
small_writes=()
for i in $(seq 0 63); do
  small_writes+=(-c "write -q -P 0x5a $((i * 32))M 64k")
done

# best_of SETUP CMD...: runs CMD (after SETUP, a function, or - for none) REPS times;
# prints the fastest wall time and the smallest CPU time (user + system) in seconds. On a
# shared machine the CPU time is the steadier figure.
best_of() {
  local setup=$1
  shift
  local best="" cpu=""
  for _ in $(seq "$reps"); do
    [ "$setup" = - ] || "$setup"
    sync
    /usr/bin/time -f '%e %U %S' -o time.txt "$@" > /dev/null
    read -r wall user sys < time.txt
    best=$(echo "$wall $best" | awk '{ if ($2 == "" || $1 < $2) print $1; else print $2 }')
    cpu=$(echo "$user $sys $cpu" | awk '{ t = $1 + $2; if ($3 == "" || t < $3) print t; else print $3 }')
  done
  echo "$best $cpu"
}

# minimum "WALL CPU" "WALL CPU": the smaller wall and the smaller CPU time (either may
# be empty).
minimum() {
  echo "$1 $2" | awk 'NF == 2 { print $1, $2; next } { print ($1 < $3 ? $1 : $3), ($2 < $4 ? $2 : $4) }'
}

# pair FVD_SETUP QEMU_SETUP FVD_CMD... -- QEMU_CMD...: runs the two commands alternately,
# REPS times each, so both meet the same moments of the machine's load; sets t_fvd and
# t_q to "WALL CPU" (the best of each).
pair() {
  local fs=$1 qs=$2
  shift 2
  local -a fc=()
  while [ "$1" != -- ]; do
    fc+=("$1")
    shift
  done
  shift
  local f="" q=""
  for _ in $(seq "$reps"); do
    f=$(minimum "$f" "$(reps=1 best_of "$fs" "${fc[@]}")")
    q=$(minimum "$q" "$(reps=1 best_of "$qs" "$@")")
  done
  t_fvd=$f
  t_q=$q
}

# usage FILE...: bytes on disk and apparent bytes of the files together.
usage() {
  local disk=0 apparent=0
  for f in "$@"; do
    disk=$((disk + $(stat -c '%b*%B' "$f")))
    apparent=$((apparent + $(stat -c '%s' "$f")))
  done
  echo "$disk $apparent"
}

rows=()
# row NAME "FVD_WALL FVD_CPU" "QEMU_WALL QEMU_CPU" FVD_FILES QEMU_FILES
row() {
  local name=$1 uf uq
  local -a tf=($2) tq=($3)
  uf=$(usage $4)
  uq=$(usage $5)
  rows+=("$(printf '%-26s %6.2f %6.2f %6.2fx   %5.2f %5.2f %6.2fx %12s %12s %12s %12s' "$name" \
    "${tf[0]}" "${tq[0]}" "$(echo "${tf[0]} ${tq[0]}" | awk '{ print $1 / $2 }')" \
    "${tf[1]}" "${tq[1]}" "$(echo "${tf[1]} ${tq[1]}" | awk '{ print ($2 > 0 ? $1 / $2 : 0) }')" \
    ${uf% *} ${uq% *} ${uf#* } ${uq#* })")
}

check_same() {
  qemu-img compare -q "$@" || { echo "error: qemu-img compare $* differs" >&2; exit 1; }
}

# convert
clean_convert() { rm -f out.*; }
pair clean_convert clean_convert "$fvd" convert -f raw -O fvd src.raw out.fvd \
  -- qemu-img convert -f raw -O qcow2 src.raw out.qcow2
"$fvd" convert -f raw -O fvd src.raw out.fvd
# Kept for fvd -> raw and the compact row.
mv out.fvd plain.fvd
mv out.qcow2 plain.qcow2
row "convert raw->fvd" "$t_fvd" "$t_q" plain.fvd plain.qcow2

pair clean_convert clean_convert "$fvd" convert -f raw -O fvd -o compact_image=on src.raw out.fvd \
  -- qemu-img convert -f raw -O qcow2 src.raw out.qcow2
"$fvd" convert -f raw -O fvd -o compact_image=on src.raw out.fvd
row "convert raw->fvd compact" "$t_fvd" "$t_q" out.fvd plain.qcow2

pair clean_convert clean_convert "$fvd" convert -f raw -O qed src.raw out.qed \
  -- qemu-img convert -f raw -O qed src.raw out.qemu.qed
qemu-img convert -f raw -O qed src.raw out.qemu.qed
"$fvd" convert -f raw -O qed src.raw out.qed
qemu-img check -q -f qed out.qed
check_same -f raw -F qed src.raw out.qed
row "convert raw->qed" "$t_fvd" "$t_q" out.qed out.qemu.qed

pair clean_convert clean_convert "$fvd" convert -f fvd -O raw plain.fvd out.raw \
  -- qemu-img convert -f qcow2 -O raw plain.qcow2 out.qemu.raw
qemu-img convert -f qcow2 -O raw plain.qcow2 out.qemu.raw
"$fvd" convert -f fvd -O raw plain.fvd out.raw
check_same -f raw -F raw src.raw out.raw
row "convert fvd->raw" "$t_fvd" "$t_q" out.raw out.qemu.raw
rm -f out.*

# commit: an overlay holding 500 MiB over an empty raw base.
setup_commit() { rm -f cbase.raw && truncate -s $size cbase.raw; }
setup_commit_q() { rm -f cbase.q.raw && truncate -s $size cbase.q.raw; }
setup_commit
setup_commit_q
"$fvd" create -q -f fvd -b cbase.raw -F raw cov.fvd
"$fvd" io "${data_writes[@]}" cov.fvd
qemu-img create -q -f qcow2 -b cbase.q.raw -F raw cov.qcow2
qemu-io "${data_writes[@]}" cov.qcow2
pair setup_commit setup_commit_q "$fvd" commit -q cov.fvd -- qemu-img commit -q -d cov.qcow2
check_same -f raw -F raw cbase.raw cbase.q.raw
row "commit" "$t_fvd" "$t_q" cbase.raw cbase.q.raw
rm -f cbase.raw cbase.q.raw cov.fvd cov.qcow2

# rebase -b '' and prefetch: an overlay with 4 MiB of its own over the source.
setup_flat() {
  rm -f ov.fvd
  "$fvd" create -q -f fvd -b src.raw -F raw ov.fvd
  "$fvd" io "${small_writes[@]}" ov.fvd
}
setup_flat_q() {
  rm -f ov.qcow2
  qemu-img create -q -f qcow2 -b src.raw -F raw ov.qcow2
  qemu-io "${small_writes[@]}" ov.qcow2
}
# same_as_qcow2 FVD QCOW2: the FVD image read through fvd-img is the qcow2's guest.
same_as_qcow2() {
  rm -f check.raw
  "$fvd" convert -f fvd -O raw "$1" check.raw
  check_same -f raw -F qcow2 check.raw "$2"
  rm -f check.raw
}
pair setup_flat setup_flat_q "$fvd" rebase -b '' ov.fvd -- qemu-img rebase -b '' ov.qcow2
same_as_qcow2 ov.fvd ov.qcow2
row "rebase -b ''" "$t_fvd" "$t_q" ov.fvd ov.qcow2

pair setup_flat setup_flat_q "$fvd" prefetch -q ov.fvd -- qemu-img rebase -b '' ov.qcow2
same_as_qcow2 ov.fvd ov.qcow2
row "prefetch" "$t_fvd" "$t_q" ov.fvd ov.qcow2

# The same with 64 KiB blocks (the default block size of a 2 GiB image is 512 bytes,
# whose bitmap alone is 512 KiB).
setup_flat64() {
  rm -f ov.fvd
  "$fvd" create -q -f fvd -o block_size=64k -b src.raw -F raw ov.fvd
  "$fvd" io "${small_writes[@]}" ov.fvd
}
pair setup_flat64 setup_flat_q "$fvd" prefetch -q ov.fvd -- qemu-img rebase -b '' ov.qcow2
same_as_qcow2 ov.fvd ov.qcow2
row "prefetch, 64 KiB blocks" "$t_fvd" "$t_q" ov.fvd ov.qcow2

echo "== $(date -u +%F), best of $reps runs, 2 GiB disk with 500 MiB of data"
echo "wall: seconds, fvd-img / qemu-img / ratio; cpu: user + system seconds, the same; sizes in bytes"
printf '%-26s %6s %6s %7s   %5s %5s %7s %12s %12s %12s %12s\n' operation fvd qemu wall \
  fvd qemu cpu "fvd disk" "qemu disk" "fvd apparent" "qemu apparent"
for r in "${rows[@]}"; do echo "$r"; done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
