#!/usr/bin/env bash
# Builds the browser inspector into web-demo/ (fvd-wasm through wasm-bindgen --target
# web into web-demo/pkg/), writes sample images with fvd-img into web-demo/samples/, and
# with --serve [PORT] serves web-demo/ on 127.0.0.1 and prints the URL.
# Installs wasm-bindgen-cli at the wasm-bindgen crate's exact version when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# The CLI must be the crate's version (pinned with `=` in wasm/Cargo.toml).
version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' wasm/Cargo.toml)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  # Not --locked: the CLI's own lockfile pins a webpki-roots release the index here lacks
  # (see ../shared/notes/toolchain-recipe.md); the crate version itself is exact.
  cargo install wasm-bindgen-cli --version "$version"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

target="${CARGO_TARGET_DIR:-target}"
# Sized for download, for this build only (the workspace's release profile, which the
# host tools use, stays as it is; overflow checks stay on): smallest code, whole-program
# optimisation, no unwinding, no debug info. BENCHMARKS.md section 9 has the sizes.
cargo build -p fvd-wasm --target wasm32-unknown-unknown --release \
  --config 'profile.release.opt-level="z"' --config profile.release.lto=true \
  --config profile.release.codegen-units=1 --config 'profile.release.panic="abort"' \
  --config profile.release.debug=0
wasm-bindgen --target web --remove-name-section --remove-producers-section \
  --out-dir web-demo/pkg "$target/wasm32-unknown-unknown/release/fvd_wasm.wasm"
# wasm-opt from npm's binaryen (a devDependency of web-demo/; never Debian's binaryen,
# which emits broken modules). The features are those rustc's wasm32 target enables.
wasm_opt=web-demo/node_modules/.bin/wasm-opt
if [ ! -x "$wasm_opt" ] && command -v npm >/dev/null; then
  (cd web-demo && npm ci --no-audit --no-fund --silent)
fi
if [ -x "$wasm_opt" ]; then
  "$wasm_opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    web-demo/pkg/fvd_wasm_bg.wasm -o web-demo/pkg/fvd_wasm_bg.wasm
else
  echo "wasm-opt not found (needs npm): the module is not size-optimised" >&2
fi
wasm_bytes=$(stat -c %s web-demo/pkg/fvd_wasm_bg.wasm)
echo "built web-demo/pkg ($wasm_bytes bytes of wasm, $(gzip -9c web-demo/pkg/fvd_wasm_bg.wasm | wc -c) gzipped)"

# Sample images: an FVD overlay on a raw base, and a QED image, small and sparse.
cargo build -q -p fvd-host --bin fvd-img
img="$target/debug/fvd-img"
s=web-demo/samples
rm -rf "$s" && mkdir -p "$s"
truncate -s 4M "$s/base.raw"
"$img" io -f raw -c 'write -P 0x42 1M 64k' "$s/base.raw" >/dev/null
"$img" create -f fvd -b base.raw -F raw "$s/overlay.fvd" >/dev/null
"$img" io -c 'write -P 0xab 0 64k' "$s/overlay.fvd" >/dev/null
"$img" create -f qed -o cluster_size=64k "$s/disk.qed" 8M >/dev/null
"$img" io -f qed -c 'write -P 0xcd 2M 64k' "$s/disk.qed" >/dev/null
echo "samples in $s: $(cd "$s" && echo *)"

if [ "${1:-}" = "--serve" ]; then
  port="${2:-8000}"
  echo "serving web-demo/ at http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory web-demo
fi
