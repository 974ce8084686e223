//! Links the firmware for the thumb target, and with the `qemu` feature makes the
//! self-test's factory image: a FAT16 volume with a fake MBR (embedded-sdmmc mounts
//! partition 0) holding HELLO.TXT, built with mkfs.fat and mcopy (dosfstools, mtools).

use std::path::PathBuf;
use std::process::Command;

/// Size of the factory image: enough clusters of 512 bytes for FAT16.
const BASE_BYTES: u64 = 2560 << 10;
/// Content of HELLO.TXT (the self-test compares it byte for byte).
const HELLO: &str = "hello from the factory image\n";

fn run(program: &str, args: &[&str]) {
    match Command::new(program).args(args).status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{program} {args:?} failed: {status}"),
        Err(e) => panic!(
            "{program} is needed to build the self-test's FAT image (apt: dosfstools mtools): {e}"
        ),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=memory.x");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.starts_with("thumb") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    if std::env::var_os("CARGO_FEATURE_QEMU").is_none() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    let image = out.join("base.img");
    let hello = out.join("HELLO.TXT");
    let _ = std::fs::remove_file(&image);
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(BASE_BYTES))
        .expect("create base.img");
    std::fs::write(&hello, HELLO).expect("write HELLO.TXT");
    let image = image.to_str().expect("OUT_DIR is UTF-8");
    run(
        "mkfs.fat",
        &["-F", "16", "-s", "1", "--mbr=y", "-n", "FVDBASE", image],
    );
    run(
        "mcopy",
        &["-i", image, hello.to_str().expect("UTF-8"), "::HELLO.TXT"],
    );
}
