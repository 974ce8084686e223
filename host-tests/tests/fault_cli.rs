//! `fvd-img` under real storage faults: `commit` into a raw base that runs out of room
//! part-way, `convert` whose destination runs out of room, `prefetch` over a base that is
//! truncated while it runs. The faults come from the kernel: a file size limit
//! (RLIMIT_FSIZE, so writes past it fail with EFBIG) everywhere, and a full tmpfs (ENOSPC)
//! where the machine lets a test mount one in its own user and mount namespace. Every
//! failure must be one clear line and exit status 1, with no hang, nothing left behind
//! that the user did not ask for, and the image still checking clean.

mod common;

use common::{create, fvd_img, listing, ok, scratch};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Random-looking bytes (so that nothing is skipped as zeros).
fn noise(len: u64, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Runs `fvd-img ARGS` in `dir` with files limited to `limit` bytes: a write past it
/// fails with EFBIG (the signal the kernel would also send is ignored, as it is by most
/// programs run under a limit).
fn fvd_img_limited(dir: &Path, limit: u64, args: &[&str]) -> common::Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fvd-img"));
    command.args(args).current_dir(dir);
    // SAFETY: between fork and exec the closure only calls setrlimit(2) and signal(2),
    // both async-signal-safe, on values it owns.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let output = command.output().unwrap();
    common::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The single `fvd-img: ...` line of a run that must fail with status 1.
fn one_failure_line(run: &common::Run, what: &str) -> String {
    assert_eq!(run.code, 1, "{what}: {run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: want one stderr line: {run:?}");
    assert!(lines[0].starts_with("fvd-img: "), "{what}: {run:?}");
    lines[0].to_string()
}

/// `check` exits 0 (or 3: leaks only).
fn checks_clean(dir: &Path, image: &str) {
    let run = fvd_img(dir, &["check", image]);
    assert!(run.code == 0 || run.code == 3, "check {image}: {run:?}");
}

/// An image `top.fvd` over a sparse raw `base.raw` of `size` bytes holding data in its
/// first MiB, with `top.fvd` holding its own data in MiB 1 and 3 (where the base has
/// holes). Returns the guest view of `top.fvd`.
fn commit_setup(dir: &Path, size: u64) -> Vec<u8> {
    let base = dir.join("base.raw");
    let mut view = vec![0u8; size as usize];
    view[..MIB as usize].copy_from_slice(&noise(MIB, 1));
    {
        let file = std::fs::File::create(&base).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &view[..MIB as usize], 0).unwrap();
        file.set_len(size).unwrap();
    }
    let size_arg = size.to_string();
    create(
        dir,
        &[
            "-f", "fvd", "-b", "base.raw", "-F", "raw", "top.fvd", &size_arg,
        ],
    );
    // Data no pattern of `io` could make, written through the library.
    let options = fvd_host::host::driver::DriverOptions::default();
    let mut driver = fvd_host::host::files::open_image(&dir.join("top.fvd"), options).unwrap();
    for at in [MIB, 3 * MIB] {
        let data = noise(MIB, at as u32);
        driver.write(at, &data).unwrap();
        view[at as usize..][..MIB as usize].copy_from_slice(&data);
    }
    driver.flush().unwrap();
    assert!(driver.close().unwrap().1, "the image closed clean");
    view
}

#[test]
fn commit_into_a_raw_base_that_cannot_grow_past_a_size_limit_fails_cleanly_and_can_be_rerun() {
    let dir = scratch();
    let view = commit_setup(dir.path(), 4 * MIB);
    let before = listing(dir.path());
    let top_before = std::fs::read(dir.path().join("top.fvd")).unwrap();
    // Writes past 2 MiB fail: the commit writes MiB 1, then fails on MiB 3.
    let run = fvd_img_limited(dir.path(), 2 * MIB, &["commit", "-q", "top.fvd"]);
    let line = one_failure_line(&run, "commit under a size limit");
    assert!(line.contains("File too large"), "{line}");
    assert!(line.contains("base.raw"), "{line}");
    // FILE is untouched and checks clean; nothing new in the directory.
    assert_eq!(
        std::fs::read(dir.path().join("top.fvd")).unwrap(),
        top_before
    );
    checks_clean(dir.path(), "top.fvd");
    assert_eq!(listing(dir.path()), before);
    // With room again the commit completes: the base reads as the image did.
    ok(dir.path(), &["commit", "-q", "top.fvd"]);
    assert_eq!(std::fs::read(dir.path().join("base.raw")).unwrap(), view);
}

#[test]
fn convert_whose_destination_hits_a_size_limit_fails_and_leaves_nothing_behind() {
    let dir = scratch();
    std::fs::write(dir.path().join("src.raw"), noise(4 * MIB, 9)).unwrap();
    let before = listing(dir.path());
    for format in ["raw", "fvd", "qed"] {
        let target = format!("dst.{format}");
        let run = fvd_img_limited(
            dir.path(),
            2 * MIB,
            &["convert", "-f", "raw", "-O", format, "src.raw", &target],
        );
        let line = one_failure_line(&run, &format!("convert -O {format}"));
        assert!(line.contains("File too large"), "{format}: {line}");
        assert_eq!(
            listing(dir.path()),
            before,
            "{format}: files were left behind"
        );
    }
}

