//! The concurrent executor under storage faults, on real files with many requests in
//! flight: faults are injected on the worker threads around each file operation (EIO,
//! ENOSPC from a file that cannot grow, short reads, a base whose reads fail) and, for a
//! base that shrinks, by truncating the real file. Every test runs under a watchdog (a
//! hang fails it) and ends with a clean close, `fvd-img check` (nothing or only leaks)
//! and every acknowledged write read back; the base and the directory are never changed
//! beyond the image's own files.

use fvd_core::engine::{FileId, IoError, MapRun, Mapping, Reply, Request, RequestError};
use fvd_core::fvd::create::{BaseSpec, CreateOptions};
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::executor::{Completion, Executor, ExecutorError, ExecutorOptions};
use fvd_host::host::faults::{AfterShort, Errno, Fault, FaultPlan, Kinds, Rule, SharedPlan};
use fvd_host::host::files::open_image;
use fvd_host::testing::workload::{create_image, create_qed, create_raw, pattern_byte};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const SIZE: u64 = 8 << 20;
const K: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Compact,
    Cow,
    Qed,
}

/// Runs `body` on its own thread; a body still running after a minute is a hang.
fn watchdog(name: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => worker.join().unwrap(),
        // The body panicked: show its message.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: hung for a minute"),
    }
}

/// An image of `kind` in `dir`; returns its path and guest content.
fn make(dir: &Path, kind: Kind) -> (PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let mut content = vec![0u8; SIZE as usize];
    let mut options = CreateOptions {
        virtual_size: SIZE,
        ..Default::default()
    };
    match kind {
        Kind::Plain => {}
        Kind::Compact => {
            options.compact_image = true;
            options.chunk_size = Some(256 << 10);
            options.storage_grow_unit = Some(1 << 20);
        }
        Kind::Cow => {
            let base_len = SIZE / 2;
            create_raw(&dir.join("base.raw"), base_len, 7).unwrap();
            for (i, byte) in content[..base_len as usize].iter_mut().enumerate() {
                *byte = pattern_byte(i as u64, 7);
            }
            options.compact_image = true;
            options.chunk_size = Some(256 << 10);
            options.block_size = Some(4096);
            options.base = Some(BaseSpec {
                name: b"base.raw",
                format: b"raw",
                size: base_len,
            });
        }
        Kind::Qed => {
            create_qed(&path, SIZE).unwrap();
            return (path, content);
        }
    }
    create_image(&path, &options).unwrap();
    (path, content)
}

fn open(path: &Path, plan: &SharedPlan) -> Executor {
    let options = ExecutorOptions {
        workers: 4,
        ..ExecutorOptions::default()
    };
    Executor::open_with_faults(path, options, Some(plan.clone())).unwrap()
}

fn plan() -> SharedPlan {
    Arc::new(Mutex::new(FaultPlan::new()))
}

/// Adds `rule` for the file operations from now on.
fn inject(plan: &SharedPlan, rule: Rule) {
    let mut plan = plan.lock().unwrap();
    let now = plan.commands();
    plan.push(Rule {
        from: now + rule.from,
        ..rule
    });
}

fn data(offset: u64, len: u64, seed: u8) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(offset + i, seed)).collect()
}

/// Writes `writes` (offset, length, seed) all at once; returns the completions in order.
fn write_all(e: &mut Executor, writes: &[(u64, u64, u8)]) -> Vec<Completion> {
    let tickets: Vec<_> = writes
        .iter()
        .map(|&(o, n, seed)| e.submit_write(o, data(o, n, seed)).unwrap())
        .collect();
    let mut done = e.wait_all().unwrap();
    done.sort_by_key(|c| tickets.iter().position(|t| *t == c.ticket));
    done
}

/// Closes `e` (clean), checks the image with `fvd-img check` (nothing or leaks), reads it
/// back through the synchronous driver and compares with `content`; the directory holds
/// the files it held before and the base is unchanged.
fn finish(
    e: Executor,
    path: &Path,
    content: &[u8],
    files_before: &BTreeSet<String>,
    base: Option<&[u8]>,
) {
    assert!(e.close().unwrap(), "close was not clean");
    reopen_and_check(path, content, files_before, base);
}

