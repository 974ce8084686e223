//! `fvd-img prefetch -r RATE` runs on the concurrent executor, `fvd-img prefetch` (bulk)
//! on the serial driver's open: both open the image through the same gate and locks, so a
//! refused open reads the same either way; a running `prefetch -r` holds the image as a
//! writer; `-p` shows the progress line and `-q` silences everything; a copy that cannot
//! be written ends with the operating system's reason.

mod common;

use common::{assert_contains, create_fvd, fvd_img, ok, scratch, sparse_file};
use fvd_host::host::lock::{others_hold, Perms};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;

/// Offsets of header fields (FORMAT.md §3).
const DATA_OFFSET_FIELD: u64 = 24;

/// A background process; killed (by its id) when dropped.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fvd-img ARGS` in `cwd` and waits until it holds the write lock of `file`.
fn holding_write(cwd: &Path, args: &[&str], file: &str) -> Holder {
    let child = Command::new(env!("CARGO_BIN_EXE_fvd-img"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut holder = Holder(child);
    let observer = fs::File::open(cwd.join(file)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !others_hold(&observer).unwrap().perm.contains(Perms::WRITE) {
        assert!(
            holder.0.try_wait().unwrap().is_none(),
            "fvd-img {args:?} ended before locking {file}"
        );
        assert!(
            Instant::now() < deadline,
            "fvd-img {args:?} never locked {file}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder
}

/// `prefetch FILE` and `prefetch -r 1G FILE` fail alike: same status, same message.
fn refused_alike(d: &Path, file: &str) -> String {
    let bulk = fvd_img(d, &["prefetch", file]);
    let rate = fvd_img(d, &["prefetch", "-r", "1G", file]);
    assert_eq!(bulk.code, 1, "{bulk:?}");
    assert_eq!(rate.code, bulk.code, "{rate:?}");
    assert_eq!(rate.stderr, bulk.stderr);
    rate.stderr
}

#[test]
fn prefetch_with_a_rate_is_refused_an_open_exactly_as_bulk_prefetch() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    // A base that is a directory.
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "dirbase.fvd", "4M"]);
    fs::create_dir(d.join("dir")).unwrap();
    ok(d, &["update", "dirbase.fvd", "base_img=dir"]);
    assert_contains(
        &refused_alike(d, "dirbase.fvd"),
        "it is a directory, not a regular file",
    );
    // A data file outside the image's directory, and one that is a device.
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "data_file=data.raw",
            "ext.fvd",
            "4M",
        ],
    );
    let outside = scratch();
    let victim = outside.path().join("victim");
    fs::write(&victim, vec![0x5e; M as usize]).unwrap();
    ok(
        d,
        &[
            "update",
            "ext.fvd",
            &format!("data_file={}", victim.display()),
        ],
    );
    let line = refused_alike(d, "ext.fvd");
    assert_contains(&line, "--allow-external-data-file");
    assert!(fs::read(&victim).unwrap() == vec![0x5e; M as usize]);
    ok(d, &["update", "ext.fvd", "data_file=/dev/zero"]);
    assert_contains(
        &refused_alike(d, "ext.fvd"),
        "it is a character device, not a regular file",
    );
    // An image without a base, a FIFO, a missing file.
    create_fvd(d, &["nobase.fvd", "1M"]);
    assert_contains(
        &refused_alike(d, "nobase.fvd"),
        "has no base image to prefetch",
    );
    assert!(Command::new("mkfifo")
        .arg(d.join("pipe"))
        .status()
        .unwrap()
        .success());
    assert_contains(
        &refused_alike(d, "pipe"),
        "not a regular file or block device",
    );
    assert_contains(
        &refused_alike(d, "missing.fvd"),
        "Could not open 'missing.fvd'",
    );
    // An image another process writes.
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "busy.fvd", "4M"]);
    let _writer = holding_write(d, &["io", "-c", "sleep 60000", "busy.fvd"], "busy.fvd");
    assert_contains(
        &refused_alike(d, "busy.fvd"),
        "Is another process using the image [busy.fvd]?",
    );
}

#[test]
fn a_running_prefetch_with_a_rate_holds_its_image_against_a_second_writer() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; (4 * M) as usize]).unwrap();
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=65536",
            "img.fvd",
        ],
    );
    // 4 MiB at 64 KiB/s: a minute, far longer than the test.
    let _prefetch = holding_write(d, &["prefetch", "-q", "-r", "64K", "img.fvd"], "img.fvd");
    let run = fvd_img(d, &["io", "-c", "write 0 512", "img.fvd"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_contains(&run.stderr, "Is another process using the image [img.fvd]?");
    let run = fvd_img(d, &["prefetch", "-r", "1G", "img.fvd"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_contains(&run.stderr, "Is another process using the image [img.fvd]?");
}

#[test]
fn prefetch_with_a_rate_shows_progress_with_p_and_nothing_with_q() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; (2 * M) as usize]).unwrap();
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=65536",
            "p.fvd",
        ],
    );
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=65536",
            "q.fvd",
        ],
    );
    let run = ok(d, &["prefetch", "-p", "-r", "1G", "p.fvd"]);
    assert_contains(&run.stdout, "(100.00/100%)");
    assert_contains(&run.stdout, "Prefetched 2 MiB in ");
    assert_contains(&run.stdout, "the image no longer needs its base.");
    let run = ok(d, &["prefetch", "-q", "-p", "-r", "1G", "q.fvd"]);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "");
    let run = ok(d, &["prefetch", "-r", "1G", "p.fvd"]);
    assert_eq!(run.stdout.trim(), "Image is already fully prefetched.");
}

#[test]
fn prefetch_with_a_rate_whose_copies_cannot_be_written_ends_with_the_os_error() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    ok(
        d,
        &["io", "-f", "raw", "-c", "write -q -P 1 0 1M", "base.raw"],
    );
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "4M"]);
    // Guest data stored at 2^55 bytes into the image file: every copy fails with EFBIG.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(d.join("top.fvd"))
        .unwrap();
    file.write_all_at(&(1u64 << 55).to_le_bytes(), DATA_OFFSET_FIELD)
        .unwrap();
    drop(file);
    let run = fvd_img(d, &["prefetch", "-r", "1G", "top.fvd"]);
    assert_eq!(run.code, 1, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].starts_with("fvd-img: prefetch failed: "),
        "{run:?}"
    );
    assert_contains(lines[0], "kept failing");
    assert_contains(lines[0], "File too large");
}
