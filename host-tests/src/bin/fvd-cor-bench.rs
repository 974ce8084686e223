//! Copy-on-read benchmark: read a cold copy-on-write image twice, sequentially, through a
//! base image with added latency per base request (a remote or slow base), with and
//! without copy-on-read, and print the second pass's speedup.
//!
//! Usage: fvd-cor-bench [--size-mib N] [--latency-us N] [--dir DIR]

use fvd_core::engine::FileId;
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::files::{open_storage, FileStorage};
use fvd_host::host::storage::Storage;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An image's files whose every base read waits `latency` first.
struct SlowBase {
    inner: FileStorage,
    latency: Duration,
}

impl Storage for SlowBase {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if file == FileId::Base {
            std::thread::sleep(self.latency);
        }
        self.inner.read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(file, offset, buf)
    }
    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.inner.write_zeroes(file, offset, len, unmap)
    }
    fn flush(&mut self, file: FileId) -> io::Result<()> {
        self.inner.flush(file)
    }
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.inner.set_len(file, len)
    }
    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        self.inner.len(file)
    }
    fn failed_flush_loses_writes(&self) -> bool {
        self.inner.failed_flush_loses_writes()
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn pass(driver: &mut Driver<SlowBase>, size: u64) -> Duration {
    let start = Instant::now();
    let piece = 1 << 20;
    let mut at = 0;
    while at < size {
        driver.read(at, piece).expect("read");
        at += piece as u64;
    }
    driver.run_until_idle().expect("idle");
    start.elapsed()
}

fn run(
    dir: &Path,
    size_mib: u64,
    latency: Duration,
    copy_on_read: bool,
) -> (Duration, Duration, u64) {
    let image = dir.join(if copy_on_read { "cor.fvd" } else { "plain.fvd" });
    let _ = std::fs::remove_file(&image);
    let status = Command::new(std::env::current_exe().unwrap().with_file_name("fvd-img"))
        .args([
            "create",
            "-q",
            "-f",
            "fvd",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=65536",
        ])
        .arg(&image)
        .status()
        .expect("fvd-img create");
    assert!(status.success());
    let options = DriverOptions {
        copy_on_read: Some(copy_on_read),
        ..DriverOptions::default()
    };
    let storage = SlowBase {
        inner: open_storage(&image, options).expect("open"),
        latency,
    };
    let mut driver = Driver::open(storage, options).expect("open");
    let size = size_mib << 20;
    let first = pass(&mut driver, size);
    let second = pass(&mut driver, size);
    let fills = driver.engine().stats().cor_fills_done;
    driver.close().expect("close");
    (first, second, fills)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = arg(&args, "--size-mib")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let latency = Duration::from_micros(
        arg(&args, "--latency-us")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200),
    );
    let dir = arg(&args, "--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("fvd-cor-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.raw");
    if std::fs::metadata(&base).map(|m| m.len()).unwrap_or(0) != size_mib << 20 {
        let mut f = std::fs::File::create(&base).unwrap();
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        for _ in 0..size_mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    println!("cold CoW image of {size_mib} MiB over a raw base with {} us added per base request, 64 KiB blocks, 1 MiB sequential reads", latency.as_micros());
    println!(
        "{:<20} {:>12} {:>12} {:>10} {:>10}",
        "mode", "pass 1 (s)", "pass 2 (s)", "speedup", "fills"
    );
    for copy_on_read in [false, true] {
        let (first, second, fills) = run(&dir, size_mib, latency, copy_on_read);
        println!(
            "{:<20} {:>12.2} {:>12.2} {:>9.1}x {:>10}",
            if copy_on_read {
                "copy-on-read"
            } else {
                "no copy-on-read"
            },
            first.as_secs_f64(),
            second.as_secs_f64(),
            first.as_secs_f64() / second.as_secs_f64(),
            fills
        );
    }
}
