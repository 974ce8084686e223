//! Image chains run as core's chain of engines: an FVD image over an FVD image over a QED
//! image over a raw file (never QED over FVD: QEMU, QED's other reader, cannot read an FVD
//! base), built and written with `fvd-img` as a user would, reads as the
//! flat disk the writes describe — through `fvd-img`, the blocking driver and the
//! threaded executor — while the host only performs commands on the files of the layer
//! each command names: no image's base is ever read by the host except the raw file
//! under the last image.

mod common;

use common::{create, ok, scratch};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::executor::{Executor, ExecutorOptions};
use fvd_host::host::files::{open_image, open_storage, Layers};
use fvd_host::testing::hooked::{Hooked, ReadCounter};
use std::fs;
use std::path::Path;

const K: usize = 1024;
const SIZE: usize = 1024 * K;

/// Writes `byte` over `len` bytes at `at` of `image` with `fvd-img io`, and in `model`.
fn write(dir: &Path, image: &str, byte: u8, at: usize, len: usize, model: &mut [u8]) {
    let command = format!("write -q -P {byte:#x} {at} {len}");
    ok(dir, &["io", "-c", &command, image]);
    model[at..at + len].fill(byte);
}

/// The four files: base.raw (a pattern, shorter than the disk), low.qed over it, mid.fvd
/// over low.qed, top.fvd over mid.fvd, each image with writes of its own, some
/// overlapping the ones below. Returns the guest bytes top.fvd must read as.
fn three_deep_chain(dir: &Path) -> Vec<u8> {
    let raw: Vec<u8> = (0..SIZE - 100 * K)
        .map(|i| (i * 7 % 251) as u8 + 1)
        .collect();
    fs::write(dir.join("base.raw"), &raw).unwrap();
    let mut model = vec![0u8; SIZE];
    model[..raw.len()].copy_from_slice(&raw);
    let size = SIZE.to_string();
    create(
        dir,
        &["-f", "qed", "-b", "base.raw", "-F", "raw", "low.qed", &size],
    );
    write(dir, "low.qed", 0x11, 64 * K, 128 * K, &mut model);
    write(dir, "low.qed", 0x12, SIZE - 64 * K, 64 * K, &mut model);
    create(
        dir,
        &["-f", "fvd", "-b", "low.qed", "-F", "qed", "mid.fvd", &size],
    );
    write(dir, "mid.fvd", 0x22, 128 * K, 128 * K, &mut model);
    create(
        dir,
        &["-f", "fvd", "-b", "mid.fvd", "-F", "fvd", "top.fvd", &size],
    );
    write(dir, "top.fvd", 0x33, 160 * K, 32 * K, &mut model);
    write(dir, "top.fvd", 0x34, 512 * K + 512, 4 * K, &mut model);
    model
}

#[test]
fn base_reads_of_a_three_deep_chain_are_served_by_core_not_the_host() {
    let dir = scratch();
    let d = dir.path();
    let model = three_deep_chain(d);

    // fvd-img reads the whole chain as the flat disk.
    ok(d, &["convert", "-O", "raw", "top.fvd", "flat.raw"]);
    assert!(fs::read(d.join("flat.raw")).unwrap() == model, "convert");
    for (at, byte) in [(64 * K, 0x11), (160 * K, 0x33), (224 * K, 0x22)] {
        let command = format!("read -q -P {byte:#x} {at} 4k");
        ok(d, &["io", "-c", &command, "top.fvd"]);
    }

    // The driver runs one engine per image, over that image's own files.
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let storage = open_storage(&d.join("top.fvd"), options).unwrap();
    let Layers { files, keys, .. } = storage.into_layers(&d.join("top.fvd")).unwrap();
    assert_eq!(files.len(), 3, "three images, three layers");
    let layers: Vec<_> = files
        .into_iter()
        .map(|inner| Hooked::new(inner, ReadCounter::default()))
        .collect();
    let mut driver = Driver::open_chain(layers, &keys, options, None).unwrap();
    assert_eq!(driver.layers(), 3);
    let got = driver.read(0, SIZE).unwrap();
    assert!(got == model, "driver read");
    let reads = |driver: &mut Driver<Hooked<_, ReadCounter>>, layer| {
        driver.layer_storage(layer).unwrap().hook.reads
    };
    // No image's base goes through the host, but the raw file under the last one.
    assert_eq!(reads(&mut driver, 0)[2], 0, "the host read top.fvd's base");
    assert_eq!(reads(&mut driver, 1)[2], 0, "the host read mid.fvd's base");
    assert!(
        reads(&mut driver, 1)[0] > 0,
        "mid.fvd's own engine reads its file"
    );
    assert!(
        reads(&mut driver, 2)[0] > 0,
        "low.qed's own engine reads its file"
    );
    assert!(
        reads(&mut driver, 2)[2] > 0,
        "base.raw is read under low.qed"
    );
    drop(driver);

    // The opener does the same, and so does the threaded executor.
    let mut driver = open_image(&d.join("top.fvd"), options).unwrap();
    assert_eq!(driver.layers(), 3);
    assert!(driver.read(0, SIZE).unwrap() == model, "open_image");
    drop(driver);
    let mut executor = Executor::open(
        &d.join("top.fvd"),
        ExecutorOptions {
            writable: false,
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    let mut tickets = Vec::new();
    for at in (0..SIZE).step_by(64 * K) {
        tickets.push((at, executor.submit_read(at as u64, 64 * K).unwrap()));
    }
    for (at, ticket) in tickets {
        let done = executor.wait(ticket).unwrap();
        assert!(done.result.is_ok(), "executor read at {at}");
        assert!(done.data == model[at..at + 64 * K], "executor read at {at}");
    }
    executor.close().unwrap();
}
