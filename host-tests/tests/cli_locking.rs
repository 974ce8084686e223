//! Image locking: `fvd-img` takes the byte-range locks QEMU's file-posix driver takes, so
//! a second writer (another `fvd-img`, `qemu-io`, QEMU) is refused while an image is in
//! use, readers coexist, `-U` reads past writers, and bases and data files are locked
//! too. Each holder is a real process (`fvd-img io -c 'sleep MS'` or `qemu-io -c 'sleep
//! MS'`) started in the background and killed when the test ends.

mod common;

use common::*;
use fvd_host::host::lock::{others_hold, Perms};
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process holding an image open; killed (by its id) when dropped.
struct Holder {
    child: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program ARGS` in `cwd` and waits until some process holds the consistent-read
/// lock (byte 100) of `file`, which every opener takes.
fn hold(program: &str, cwd: &Path, args: &[&str], file: &str) -> Holder {
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (it must be installed): {e}"));
    let mut holder = Holder { child };
    let observer = fs::File::open(cwd.join(file)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if others_hold(&observer)
            .unwrap()
            .perm
            .contains(Perms::CONSISTENT_READ)
        {
            return holder;
        }
        if let Some(status) = holder.child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = holder.child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("{program} {args:?} ended ({status}) before locking {file}: {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "{program} {args:?} never locked {file}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 20 s for `condition`.
fn eventually(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fvd-img io [EXTRA] -c 'sleep 60000' FILE` holding FILE.
///
/// Returns once its open is complete (its first command, a read, has printed), so the
/// header writes of a writable open are behind us when a test takes the file's bytes.
fn fvd_img_holds(cwd: &Path, extra: &[&str], file: &str) -> Holder {
    let mut args = vec!["io"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-c", "read 0 512", "-c", "sleep 60000", file]);
    let mut holder = hold(env!("CARGO_BIN_EXE_fvd-img"), cwd, &args, file);
    let stdout = holder.child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_contains(&line, "read 512/512 bytes at offset 0");
    holder
}

/// `qemu-io [EXTRA] -f raw -c 'sleep 60000' FILE` holding FILE.
fn qemu_io_holds(cwd: &Path, extra: &[&str], file: &str) -> Holder {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["-f", "raw", "-c", "sleep 60000", file]);
    hold("qemu-io", cwd, &args, file)
}

/// Requires a failure whose message is QEMU's lock conflict for `file`.
fn refused_as_in_use(cwd: &Path, args: &[&str], file: &str) -> String {
    let line = fails(cwd, args);
    assert_contains(&line, "lock");
    assert_contains(
        &line,
        &format!("Is another process using the image [{file}]?"),
    );
    line
}

/// The access modes (`O_RDONLY`, `O_RDWR`, ...) of the descriptors process `pid` has
/// open on the file at `path`, from /proc/PID/fdinfo.
fn access_modes(pid: u32, path: &Path) -> Vec<i32> {
    let target = path.canonicalize().unwrap();
    let mut modes = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if fs::read_link(entry.path()).ok().as_deref() != Some(target.as_path()) {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .map(|octal| i32::from_str_radix(octal.trim(), 8).unwrap())
            .unwrap();
        modes.push(flags & libc::O_ACCMODE);
    }
    modes
}

/// Requires the file at `path` to hold exactly `before`.
fn unchanged(path: &Path, before: &[u8]) {
    let now = fs::read(path).unwrap();
    assert!(now == before, "{} changed", path.display());
}

/// An FVD image `name` of 1 MiB whose first 4 KiB hold 0x11.
fn image(dir: &Path, name: &str) {
    create_fvd(dir, &[name, "1M"]);
    ok(dir, &["io", "-c", "write -q -P 0x11 0 4k", name]);
}

#[test]
fn second_writer_is_refused_while_fvd_img_holds_the_image() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    create_fvd(d, &["b.raw.fvd", "1M"]);
    {
        let _writer = fvd_img_holds(d, &[], "a.fvd");
        // (Opening it for writing has marked it dirty: compare from here on.)
        let before = fs::read(d.join("a.fvd")).unwrap();
        let line = refused_as_in_use(d, &["io", "-c", "write -P 0x22 0 4k", "a.fvd"], "a.fvd");
        assert_contains(&line, "Failed to get \"write\" lock");
        // Every other command that would change the image is refused the same way, and
        // so are readers (as qemu-img info is refused while QEMU writes an image).
        for args in [
            &["update", "a.fvd", "copy_on_read=off"][..],
            &["check", "-r", "all", "a.fvd"][..],
            &["io", "-r", "-c", "read 0 4k", "a.fvd"][..],
            &["info", "a.fvd"][..],
            &["check", "a.fvd"][..],
            &["map", "a.fvd"][..],
            &["convert", "-O", "raw", "a.fvd", "copy.raw"][..],
            &["compare", "a.fvd", "b.raw.fvd"][..],
        ] {
            let run = fvd_img(d, args);
            assert_ne!(run.code, 0, "{args:?} succeeded: {run:?}");
            assert_contains(&run.stderr, "Is another process using the image [a.fvd]?");
        }
        unchanged(&d.join("a.fvd"), &before);
        assert!(!d.join("copy.raw").exists());
    }
    // The holder is gone, and so are its locks.
    ok(d, &["io", "-c", "write -q -P 0x22 0 4k", "a.fvd"]);
    ok(d, &["io", "-r", "-c", "read -q -P 0x22 0 4k", "a.fvd"]);
}

