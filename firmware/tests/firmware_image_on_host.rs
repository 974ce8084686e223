//! The image the firmware writes in QEMU on its host-file medium is an FVD file like any
//! other: the self-test firmware saves its factory image as `target/firmware/base.img` and
//! writes `target/firmware/disk.fvd` over it; then `fvd-img check` finds it clean,
//! `fvd-img convert -O raw` flattens it, and `fsck.fat -n` and `mtype` read the FAT volume
//! with the file the firmware wrote. Skipped (with a message) only without qemu-system-arm.

mod common;

use common::{build_firmware, fvd_img, qemu_or_skip, run, workspace};
use std::process::Command;

/// What the self-test firmware writes through the overlay (src/bin/selftest.rs).
const FIRMWARE_TXT: &[u8] = b"written by the firmware on the host-file medium\n";

#[test]
fn the_image_the_firmware_writes_on_a_host_file_is_checked_and_converted_by_fvd_img() {
    let Some(()) = qemu_or_skip("firmware_image_on_host") else {
        return;
    };
    let elf = build_firmware("selftest");
    let dir = workspace().join("target/firmware");
    let image = dir.join("disk.fvd");
    let _ = std::fs::remove_file(&image);
    let output = Command::new(workspace().join("scripts/qemu-run.sh"))
        .arg(&elf)
        .output()
        .expect("scripts/qemu-run.sh runs");
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "self-test firmware: {}\n{log}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        log.contains("host_file_overlay_beside_its_base: ok"),
        "{log}"
    );

    let image = image.to_str().unwrap();
    let flat = dir.join("disk-flat.raw");
    let flat = flat.to_str().unwrap();
    let (code, report) = fvd_img(&["check", image]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("No errors"), "{report}");
    let (code, text) = fvd_img(&["convert", "-O", "raw", image, flat]);
    assert_eq!(code, 0, "{text}");
    run("fsck.fat", &["-n", flat]);
    assert_eq!(run("mtype", &["-i", flat, "::FIRMWARE.TXT"]), FIRMWARE_TXT);
    // The base the firmware saved is the factory image: HELLO.TXT reads through.
    let base = dir.join("base.img");
    let hello = run("mtype", &["-i", base.to_str().unwrap(), "::HELLO.TXT"]);
    assert_eq!(hello, b"hello from the factory image\n");
    std::fs::remove_file(flat).unwrap();
}
