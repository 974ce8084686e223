#!/usr/bin/env bash
# Cargo runner for thumbv7em-none-eabihf (.cargo/config.toml): runs the firmware ELF on
# QEMU's mps2-an386 (Cortex-M4F) with semihosting, decodes its defmt output with
# defmt-print (when the ELF logs with defmt), and exits with the firmware's status (0 only
# when it exited 0; 124 on a timeout, QEMU_TIMEOUT seconds, 120 by default). QEMU runs in
# the workspace root (where target/firmware/ is made for the firmware's host files);
# further arguments reach the firmware as its semihosting command line.
set -uo pipefail
elf="$(realpath "$1")"
shift
cd "$(dirname "$0")/.." || exit 1
mkdir -p target/firmware
semihosting=enable=on,target=native
for arg in "$(basename "$elf")" "$@"; do semihosting+=",arg=${arg//,/,,}"; done
for tool in qemu-system-arm defmt-print; do
  command -v "$tool" >/dev/null || { echo "qemu-run: $tool is missing (see .ci/run)" >&2; exit 127; }
done
qemu=(timeout --foreground "${QEMU_TIMEOUT:-120}" qemu-system-arm -machine mps2-an386 -nographic
      -monitor none -serial none -semihosting-config "$semihosting" -kernel "$elf")
# (grep reads a process substitution: with pipefail, a pipe into grep -q could fail)
if grep -q '_defmt_version_' <(readelf -s "$elf"); then
  "${qemu[@]}" | defmt-print -e "$elf" stdin
  status=${PIPESTATUS[0]}
else # a firmware without defmt (the footprint binaries) prints nothing to decode
  "${qemu[@]}"
  status=$?
fi
[ "$status" -eq 124 ] && echo "qemu-run: TIMEOUT after ${QEMU_TIMEOUT:-120} s" >&2
exit "$status"