#[test]
fn prefetch_over_a_base_truncated_while_it_runs_ends_with_an_error_not_zeros() {
    let dir = scratch();
    let base = noise(4 * MIB, 3);
    std::fs::write(dir.path().join("base.raw"), &base).unwrap();
    create(
        dir.path(),
        &[
            "-f",
            "fvd",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=65536",
            "img.fvd",
        ],
    );
    // 4 MiB at 4 MiB/s: the base is cut to 1 MiB well before prefetch can finish.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fvd-img"))
        .args(["prefetch", "-q", "-r", "4M", "img.fvd"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("base.raw"))
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("prefetch over a truncated base did not end within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let run = common::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let line = one_failure_line(&run, "prefetch over a truncated base");
    assert!(line.contains("prefetch failed"), "{line}");
    assert!(line.contains("truncated or replaced"), "{line}");
    checks_clean(dir.path(), "img.fvd");
    // The base comes back: the image reads exactly as before (nothing was copied as zeros).
    std::fs::write(dir.path().join("base.raw"), &base).unwrap();
    ok(dir.path(), &["compare", "-F", "raw", "img.fvd", "base.raw"]);
    let info = ok(dir.path(), &["info", "img.fvd"]).stdout;
    assert!(info.contains("base_img_fully_prefetched: false"), "{info}");
}

/// Runs `script` (sh) as root of a new user and mount namespace with a tmpfs of
/// `size_kib` KiB mounted at `dir`, `FVD_IMG` naming the tool; `None` when this machine
/// does not allow such namespaces.
fn in_small_tmpfs(dir: &Path, size_kib: u64, script: &str) -> Option<common::Run> {
    let probe = Command::new("unshare")
        .args(["-rm", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: this machine does not allow a user and mount namespace for a tmpfs");
        return None;
    }
    let full = format!(
        "set -u\nmount -t tmpfs -o size={size_kib}k fvd-test \"$FAULT_DIR\" || exit 99\ncd \"$FAULT_DIR\"\n{script}"
    );
    let output = Command::new("unshare")
        .args(["-rm", "sh", "-c", &full])
        .env("FAULT_DIR", dir)
        .env("FVD_IMG", env!("CARGO_BIN_EXE_fvd-img"))
        .output()
        .unwrap();
    let run = common::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_ne!(run.code, 99, "mounting the tmpfs failed: {run:?}");
    Some(run)
}

/// The value printed as `name=value` by a script.
fn reported(run: &common::Run, name: &str) -> String {
    let prefix = format!("{name}=");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {run:?}"))
        .to_string()
}

#[test]
fn commit_and_convert_on_a_full_file_system_fail_cleanly() {
    let dir = scratch();
    let files = scratch();
    let view = commit_setup(files.path(), 4 * MIB);
    let src = files.path().display().to_string();
    // 6 MiB of tmpfs: the sparse base (1 MiB used) and the image (2 MiB of data) fit;
    // a filler leaves about 1.5 MiB, less than the 2 MiB the commit writes. (Messages are
    // captured through pipes: a file for them would not fit either.)
    let script = format!(
        "cp --sparse=always '{src}/base.raw' '{src}/top.fvd' . || exit 98\n\
         head -c 1572864 /dev/zero > filler\n\
         err=$(\"$FVD_IMG\" commit -q top.fvd 2>&1 >/dev/null); echo commit=$?\n\
         echo commit_err=$err\n\
         \"$FVD_IMG\" check top.fvd > /dev/null; echo check=$?\n\
         err=$(\"$FVD_IMG\" convert -O fvd top.fvd copy.fvd 2>&1 >/dev/null); echo convert=$?\n\
         echo convert_err=$err\n\
         echo left=$(ls -A | tr '\\n' ' ')\n\
         rm filler\n\
         \"$FVD_IMG\" commit -q top.fvd; echo rerun=$?\n\
         cmp base.raw '{src}/view.raw'; echo same=$?\n"
    );
    std::fs::write(files.path().join("view.raw"), &view).unwrap();
    let Some(run) = in_small_tmpfs(dir.path(), 6 * 1024, &script) else {
        return;
    };
    assert_eq!(reported(&run, "commit"), "1", "{run:?}");
    let err = reported(&run, "commit_err");
    assert!(
        err.starts_with("fvd-img: ") && err.contains("No space left on device"),
        "{err}: {run:?}"
    );
    assert_eq!(reported(&run, "check"), "0", "{run:?}");
    assert_eq!(reported(&run, "convert"), "1", "{run:?}");
    let err = reported(&run, "convert_err");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(reported(&run, "left"), "base.raw filler top.fvd", "{run:?}");
    assert_eq!(reported(&run, "rerun"), "0", "{run:?}");
    assert_eq!(reported(&run, "same"), "0", "{run:?}");
}