/// The checks of [`finish`] on a closed image.
fn reopen_and_check(
    path: &Path,
    content: &[u8],
    files_before: &BTreeSet<String>,
    base: Option<&[u8]>,
) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = fvd_host::cli::run_with(
        ["fvd-img".as_ref(), "check".as_ref(), path.as_os_str()],
        &mut out,
        &mut err,
    );
    assert!(
        status == 0 || status == 3,
        "check exits {status}: {}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let mut driver = open_image(path, options).unwrap();
    let read = driver.read(0, content.len()).unwrap();
    for (i, (got, want)) in read.chunks(512).zip(content.chunks(512)).enumerate() {
        assert_eq!(got, want, "sector {i} after reopen");
    }
    assert_eq!(
        &listing(path.parent().unwrap()),
        files_before,
        "files appeared or vanished"
    );
    if let Some(base) = base {
        assert_eq!(
            std::fs::read(path.with_file_name("base.raw")).unwrap(),
            base,
            "the base changed"
        );
    }
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Where guest byte `offset` is stored in the image file.
fn stored_at(e: &mut Executor, offset: u64) -> u64 {
    let ticket = e
        .submit(Request::Map { offset, len: 4096 }, Vec::new())
        .unwrap();
    match e.wait(ticket).unwrap().result.unwrap() {
        Reply::Mapping(MapRun {
            mapping: Mapping::Data { offset, .. },
            ..
        }) => offset,
        other => panic!("guest offset {offset} is not stored in the image: {other:?}"),
    }
}

fn apply(content: &mut [u8], offset: u64, len: u64, seed: u8) {
    content[offset as usize..][..len as usize].copy_from_slice(&data(offset, len, seed));
}

#[test]
fn an_eio_on_one_write_fails_that_request_only_with_32_in_flight() {
    watchdog("eio", || {
        for kind in [Kind::Plain, Kind::Compact, Kind::Qed] {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut content) = make(dir.path(), kind);
            let before = listing(dir.path());
            let plan = plan();
            let mut e = open(&path, &plan);
            // Prefill so every write below lands in place (known file offsets for plain).
            let writes: Vec<_> = (0..32).map(|i| (i * 256 * K, 16 * K, i as u8)).collect();
            for c in write_all(&mut e, &writes) {
                c.result.unwrap();
            }
            for &(o, n, seed) in &writes {
                apply(&mut content, o, n, seed);
            }
            e.flush().unwrap();
            // Now the data write of the sixth request fails (found by where it lands).
            let target = 5 * 256 * K;
            let at = stored_at(&mut e, target);
            inject(
                &plan,
                Rule::from(0, Fault::Fail(Errno::Eio))
                    .on(FileId::Image)
                    .kinds(Kinds::WRITES)
                    .within(at..at + 16 * K)
                    .times(1),
            );
            let rewrites: Vec<_> = (0..32)
                .map(|i| (i * 256 * K, 16 * K, 100 + i as u8))
                .collect();
            let done = write_all(&mut e, &rewrites);
            for (i, c) in done.iter().enumerate() {
                if i == 5 {
                    assert_eq!(c.result, Err(RequestError::Io(IoError::Failed)), "{kind:?}");
                } else {
                    assert!(
                        c.result.is_ok(),
                        "{kind:?}: request {i} failed: {:?}",
                        c.result
                    );
                    let (o, n, seed) = rewrites[i];
                    apply(&mut content, o, n, seed);
                }
            }
            e.flush().unwrap();
            finish(e, &path, &content, &before, None);
        }
    });
}