#[test]
fn second_writer_is_refused_while_qemu_io_holds_the_image() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    let before = fs::read(d.join("a.fvd")).unwrap();
    let _qemu = qemu_io_holds(d, &[], "a.fvd");
    // qemu-io writes the file as raw data: an FVD writer must not share it.
    let line = refused_as_in_use(d, &["io", "-c", "write -P 0x22 0 4k", "a.fvd"], "a.fvd");
    assert_contains(&line, "Failed to get shared \"write\" lock");
    refused_as_in_use(d, &["check", "-r", "all", "a.fvd"], "a.fvd");
    refused_as_in_use(d, &["update", "a.fvd", "copy_on_read=off"], "a.fvd");
    unchanged(&d.join("a.fvd"), &before);
}

#[test]
fn qemu_io_cannot_write_while_fvd_img_holds_the_image() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    for extra in [&[][..], &["-r"][..]] {
        let _holder = fvd_img_holds(d, extra, "a.fvd");
        let before = fs::read(d.join("a.fvd")).unwrap();
        let run = run_tool("qemu-io", d, &["-f", "raw", "-c", "write 0 512", "a.fvd"]);
        assert_ne!(
            run.code, 0,
            "qemu-io wrote while fvd-img {extra:?} held: {run:?}"
        );
        assert_contains(&run.stderr, "Failed to get \"write\" lock");
        assert_contains(&run.stderr, "Is another process using the image");
        unchanged(&d.join("a.fvd"), &before);
    }
}

#[test]
fn readers_share_an_image() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    create_fvd(d, &["zero.fvd", "1M"]);
    let _fvd_reader = fvd_img_holds(d, &["-r"], "a.fvd");
    let _qemu_reader = qemu_io_holds(d, &["-r"], "a.fvd");
    ok(d, &["io", "-r", "-c", "read -q -P 0x11 0 4k", "a.fvd"]);
    ok(d, &["info", "a.fvd"]);
    ok(d, &["check", "a.fvd"]);
    ok(d, &["map", "a.fvd"]);
    ok(d, &["convert", "-O", "raw", "a.fvd", "copy.raw"]);
    status(d, &["compare", "-q", "a.fvd", "zero.fvd"], 1);
    let run = run_tool(
        "qemu-io",
        d,
        &["-r", "-f", "raw", "-c", "read 0 512", "a.fvd"],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn force_share_reads_an_image_another_process_writes() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    create_fvd(d, &["zero.fvd", "1M"]);
    let _writer = fvd_img_holds(d, &[], "a.fvd");
    ok(
        d,
        &["io", "-U", "-r", "-c", "read -q -P 0x11 0 4k", "a.fvd"],
    );
    ok(d, &["info", "-U", "a.fvd"]);
    ok(d, &["check", "-U", "a.fvd"]);
    ok(d, &["map", "--force-share", "a.fvd"]);
    ok(d, &["convert", "-U", "-O", "raw", "a.fvd", "copy.raw"]);
    status(d, &["compare", "-U", "-q", "a.fvd", "zero.fvd"], 1);
    // Measuring a base for a new overlay shares everything too, as in qemu-img create.
    ok(d, &["create", "-q", "-b", "a.fvd", "-F", "fvd", "over.fvd"]);
    // -U never writes.
    for args in [
        &["io", "-U", "-c", "read 0 4k", "a.fvd"][..],
        &["check", "-U", "-r", "all", "a.fvd"][..],
    ] {
        let line = fails(d, args);
        assert_contains(&line, "can only be used with read-only images");
    }
}

