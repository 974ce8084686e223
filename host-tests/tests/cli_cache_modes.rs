//! `io -t` cache modes as qemu-io has them: `none` and `directsync` (and `-n`) open the
//! image with `O_DIRECT`, the others through the page cache; any alignment still works
//! (unaligned pieces take the ordinary descriptor) and what was written reads back the same
//! through qemu-io.

mod common;

use common::{create, fvd_img, ok, qemu_img, scratch};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `O_DIRECT` on x86-64 and aarch64 Linux differ; libc knows.
const O_DIRECT: u32 = libc::O_DIRECT as u32;

/// The open flags of every descriptor `pid` has on `file` (from /proc/PID/fdinfo).
fn flags_on(pid: u32, file: &Path) -> Vec<u32> {
    let want = file.canonicalize().unwrap();
    let mut flags = Vec::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return flags;
    };
    for entry in entries.flatten() {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(want.as_path()) {
            continue;
        }
        let fd = entry.file_name();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            .unwrap_or_default();
        if let Some(line) = info.lines().find(|l| l.starts_with("flags:")) {
            flags.push(u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap());
        }
    }
    flags
}

/// Starts `program ARGS` (whose commands read 512 bytes, then sleep with the image open)
/// and returns the flags of its descriptors on `file` once its open is complete (for
/// fvd-img: once the read has printed).
fn open_flags_while_running(program: &str, dir: &Path, args: &[&str], file: &Path) -> Vec<u32> {
    let mut child: Child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let flags = if program == "qemu-io" {
        // qemu-io buffers a pipe until it exits: wait for its one descriptor instead
        // (QEMU opens the image once, with O_DIRECT from the start for cache=none).
        let start = Instant::now();
        loop {
            let flags = flags_on(child.id(), file);
            if !flags.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break flags;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("read 512/512"),
            "{program} {args:?}: {line:?}"
        );
        flags_on(child.id(), file)
    };
    let _ = child.kill();
    let _ = child.wait();
    flags
}

fn has_direct(flags: &[u32]) -> bool {
    flags.iter().any(|f| f & O_DIRECT != 0)
}

#[test]
fn cache_none_and_directsync_open_the_image_with_o_direct_as_qemu_io_does() {
    let dir = scratch();
    let d = dir.path();
    qemu_img(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"]);
    create(d, &["-f", "fvd", "a.fvd", "4M"]);
    create(d, &["-f", "qed", "a.qed", "4M"]);
    std::fs::write(d.join("a.raw"), vec![0u8; 1 << 20]).unwrap();
    for (mode, direct) in [
        ("none", true),
        ("directsync", true),
        ("writeback", false),
        ("writethrough", false),
    ] {
        let qemu = open_flags_while_running(
            "qemu-io",
            d,
            &[
                "-t",
                mode,
                "-c",
                "read 0 512",
                "-c",
                "sleep 3000",
                "q.qcow2",
            ],
            &d.join("q.qcow2"),
        );
        assert!(!qemu.is_empty(), "qemu-io -t {mode} did not open the image");
        assert_eq!(has_direct(&qemu), direct, "qemu-io -t {mode}: {qemu:?}");
        for (file, format) in [("a.fvd", "fvd"), ("a.qed", "qed"), ("a.raw", "raw")] {
            let ours = open_flags_while_running(
                env!("CARGO_BIN_EXE_fvd-img"),
                d,
                &[
                    "io",
                    "-f",
                    format,
                    "-t",
                    mode,
                    "-c",
                    "read 0 512",
                    "-c",
                    "sleep 3000",
                    file,
                ],
                &d.join(file),
            );
            assert!(!ours.is_empty(), "fvd-img io -t {mode} {file}: not opened");
            assert_eq!(
                has_direct(&ours),
                direct,
                "fvd-img io -t {mode} {file}: {ours:?}"
            );
        }
    }
    // -n is qemu-io's --nocache: the same as -t none.
    let ours = open_flags_while_running(
        env!("CARGO_BIN_EXE_fvd-img"),
        d,
        &["io", "-n", "-c", "read 0 512", "-c", "sleep 3000", "a.fvd"],
        &d.join("a.fvd"),
    );
    assert!(has_direct(&ours), "fvd-img io -n: {ours:?}");
}

#[test]
fn cache_none_reads_and_writes_any_alignment_and_qemu_io_reads_the_same_bytes() {
    let dir = scratch();
    let d = dir.path();
    create(d, &["-f", "qed", "a.qed", "4M"]);
    create(d, &["-f", "fvd", "a.fvd", "4M"]);
    std::fs::write(d.join("a.raw"), vec![0u8; 4 << 20]).unwrap();
    let writes = [
        "write -P 0x11 0 64k",
        "write -P 0x22 1000 5000",
        "write -P 0x33 1M 128k",
        "write -P 0x44 70001 3",
        "write -z 2M 4096",
    ];
    let reads = [
        "read -P 0x11 0 1000",
        "read -P 0x22 1000 5000",
        "read -P 0x11 6000 59536",
        "read -P 0 65536 4465",
        "read -P 0x44 70001 3",
        "read -P 0x33 1M 128k",
        "read -P 0 2M 4096",
    ];
    for (file, format) in [("a.qed", "qed"), ("a.fvd", "fvd"), ("a.raw", "raw")] {
        for mode in ["none", "directsync"] {
            let mut args = vec!["io", "-f", format, "-t", mode];
            for c in writes.iter().chain(reads.iter()) {
                args.extend(["-c", c]);
            }
            args.push(file);
            let run = ok(d, &args);
            assert!(!run.stdout.contains("failed"), "{file} -t {mode}: {run:#?}");
        }
        // Read back through the page cache, by us and (for QED and raw) by qemu-io.
        let mut args = vec!["io", "-f", format, "-r"];
        for c in &reads {
            args.extend(["-c", c]);
        }
        args.push(file);
        let run = fvd_img(d, &args);
        assert_eq!(run.code, 0, "{run:#?}");
        assert!(!run.stdout.contains("failed"), "{file}: {run:#?}");
        if format != "fvd" {
            let mut args = vec!["-f", format, "-r"];
            for c in &reads {
                args.extend(["-c", c]);
            }
            args.push(file);
            let run = common::run_tool("qemu-io", d, &args);
            assert_eq!(run.code, 0, "{run:#?}");
            assert!(!run.stdout.contains("failed"), "qemu-io {file}: {run:#?}");
        }
    }
    ok(d, &["check", "a.qed"]);
    ok(d, &["check", "a.fvd"]);
    assert_eq!(qemu_img(d, &["check", "-q", "a.qed"]).code, 0);
}
