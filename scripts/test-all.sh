#!/usr/bin/env bash
# Every check and every test of the project, host and cross targets. Needs the tools that
# .ci/run installs (rustup targets thumbv7em-none-eabihf and wasm32-unknown-unknown,
# qemu-utils; for the firmware qemu-system-arm, defmt-print, dosfstools and mtools).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format"
cargo fmt --all -- --check

echo "== clippy (host crates)"
cargo clippy -p fvd-core -p fvd-host --all-targets -- -D warnings
echo "== clippy (firmware and core for thumbv7em-none-eabihf)"
cargo clippy -p fvd-core -p fvd-firmware --target thumbv7em-none-eabihf -- -D warnings
echo "== clippy (wasm and core for wasm32-unknown-unknown)"
cargo clippy -p fvd-core -p fvd-wasm --target wasm32-unknown-unknown -- -D warnings

echo "== build fvd-core for the embedded and browser targets"
cargo build -p fvd-core --target thumbv7em-none-eabihf
cargo build -p fvd-core --target wasm32-unknown-unknown
echo "== fvd-core without the QED engine (as the firmware builds it)"
cargo clippy -p fvd-core --no-default-features --all-targets -- -D warnings
cargo test -p fvd-core --no-default-features --lib
cargo build -p fvd-core --no-default-features --target thumbv7em-none-eabihf

echo "== host tests"
cargo test --workspace --exclude fvd-firmware --exclude fvd-wasm

echo "== fuzz smoke (nightly, cargo-fuzz)"
scripts/fuzz-smoke.sh

echo "== firmware: driver, self-test and logger on the host, the host-file image and fat-logger kills in QEMU, then the self-test firmware in QEMU"
cargo clippy -p fvd-firmware --all-targets -- -D warnings
cargo clippy -p fvd-firmware --target thumbv7em-none-eabihf --features qemu --bins -- -D warnings
cargo test -p fvd-firmware
cargo run -p fvd-firmware --target thumbv7em-none-eabihf --features qemu --bin selftest --release

echo "== browser inspector: wasm tests and Playwright e2e in headless Chromium"
scripts/test-web.sh
