//! What the QEMU-backed host tests share: finding the tools, building a firmware binary
//! for the thumb target (a nested `cargo build`), where the workspace keeps its files, and
//! fvd-img run in process.

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// The thumb target the firmware builds for.
pub const TARGET: &str = "thumbv7em-none-eabihf";

/// The workspace root (where scripts/ and target/ are).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("firmware/ sits in the workspace")
        .to_path_buf()
}

/// The target directory cargo builds into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| workspace().join(dir))
        .unwrap_or_else(|| workspace().join("target"))
}

/// Whether `tool` runs (found on PATH).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `None` (after saying why on stderr) when QEMU is not installed: the test then has
/// nothing to run the firmware on. Every other missing piece is a failure.
pub fn qemu_or_skip(test: &str) -> Option<()> {
    if have("qemu-system-arm") {
        return Some(());
    }
    eprintln!("{test}: SKIPPED: qemu-system-arm is not installed (apt: qemu-system-arm)");
    None
}

/// Builds firmware binary `bin` (release, `qemu` feature) and returns its ELF.
pub fn build_firmware(bin: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "-q", "-p", "fvd-firmware", "--release", "--target"])
        .args([TARGET, "--features", "qemu", "--bin", bin])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {bin} firmware failed");
    target_dir().join(TARGET).join("release").join(bin)
}

/// Runs `program` and returns its stdout, failing the test (with its output) on a
/// non-zero status.
pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (dosfstools/mtools) is needed: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// fvd-img in process; its exit code and everything it printed.
pub fn fvd_img(args: &[&str]) -> (u8, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv = std::iter::once("fvd-img").chain(args.iter().copied());
    let code = fvd_host::cli::run_with(argv, &mut out, &mut err);
    let text = String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err);
    (code, text)
}
