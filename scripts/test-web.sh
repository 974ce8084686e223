#!/usr/bin/env bash
# The browser inspector's tests: fvd-wasm's wasm-bindgen-test tests in headless Chromium,
# then the page's Playwright end-to-end tests (playwright-core driving /usr/bin/chromium,
# never a browser download) against images made by fvd-img and qemu-img. Needs chromium,
# chromium-driver, node and npm (.ci/run installs the browser when missing); builds the
# page with scripts/build-web.sh, which installs wasm-bindgen-cli when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

scripts/build-web.sh

echo "== clippy (fvd-wasm's browser tests)"
cargo clippy -p fvd-wasm --target wasm32-unknown-unknown --tests -- -D warnings

echo "== fvd-wasm's exports equal fvd-img's JSON (native)"
cargo test -p fvd-wasm --test export_matches_cli

echo "== fvd-wasm tests in headless Chromium"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p fvd-wasm --target wasm32-unknown-unknown --tests

(cd web-demo && npm ci --no-audit --no-fund --silent)
echo "== the page's JavaScript type-checked against fvd-wasm's generated TypeScript typings"
(cd web-demo && npx tsc -p jsconfig.json)

echo "== inspector end-to-end (Playwright, system Chromium)"
# One test file at a time: each drives its own Chromium, and the machine has few cores.
# Screenshots of each view land in target/web-screens/ (look at them after a UI change);
# the sparse-image figures for BENCHMARKS.md in target/web-screens/sparse-figures.json.
FVD_IMG="$target/debug/fvd-img" WEB_SCREENS="$target/web-screens" \
  node --test --test-concurrency=1 web-demo/e2e/