#[test]
fn bases_and_data_files_are_locked_shared_with_their_image() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![0x33u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "1M"]);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "other.fvd", "1M"]);
    create_fvd(d, &["-o", "data_file=split.data", "split.fvd", "1M"]);
    let base_before = fs::read(d.join("base.raw")).unwrap();
    let top = fvd_img_holds(d, &[], "top.fvd");
    let split = fvd_img_holds(d, &[], "split.fvd");
    // The holders lock the image first and the files it names right after: wait for those.
    let held = |name: &str| {
        let file = fs::File::open(d.join(name)).unwrap();
        move || {
            others_hold(&file)
                .unwrap()
                .perm
                .contains(Perms::CONSISTENT_READ)
        }
    };
    eventually(held("base.raw"), "the base locked");
    eventually(held("split.data"), "the data file locked");
    // What the writers opened: the base read-only, the data file read-write.
    let base_modes = access_modes(top.child.id(), &d.join("base.raw"));
    assert!(!base_modes.is_empty());
    assert!(
        base_modes.iter().all(|&m| m == libc::O_RDONLY),
        "{base_modes:?}"
    );
    let data_modes = access_modes(split.child.id(), &d.join("split.data"));
    assert!(data_modes.contains(&libc::O_RDWR), "{data_modes:?}");
    // What they lock: the base shared (read, refusing writers), the data file as the
    // image.
    let observe = |name: &str| others_hold(&fs::File::open(d.join(name)).unwrap()).unwrap();
    let base_locks = observe("base.raw");
    assert_eq!(base_locks.perm, Perms::CONSISTENT_READ);
    assert!(base_locks
        .refused
        .contains(Perms::WRITE.union(Perms::RESIZE)));
    assert!(observe("split.data").perm.contains(Perms::WRITE));
    // Nobody may write a base under a running overlay: neither qemu-io nor fvd-img.
    let run = run_tool(
        "qemu-io",
        d,
        &["-f", "raw", "-c", "write 0 512", "base.raw"],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert_contains(&run.stderr, "Failed to get \"write\" lock");
    refused_as_in_use(
        d,
        &["io", "-f", "raw", "-c", "write 0 512", "base.raw"],
        "base.raw",
    );
    unchanged(&d.join("base.raw"), &base_before);
    // Reading it, or writing another overlay of it, is fine.
    ok(
        d,
        &[
            "io",
            "-f",
            "raw",
            "-r",
            "-c",
            "read -q -P 0x33 0 4k",
            "base.raw",
        ],
    );
    ok(d, &["io", "-c", "write -q -P 0x44 0 4k", "other.fvd"]);
    // The data file of an image in use is as locked as the image.
    let run = run_tool(
        "qemu-io",
        d,
        &["-f", "raw", "-c", "write 0 512", "split.data"],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert_contains(&run.stderr, "Failed to get \"write\" lock");
}

#[test]
fn create_and_convert_do_not_replace_an_image_in_use() {
    let dir = scratch();
    let d = dir.path();
    image(d, "a.fvd");
    create_fvd(d, &["src.fvd", "1M"]);
    let _holder = fvd_img_holds(d, &[], "a.fvd");
    let before = fs::read(d.join("a.fvd")).unwrap();
    refused_as_in_use(d, &["create", "--force", "a.fvd", "2M"], "a.fvd");
    refused_as_in_use(
        d,
        &["convert", "--force", "-O", "fvd", "src.fvd", "a.fvd"],
        "a.fvd",
    );
    unchanged(&d.join("a.fvd"), &before);
    assert_eq!(
        listing(d),
        ["a.fvd", "src.fvd"].map(String::from).into_iter().collect()
    );
}

#[test]
fn qemu_img_is_refused_a_qed_image_fvd_img_writes() {
    let dir = scratch();
    let d = dir.path();
    create(d, &["-f", "qed", "a.qed", "1M"]);
    let _holder = fvd_img_holds(d, &[], "a.qed");
    // QEMU's QED driver takes the same locks as ours: both sides see each other.
    let run = qemu_img(d, &["info", "-f", "qed", "a.qed"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_contains(&run.stderr, "Failed to get shared \"write\" lock");
    let run = qemu_img(d, &["info", "-U", "-f", "qed", "a.qed"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn rebase_u_reads_bases_past_a_writer_but_never_shares_the_image_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    for name in ["old.qed", "new.qed"] {
        assert_eq!(
            qemu_img(d, &["create", "-q", "-f", "qed", name, "1M"]).code,
            0
        );
    }
    let q = qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "old.qed",
            "-F",
            "qed",
            "top.qcow2",
        ],
    );
    assert_eq!(q.code, 0, "{q:?}");
    create(d, &["-f", "qed", "-b", "old.qed", "-F", "qed", "top.qed"]);
    create(d, &["-f", "fvd", "-b", "old.qed", "-F", "qed", "top.fvd"]);
    let writer = hold(
        "qemu-io",
        d,
        &["-f", "qed", "-c", "sleep 60000", "new.qed"],
        "new.qed",
    );
    let rebase = |u: bool, top: &str| {
        let mut args = vec!["rebase"];
        if u {
            args.push("-U");
        }
        args.extend(["-b", "new.qed", "-F", "qed", top]);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // Without -U both refuse a base another process writes; with -U both read it.
    let q = qemu_img(d, &as_strs(&rebase(false, "top.qcow2")));
    assert_eq!(q.code, 1, "{q:?}");
    assert_contains(&q.stderr, "lock");
    for top in ["top.qed", "top.fvd"] {
        refused_as_in_use(d, &as_strs(&rebase(false, top)), "new.qed");
    }
    let q = qemu_img(d, &as_strs(&rebase(true, "top.qcow2")));
    assert_eq!(q.code, 0, "{q:?}");
    for top in ["top.qed", "top.fvd"] {
        ok(d, &as_strs(&rebase(true, top)));
        assert_eq!(info_json(d, top)["backing-filename"], "new.qed");
    }
    drop(writer);

    // -U never shares the image being rebased: a writer of it still refuses the rebase.
    let _writer = fvd_img_holds(d, &[], "top.qed");
    refused_as_in_use(
        d,
        &[
            "rebase", "-U", "-u", "-b", "old.qed", "-F", "qed", "top.qed",
        ],
        "top.qed",
    );
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