#[test]
fn a_failed_flush_is_reported_to_the_flusher_and_every_later_flush_fails_until_reopen() {
    watchdog("flush", || {
        for kind in [Kind::Compact, Kind::Qed] {
            let dir = tempfile::tempdir().unwrap();
            let (path, initial) = make(dir.path(), kind);
            let plan = plan();
            let mut e = open(&path, &plan);
            // A is flushed; B and C are written around a flush that fails.
            let (a, b, c) = ((0, 64 * K, 1), (K * K, 64 * K, 2), (0, 4 * K, 3));
            for done in write_all(&mut e, &[a]) {
                done.result.unwrap();
            }
            e.flush().unwrap();
            for done in write_all(&mut e, &[b]) {
                done.result.unwrap();
            }
            inject(
                &plan,
                Rule::from(0, Fault::Fail(Errno::Eio))
                    .kinds(Kinds::FLUSHES)
                    .times(1),
            );
            match e.flush() {
                Err(ExecutorError::Request(RequestError::Io(IoError::Failed))) => {}
                other => panic!("{kind:?}: a failed flush reported {other:?}"),
            }
            // The page cache may have dropped what it could not write: a later flush that
            // succeeded would claim those writes durable. None does until a reopen.
            for done in write_all(&mut e, &[c]) {
                done.result.unwrap();
            }
            assert!(
                e.flush().is_err(),
                "{kind:?}: a flush after a failed one succeeded"
            );
            assert_eq!(plan.lock().unwrap().hits(), 1, "{kind:?}");
            assert!(
                !e.close().unwrap(),
                "{kind:?}: marked clean after failed flushes"
            );
            // Reopened: A is there (C over it or not), B or what was there before.
            let status = fvd_host::cli::run_with(
                ["fvd-img".as_ref(), "check".as_ref(), path.as_os_str()],
                &mut Vec::new(),
                &mut Vec::new(),
            );
            assert!(status == 0 || status == 3, "{kind:?}: check exits {status}");
            let options = DriverOptions {
                writable: false,
                ..DriverOptions::default()
            };
            let mut driver = open_image(&path, options).unwrap();
            let got = driver.read(0, 2 * (K * K) as usize).unwrap();
            for (i, sector) in got.chunks(512).enumerate() {
                let at = i as u64 * 512;
                let old = initial[at as usize..][..512].to_vec();
                // A was flushed: it (or C, written over it later) must be there; B may be.
                let mut allowed = Vec::new();
                for (o, n, seed) in [a, b, c] {
                    if (o..o + n).contains(&at) {
                        allowed.push(data(at, 512, seed));
                    }
                }
                if at >= a.1 {
                    allowed.push(old);
                }
                assert!(
                    allowed.iter().any(|v| v[..] == *sector),
                    "{kind:?}: sector {i} after reopen lost a flushed write or holds data never written"
                );
            }
        }
    });
}

#[test]
fn a_full_disk_fails_only_the_writes_that_need_new_space() {
    watchdog("full", || {
        for kind in [Kind::Compact, Kind::Qed] {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut content) = make(dir.path(), kind);
            let before = listing(dir.path());
            let plan = plan();
            let mut e = open(&path, &plan);
            for c in write_all(&mut e, &[(0, 64 * K, 1)]) {
                c.result.unwrap();
            }
            apply(&mut content, 0, 64 * K, 1);
            inject(&plan, Rule::from(0, Fault::NoGrowth(Errno::NoSpace)));
            // 32 writes into new chunks at once: those that fit in the space the file
            // already has succeed, the others fail with "no space".
            let writes: Vec<_> = (1..32).map(|i| (i * 256 * K, 16 * K, i as u8)).collect();
            let done = write_all(&mut e, &writes);
            let mut failed = Vec::new();
            for (c, &(o, n, seed)) in done.iter().zip(&writes) {
                match c.result {
                    Ok(_) => apply(&mut content, o, n, seed),
                    Err(RequestError::Io(IoError::NoSpace)) => failed.push((o, n, seed)),
                    Err(other) => panic!("{kind:?}: {other:?}"),
                }
            }
            assert!(!failed.is_empty(), "{kind:?}: nothing needed space");
            // Allocated space still takes writes; the image still flushes.
            for c in write_all(&mut e, &[(0, 64 * K, 9)]) {
                c.result.unwrap();
            }
            apply(&mut content, 0, 64 * K, 9);
            e.flush().unwrap();
            plan.lock().unwrap().clear();
            for c in write_all(&mut e, &failed) {
                c.result.unwrap();
            }
            for &(o, n, seed) in &failed {
                apply(&mut content, o, n, seed);
            }
            e.flush().unwrap();
            finish(e, &path, &content, &before, None);
        }
    });
}

