#!/usr/bin/env bash
# Peak memory (max RSS) of fvd-img's check, map, info and io on 1 TiB images (FVD compact,
# FVD over a raw base, QED), beside qemu-img on the same QED image. Images are sparse and
# deleted afterwards. Usage: scripts/measure-memory.sh [path/to/fvd-img]
# Prints one line per command: "<format> <command>: <max RSS KiB> KiB, <seconds> s".
set -euo pipefail
cd "$(dirname "$0")/.."
img="${1:-target/release/fvd-img}"
[ -x "$img" ] || cargo build --release -p fvd-host --bin fvd-img
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() { # label, command...
  local label="$1"; shift
  /usr/bin/time -f "%M %e" "$@" >/dev/null 2>"$work/time" || true
  read -r kib secs < <(tail -1 "$work/time")
  printf '%-34s %8s KiB  %6s s\n' "$label:" "$kib" "$secs"
}

writes=(-c 'write -P 0xab 0 1M' -c 'write -P 0xcd 512G 1M' -c 'write -P 0xef 1023G 1M')

"$img" create -f fvd -o compact_image=on "$work/compact.fvd" 1T >/dev/null
"$img" io "${writes[@]}" "$work/compact.fvd" >/dev/null
truncate -s 1T "$work/base.raw"
"$img" create -f fvd -b "$work/base.raw" -F raw "$work/overlay.fvd" 1T >/dev/null
"$img" io "${writes[@]}" "$work/overlay.fvd" >/dev/null
qemu-img create -q -f qed "$work/image.qed" 1T
"$img" io -f qed "${writes[@]}" "$work/image.qed" >/dev/null

for f in compact.fvd overlay.fvd image.qed; do
  measure "$f info"                "$img" info "$work/$f"
  measure "$f check"               "$img" check "$work/$f"
  measure "$f check --output json" "$img" check --output json "$work/$f"
  measure "$f map --output json"   "$img" map --output json "$work/$f"
  measure "$f io read 64M at 512G" "$img" io -c 'read 512G 64M' "$work/$f"
done
# Worst cases: every table entry of the compact image names physical chunk 0 (a million
# findings, streamed), and a map of a million alternating extents.
"$img" create -f fvd -o compact_image=on "$work/shared.fvd" 1T >/dev/null
table_offset=$("$img" info --output json "$work/shared.fvd" | sed -n 's/.*"table_offset": \([0-9]*\).*/\1/p' | head -1)
head -c 4194304 /dev/zero | dd of="$work/shared.fvd" bs=1M seek="$table_offset" oflag=seek_bytes conv=notrunc status=none
measure "shared.fvd check (1 Mi findings)"  "$img" check "$work/shared.fvd"
measure "shared.fvd check --output json"    "$img" check --output json "$work/shared.fvd"

measure "image.qed qemu-img check"            qemu-img check "$work/image.qed"
measure "image.qed qemu-img map --output json" qemu-img map --output json "$work/image.qed"
measure "image.qed qemu-io read 64M at 512G"   qemu-io -c 'read 512G 64M' "$work/image.qed"
