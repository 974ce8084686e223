//! What the firmware's host tests share: finding the tools, building a firmware binary
//! for the thumb target (a nested `cargo build`), where the workspace keeps its files,
//! fvd-img run in process, and the FAT16 factory image the tests start from.

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

/// fvd-img in process, required to succeed; everything it printed.
pub fn fvd_img_ok(args: &[&str]) -> String {
    let (code, text) = fvd_img(args);
    assert_eq!(code, 0, "fvd-img {args:?}: {text}");
    text
}

/// Bytes of the factory image every test formats (2.5 MiB: FAT16 with one sector per
/// cluster).
pub const FACTORY_BYTES: u64 = 2560 << 10;

/// Makes `path` a FAT16 factory image with a fake MBR (embedded-sdmmc mounts partition 0)
/// labelled FVDBASE, holding `files` (name, content) in its root directory, and returns
/// its bytes (mkfs.fat and mcopy: dosfstools, mtools).
pub fn factory_fat16(path: &Path, files: &[(&str, &[u8])]) -> Vec<u8> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .unwrap()
        .set_len(FACTORY_BYTES)
        .unwrap();
    let image = path.to_str().unwrap();
    run(
        "mkfs.fat",
        &["-F", "16", "-s", "1", "--mbr=y", "-n", "FVDBASE", image],
    );
    for (name, content) in files {
        let staged = path.with_extension(format!("{name}.src"));
        std::fs::write(&staged, content).unwrap();
        run(
            "mcopy",
            &["-i", image, staged.to_str().unwrap(), &format!("::{name}")],
        );
        std::fs::remove_file(&staged).unwrap();
    }
    std::fs::read(path).unwrap()
}