#[test]
fn a_vanished_base_fails_base_reads_and_copies_only() {
    watchdog("vanished", || {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut content) = make(dir.path(), Kind::Cow);
        let base = std::fs::read(dir.path().join("base.raw")).unwrap();
        let before = listing(dir.path());
        let plan = plan();
        let mut e = open(&path, &plan);
        for c in write_all(&mut e, &[(0, 64 * K, 1)]) {
            c.result.unwrap();
        }
        apply(&mut content, 0, 64 * K, 1);
        inject(
            &plan,
            Rule::from(0, Fault::Fail(Errno::Eio)).on(FileId::Base),
        );
        let local = e.submit_read(0, 64 * K as usize).unwrap();
        let based = e.submit_read(K * K, 64 * K as usize).unwrap();
        let cow = e
            .submit_write(2 * K * K + 512, data(2 * K * K + 512, 512, 3))
            .unwrap();
        let whole = e
            .submit_write(3 * K * K, data(3 * K * K, 64 * K, 4))
            .unwrap();
        let done = e.wait_all().unwrap();
        let result = |t| done.iter().find(|c| c.ticket == t).unwrap();
        assert_eq!(result(local).data, content[..64 * K as usize]);
        assert!(result(local).result.is_ok());
        assert_eq!(result(based).result, Err(RequestError::Io(IoError::Failed)));
        assert_eq!(result(cow).result, Err(RequestError::Io(IoError::Failed)));
        assert!(result(whole).result.is_ok());
        apply(&mut content, 3 * K * K, 64 * K, 4);
        e.flush().unwrap();
        plan.lock().unwrap().clear();
        assert_eq!(
            e.read(K * K, 4096).unwrap(),
            content[K as usize * K as usize..][..4096]
        );
        finish(e, &path, &content, &before, Some(&base));
    });
}

#[test]
fn a_raw_base_that_shrinks_under_the_executor_fails_reads_instead_of_reading_zeros() {
    watchdog("shrinks", || {
        let dir = tempfile::tempdir().unwrap();
        let (path, content) = make(dir.path(), Kind::Cow);
        let base_path = dir.path().join("base.raw");
        let base = std::fs::read(&base_path).unwrap();
        let plan = plan();
        let mut e = open(&path, &plan);
        assert_eq!(
            e.read(2 * K * K, 4096).unwrap(),
            content[2 * K as usize * K as usize..][..4096]
        );
        // Someone truncates the base the image still reads from.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&base_path)
            .unwrap()
            .set_len(K * K)
            .unwrap();
        assert_eq!(
            e.read(512 * K, 4096).unwrap(),
            content[512 * K as usize..][..4096]
        );
        match e.read(3 * K * K, 4096) {
            Err(ExecutorError::Request(RequestError::Io(IoError::Failed))) => {}
            other => panic!(
                "a read past the shrunk base's end gave {:?}",
                other.map(|bytes| format!("{} bytes", bytes.len()))
            ),
        }
        // The base is put back: reads work again, nothing wrong was copied in.
        std::fs::write(&base_path, &base).unwrap();
        assert_eq!(
            e.read(3 * K * K, 4096).unwrap(),
            content[3 * K as usize * K as usize..][..4096]
        );
        let before = listing(dir.path());
        finish(e, &path, &content, &before, Some(&base));
    });
}

