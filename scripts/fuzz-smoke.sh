#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets (nightly) and runs each for a bounded time
# from its committed seed corpus (fuzz/seeds/<target>), failing on any crash, timeout or
# out-of-memory. Prints the executions of each target.
#
#   FUZZ_SECONDS  seconds per target (default 25)
#   FUZZ_TARGETS  space-separated targets to run (default: all of fuzz/Cargo.toml)
#   FUZZ_TIMEOUT  seconds one input may take before it counts as a hang (default 60: the
#                 sanitizer build is ~50x slower than release, so a 24 KiB image whose
#                 check -r all takes 0.13 s in release took 6 s here, and 20 s on a loaded
#                 machine); a slower input is reported as slow only past the same limit
#
# New findings are written to fuzz/artifacts/<target>/ (gitignored); the working corpus
# grows in a temporary directory and is thrown away.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

seconds="${FUZZ_SECONDS:-25}"
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"

# Longest input worth trying per target: headers fit in 8 KiB; whole small images (the
# malformed corpus files run up to ~24 KiB) for the targets that take a file.
max_len() {
  case "$1" in
    fvd_header|qed_header) echo 8300 ;;
    engine_image|check|inspect) echo 40000 ;;
    fvd_replay|model) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

cargo +nightly fuzz build
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for target in $targets; do
  corpus="$work/$target"
  mkdir -p "$corpus" "artifacts/$target"
  log="$work/$target.log"
  echo "== fuzz $target (${seconds}s)"
  status=0
  cargo +nightly fuzz run "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" \
    -timeout="${FUZZ_TIMEOUT:-60}" -report_slow_units="${FUZZ_TIMEOUT:-60}" -rss_limit_mb=2048 -len_control=0 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  summary+=("$target: $execs executions in ${seconds}s (exit $status)")
  if [ "$status" != 0 ] || grep -qE '^==[0-9]+==ERROR|panicked at|deadly signal|Test unit written to .*/(crash|timeout|oom|leak)-' "$log"; then
    failed+=("$target")
    echo "-- $target FAILED; the end of its log:"
    tail -n 60 "$log"
  fi
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
