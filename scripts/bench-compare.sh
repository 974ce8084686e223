#!/usr/bin/env bash
# One comparison run for BENCHMARKS.md: raw pread/pwrite, FVD (plain and compact, fully
# allocated) through the executor, and `qemu-img bench` on fully allocated qcow2 and QED
# images of the same size, for random and sequential 4 KiB and 64 KiB reads and writes at
# queue depth 16; then journal writes per guest write with a flush every 1000 writes.
#
# Usage: scripts/bench-compare.sh [DIR] [extra fvd-bench options...]
#   DIR defaults to target/fvd-bench (must not be tmpfs: the page cache is part of the
#   measurement and tmpfs has no write-back). Everything goes through the page cache;
#   every write run ends with fdatasync inside the timed span. Needs qemu-img.
# Not part of scripts/test-all.sh: it takes a few minutes and its figures depend on the
# machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-target/fvd-bench}
shift || true
mkdir -p "$dir"

fstype=$(df -T "$dir" | awk 'NR == 2 { print $2 }')
if [ "$fstype" = tmpfs ]; then
  echo "error: $dir is on tmpfs; pick a directory on a disk-backed file system" >&2
  exit 1
fi

cargo build --release -q -p fvd-host --bin fvd-bench

echo "== machine"
echo "nproc: $(nproc)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB" }')"
echo "kernel: $(uname -sr)"
echo "file system of $dir: $fstype ($(df -h "$dir" | awk 'NR == 2 { print $1 }'))"
echo "qemu-img: $(qemu-img --version | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: target/release/fvd-bench --dir $dir $*"
echo

target/release/fvd-bench --dir "$dir" "$@"

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