#[test]
fn reads_that_come_back_short_are_completed_never_padded() {
    watchdog("short", || {
        for kind in [Kind::Plain, Kind::Cow, Kind::Qed] {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut content) = make(dir.path(), kind);
            let before = listing(dir.path());
            let plan = plan();
            let mut e = open(&path, &plan);
            for c in write_all(&mut e, &[(64 * K, 128 * K, 5)]) {
                c.result.unwrap();
            }
            apply(&mut content, 64 * K, 128 * K, 5);
            let short = Fault::ShortRead {
                bytes: 512,
                then: AfterShort::Continue,
            };
            inject(&plan, Rule::from(0, short).kinds(Kinds::READS));
            let tickets: Vec<_> = (0..16)
                .map(|i| e.submit_read(i * 256 * K, 256 * K as usize).unwrap())
                .collect();
            for c in e.wait_all().unwrap() {
                let i = tickets.iter().position(|t| *t == c.ticket).unwrap();
                assert!(c.result.is_ok(), "{kind:?}");
                assert_eq!(
                    c.data,
                    content[i * 256 * K as usize..][..256 * K as usize],
                    "{kind:?}"
                );
            }
            assert!(plan.lock().unwrap().hits() > 0);
            finish(e, &path, &content, &before, None);
        }
    });
}

#[test]
fn the_executor_keeps_its_promises_with_a_fault_at_every_command() {
    watchdog("sweep", || {
        let mut points = 0;
        for kind in [Kind::Compact, Kind::Cow, Kind::Qed] {
            // The first run has no fault: it counts the file operations of the workload.
            let mut total = 0;
            let mut n = None;
            loop {
                let dir = tempfile::tempdir().unwrap();
                let (path, initial) = make(dir.path(), kind);
                let before = listing(dir.path());
                let mut plan = FaultPlan::new();
                if let Some(n) = n {
                    plan.push(Rule::at(n, Fault::Fail(Errno::Eio)));
                }
                let faults = Arc::new(Mutex::new(plan));
                let options = ExecutorOptions {
                    workers: 1,
                    ..ExecutorOptions::default()
                };
                let mut e = match Executor::open_with_faults(&path, options, Some(faults.clone())) {
                    Ok(e) => e,
                    Err(ExecutorError::Engine { .. }) => {
                        // The open failed on the fault: the image still opens and checks.
                        let e = Executor::open(&path, options).unwrap();
                        finish(e, &path, &initial, &before, None);
                        n = n.map(|n| n + 1);
                        points += 1;
                        continue;
                    }
                    Err(other) => panic!("{kind:?} at {n:?}: open failed with {other}"),
                };
                let mut content = initial.clone();
                let writes: Vec<_> = (0..12)
                    .map(|i| ((i * 677 % 31) * 256 * K + 3584, 20 * K, i as u8 + 1))
                    .collect();
                let done = write_all(&mut e, &writes);
                // Whatever the fault hit, requests fail only with I/O errors.
                for c in &done {
                    if let Err(error) = c.result {
                        assert!(
                            matches!(error, RequestError::Io(_)),
                            "{kind:?} at {n:?}: {error:?}"
                        );
                    }
                }
                let flushed = e.flush();
                faults.lock().unwrap().clear();
                if flushed.is_err() || e.flush().is_err() {
                    // A failed flush fails every later one until the image is reopened.
                    e.close().unwrap();
                    e = Executor::open(&path, options).unwrap();
                }
                // Failed writes leave old or new data: write them again, then all is known.
                for c in write_all(&mut e, &writes) {
                    c.result.unwrap();
                }
                for &(o, len, seed) in &writes {
                    apply(&mut content, o, len, seed);
                }
                e.flush().unwrap();
                let used = faults.lock().unwrap().commands();
                finish(e, &path, &content, &before, None);
                let next = match n {
                    None => {
                        total = used;
                        0
                    }
                    Some(n) => {
                        points += 1;
                        n + 1
                    }
                };
                if next > total {
                    break;
                }
                n = Some(next);
            }
        }
        eprintln!("executor sweep: {points} injection points");
    });
}
