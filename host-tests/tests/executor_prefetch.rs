//! The engine's whole-image prefetch run by the concurrent executor
//! ([`Executor::run_background`], `ExecutorOptions::prefetch`): it completes and marks the
//! image, the image then reads as its base without it, all-zero base blocks stay sparse,
//! base reads overlap over a slow base, the read cap holds (also through
//! `fvd-img prefetch -r`), and base reads that keep failing end prefetch with the same
//! failure as the serial driver's, the storage's reason kept.

mod common;

use common::{create, fvd_img, header_of, ok, scratch};
use fvd_core::engine::{
    FileId, IoError, PrefetchFailure, PrefetchMode, PrefetchState, RequestError,
    MAX_FRUITLESS_PASSES,
};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::executor::{Executor, ExecutorOptions};
use fvd_host::host::faults::{Errno, Fault, FaultPlan, Kinds, Rule, SharedPlan};
use fvd_host::host::files::{open_storage, FileStorage, Layers};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const K: u64 = 1024;
const MIB: u64 = 1 << 20;

/// Bytes the file takes on disk.
fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A sparse raw base of `len` bytes at `path` with data (never all zero in a block) in
/// every other MiB, the rest holes; returns its bytes.
fn half_data_base(path: &Path, len: u64) -> Vec<u8> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(len).unwrap();
    let mut bytes = vec![0u8; len as usize];
    for mib in (0..len / MIB).step_by(2) {
        let at = (mib * MIB) as usize;
        for (i, b) in bytes[at..at + MIB as usize].iter_mut().enumerate() {
            *b = ((i as u64 + mib) % 251 + 1) as u8;
        }
        file.write_all_at(&bytes[at..at + MIB as usize], mib * MIB)
            .unwrap();
    }
    bytes
}

/// `img.fvd` over `base.raw` in `dir` with `opts`.
fn image_over_base(dir: &Path, opts: &str) {
    create(
        dir,
        &[
            "-f", "fvd", "-b", "base.raw", "-F", "raw", "-o", opts, "img.fvd",
        ],
    );
}

/// Executor options for prefetch capped at `kib_s` KiB/s.
fn prefetching(kib_s: u64, workers: usize) -> ExecutorOptions {
    ExecutorOptions {
        workers,
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(kib_s),
        },
        ..ExecutorOptions::default()
    }
}

/// Runs background work until prefetch is done or has given up (at most a minute).
fn settle(e: &mut Executor) -> PrefetchState {
    let start = Instant::now();
    loop {
        e.run_background(Duration::from_millis(50)).unwrap();
        let state = e.engine().unwrap().prefetch_progress().state;
        if matches!(
            state,
            PrefetchState::Done | PrefetchState::Failed | PrefetchState::Off
        ) {
            return state;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prefetch neither finished nor gave up: {:?}",
            e.engine().unwrap().prefetch_progress()
        );
    }
}

/// A delay of `micros` on every base read.
fn slow_base(micros: u64) -> SharedPlan {
    Arc::new(Mutex::new(FaultPlan::with(
        Rule::from(0, Fault::Delay { micros })
            .on(FileId::Base)
            .kinds(Kinds::READS),
    )))
}

#[test]
fn prefetch_through_the_executor_completes_and_the_image_reads_as_its_base_without_it() {
    let dir = scratch();
    let d = dir.path();
    let base = half_data_base(&d.join("base.raw"), 8 * MIB);
    for opts in ["block_size=65536", "compact_image=on,block_size=65536"] {
        image_over_base(d, opts);
        let mut e = Executor::open(&d.join("img.fvd"), prefetching(1 << 20, 8)).unwrap();
        assert_eq!(settle(&mut e), PrefetchState::Done, "{opts}");
        let stats = e.stats().unwrap();
        assert_eq!(stats.prefetched_blocks, 8 * MIB / (64 * K), "{opts}");
        // Half the base's blocks are holes: recorded as zeros, not written as data.
        assert_eq!(stats.fills_recorded_as_zeros, 4 * MIB / (64 * K), "{opts}");
        assert!(e.close().unwrap(), "{opts}: closed clean");
        assert!(
            header_of(&d.join("img.fvd")).1.base_fully_prefetched,
            "{opts}"
        );
        let out = ok(d, &["check", "img.fvd"]);
        assert!(
            out.stdout.contains("No errors were found"),
            "{opts}: {out:?}"
        );
        // Without its base, the image reads exactly as the base did.
        std::fs::rename(d.join("base.raw"), d.join("away.raw")).unwrap();
        let mut e = Executor::open(&d.join("img.fvd"), ExecutorOptions::default()).unwrap();
        assert!(e.read(0, (8 * MIB) as usize).unwrap() == base, "{opts}");
        assert_eq!(e.stats().unwrap().base_read_bytes, 0, "{opts}");
        e.close().unwrap();
        std::fs::rename(d.join("away.raw"), d.join("base.raw")).unwrap();
        std::fs::remove_file(d.join("img.fvd")).unwrap();
    }
}

#[test]
fn prefetch_through_the_executor_keeps_all_zero_base_blocks_sparse() {
    let dir = scratch();
    let d = dir.path();
    // 32 MiB of base, 4 MiB of it data.
    let file = std::fs::File::create(d.join("base.raw")).unwrap();
    file.set_len(32 * MIB).unwrap();
    for i in 0..4 {
        file.write_all_at(&vec![0x5a; MIB as usize], (i * 8 + 1) * MIB)
            .unwrap();
    }
    drop(file);
    for opts in ["block_size=65536", "compact_image=on,block_size=65536"] {
        image_over_base(d, opts);
        let before = on_disk(&d.join("img.fvd"));
        let mut e = Executor::open(&d.join("img.fvd"), prefetching(1 << 20, 8)).unwrap();
        assert_eq!(settle(&mut e), PrefetchState::Done, "{opts}");
        assert_eq!(
            e.stats().unwrap().fills_recorded_as_zeros,
            28 * MIB / (64 * K),
            "{opts}"
        );
        e.close().unwrap();
        let grown = on_disk(&d.join("img.fvd")) - before;
        // The 4 MiB of data plus metadata, not the base's 32 MiB.
        assert!(
            grown <= 4 * MIB + 512 * K,
            "{opts}: prefetch took {grown} bytes on disk for 4 MiB of data"
        );
        std::fs::remove_file(d.join("img.fvd")).unwrap();
    }
}

#[test]
fn a_zero_fill_that_grows_the_image_never_cuts_off_a_copy_written_past_it_meanwhile() {
    // Every other block of the base is data: each zero block's fill punches a hole at the
    // end of the plain image (and grows the file to cover it) while the next block's copy
    // is written past it by another worker.
    let dir = scratch();
    let d = dir.path();
    let len = 8 * MIB;
    let block = 64 * K;
    let file = std::fs::File::create(d.join("base.raw")).unwrap();
    file.set_len(len).unwrap();
    let mut base = vec![0u8; len as usize];
    for b in (1..len / block).step_by(2) {
        let at = (b * block) as usize;
        base[at..at + block as usize].fill(b as u8 | 1);
        file.write_all_at(&base[at..at + block as usize], b * block)
            .unwrap();
    }
    drop(file);
    for round in 0..12 {
        image_over_base(d, "block_size=65536");
        let mut e = Executor::open(&d.join("img.fvd"), prefetching(1 << 20, 32)).unwrap();
        assert_eq!(settle(&mut e), PrefetchState::Done);
        e.close().unwrap();
        std::fs::rename(d.join("base.raw"), d.join("away.raw")).unwrap();
        let mut e = Executor::open(&d.join("img.fvd"), ExecutorOptions::default()).unwrap();
        let read = e.read(0, len as usize).unwrap();
        e.close().unwrap();
        std::fs::rename(d.join("away.raw"), d.join("base.raw")).unwrap();
        let lost: Vec<u64> = (0..len / block)
            .filter(|&b| {
                let at = (b * block) as usize;
                read[at..at + block as usize] != base[at..at + block as usize]
            })
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: blocks {lost:?} differ from the base"
        );
        std::fs::remove_file(d.join("img.fvd")).unwrap();
    }
}

#[test]
fn prefetch_through_the_executor_overlaps_base_reads_over_a_slow_base() {
    let dir = scratch();
    let d = dir.path();
    half_data_base(&d.join("base.raw"), 8 * MIB);
    image_over_base(d, "block_size=65536");
    // 128 blocks at 10 ms each: 1.28 s one at a time. (Not much slower: a window whose
    // throughput falls below the header's minimum is taken for a busy guest and pauses.)
    let serial = Duration::from_millis(128 * 10);
    let start = Instant::now();
    let mut e = Executor::open_with_faults(
        &d.join("img.fvd"),
        prefetching(1 << 20, 8),
        Some(slow_base(10_000)),
    )
    .unwrap();
    assert_eq!(settle(&mut e), PrefetchState::Done);
    let took = start.elapsed();
    assert_eq!(e.stats().unwrap().prefetched_blocks, 128);
    e.close().unwrap();
    assert!(
        took < serial / 2,
        "prefetch of 128 blocks with 10 ms per base read took {took:?}: reads did not overlap"
    );
}

#[test]
fn prefetch_through_the_executor_keeps_its_read_cap() {
    let dir = scratch();
    let d = dir.path();
    half_data_base(&d.join("base.raw"), 4 * MIB);
    image_over_base(d, "block_size=65536");
    let start = Instant::now();
    let mut e = Executor::open(&d.join("img.fvd"), prefetching(1024, 8)).unwrap();
    assert_eq!(settle(&mut e), PrefetchState::Done);
    let took = start.elapsed();
    let read = e.stats().unwrap().base_read_bytes;
    e.close().unwrap();
    assert_eq!(read, 4 * MIB);
    // 4 MiB at 1 MiB/s: about 4 s (each 100 ms window may start with one block over).
    assert!(
        took >= Duration::from_millis(3000),
        "4 MiB under a 1 MiB/s cap took only {took:?}"
    );
}

#[test]
fn fvd_img_prefetch_with_a_rate_keeps_its_read_cap() {
    let dir = scratch();
    let d = dir.path();
    half_data_base(&d.join("base.raw"), 4 * MIB);
    image_over_base(d, "block_size=65536");
    let start = Instant::now();
    let out = ok(d, &["prefetch", "-r", "2M", "img.fvd"]);
    let took = start.elapsed();
    assert!(out.stdout.contains("no longer needs its base"), "{out:?}");
    // 4 MiB at 2 MiB/s: about 2 s.
    assert!(
        took >= Duration::from_millis(1500),
        "4 MiB under a 2 MiB/s cap took only {took:?}"
    );
    let out = ok(d, &["compare", "-F", "raw", "img.fvd", "base.raw"]);
    assert_eq!(out.code, 0);
}

/// The failure a prefetch over a base whose reads all fail with EIO ends with, through
/// the serial driver.
fn driver_failure(image: &Path) -> (PrefetchFailure, Option<i32>) {
    let options = DriverOptions {
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(1 << 20),
        },
        ..DriverOptions::default()
    };
    let storage = open_storage(image, options).unwrap();
    let Layers { files, keys, .. } = storage.into_layers(image).unwrap();
    let plan = FaultPlan::with(
        Rule::from(0, Fault::Fail(Errno::Eio))
            .on(FileId::Base)
            .kinds(Kinds::READS),
    );
    let mut driver: Driver<FileStorage> =
        Driver::open_chain(files, &keys, options, Some(plan)).unwrap();
    let start = Instant::now();
    loop {
        let now = start.elapsed().as_millis() as u64;
        driver.handle_timeout(now).unwrap();
        let progress = driver.engine().prefetch_progress();
        if progress.state == PrefetchState::Failed {
            let os = driver.take_os_error().and_then(|e| e.raw_os_error());
            driver.close().unwrap();
            return (progress.failure.unwrap(), os);
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{progress:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn base_reads_that_keep_failing_end_executor_prefetch_as_they_end_the_drivers() {
    let dir = scratch();
    let d = dir.path();
    let base = half_data_base(&d.join("base.raw"), 2 * MIB);
    image_over_base(d, "block_size=65536");
    let image = d.join("img.fvd");
    let (by_driver, driver_os) = driver_failure(&image);
    let plan: SharedPlan = Arc::new(Mutex::new(FaultPlan::with(
        Rule::from(0, Fault::Fail(Errno::Eio))
            .on(FileId::Base)
            .kinds(Kinds::READS),
    )));
    let mut e =
        Executor::open_with_faults(&image, prefetching(1 << 20, 8), Some(plan.clone())).unwrap();
    assert_eq!(settle(&mut e), PrefetchState::Failed);
    let failure = e.engine().unwrap().prefetch_progress().failure.unwrap();
    // The same failure (which block failed first depends on the order reads finish).
    let copy_failure = |f: PrefetchFailure| match f {
        PrefetchFailure::Copy { passes, error, .. } => Some((passes, error)),
        _ => None,
    };
    let expected = Some((MAX_FRUITLESS_PASSES, RequestError::Io(IoError::Failed)));
    assert_eq!(copy_failure(by_driver), expected, "{by_driver:?}");
    assert_eq!(copy_failure(failure), expected, "{failure:?}");
    // The storage's reason is kept for the message, as the driver keeps it.
    let os = e.take_os_error().and_then(|e| e.raw_os_error());
    assert_eq!(os, Some(libc::EIO));
    assert_eq!(os, driver_os);
    // The image keeps working: with the base back, it reads as the base.
    plan.lock().unwrap().clear();
    assert!(e.read(0, (2 * MIB) as usize).unwrap() == base);
    e.close().unwrap();
    assert!(!header_of(&image).1.base_fully_prefetched);
    let out = ok(d, &["check", "img.fvd"]);
    assert!(out.stdout.contains("No errors were found"), "{out:?}");
    let out = fvd_img(d, &["compare", "-F", "raw", "img.fvd", "base.raw"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn run_background_sleeps_through_throttle_windows_keeps_the_callers_completions_and_ends_when_idle()
{
    let dir = scratch();
    let d = dir.path();
    let base = half_data_base(&d.join("base.raw"), 4 * MIB);
    image_over_base(d, "block_size=65536");
    // Capped at 256 KiB/s: most of each 100 ms window the engine only waits for the next.
    let mut e = Executor::open(&d.join("img.fvd"), prefetching(256, 4)).unwrap();
    let ticket = e.submit_read(MIB, (64 * K) as usize).unwrap();
    let start = Instant::now();
    for _ in 0..5 {
        e.run_background(Duration::from_millis(60)).unwrap();
    }
    let took = start.elapsed();
    // It waited (not a busy return, not a stall) for about the time asked.
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let progress = e.engine().unwrap().prefetch_progress();
    assert_eq!(progress.state, PrefetchState::Running, "{progress:?}");
    assert!(progress.copied > 0 && progress.copied < 64, "{progress:?}");
    // The guest read finished meanwhile and is still there to collect.
    let done = e.wait(ticket).unwrap();
    done.result.unwrap();
    assert!(done.data[..] == base[MIB as usize..(MIB + 64 * K) as usize]);
    e.close().unwrap();
    // With no prefetch and nothing in flight, it returns at once rather than sleeping.
    let mut e = Executor::open(&d.join("img.fvd"), ExecutorOptions::default()).unwrap();
    let start = Instant::now();
    e.run_background(Duration::from_secs(30)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    e.close().unwrap();
}

#[test]
fn reads_of_a_slow_base_never_hold_every_worker_while_image_writes_wait() {
    // Two workers, base reads of 200 ms: four guest reads of the base are submitted
    // first, then a write to the image. One worker stays free for the image, so the write
    // completes while the reads still wait on the base (before, both workers took reads
    // and the write came after two of them). The same holds for prefetch over a slow base
    // with few workers: its writes no longer wait behind its reads.
    let dir = scratch();
    let d = dir.path();
    half_data_base(&d.join("base.raw"), 8 * MIB);
    image_over_base(d, "block_size=65536");
    let options = ExecutorOptions {
        workers: 2,
        ..ExecutorOptions::default()
    };
    let mut e =
        Executor::open_with_faults(&d.join("img.fvd"), options, Some(slow_base(200_000))).unwrap();
    let reads: Vec<_> = (0..4u64)
        .map(|i| e.submit_read(i * 2 * MIB, 64 * K as usize).unwrap())
        .collect();
    let write = e
        .submit_write(7 * MIB, vec![0x5a; 64 * K as usize])
        .unwrap();
    let mut order = Vec::new();
    while order.len() < 5 {
        for done in e.wait_some().unwrap() {
            done.result.unwrap();
            order.push(done.ticket);
        }
    }
    let write_at = order.iter().position(|&t| t == write).unwrap();
    let reads_before = order[..write_at]
        .iter()
        .filter(|t| reads.contains(t))
        .count();
    assert!(
        reads_before <= 1,
        "the image write finished after {reads_before} base reads: {order:?}"
    );
    assert!(e.read(7 * MIB, 64 * K as usize).unwrap() == vec![0x5a; 64 * K as usize]);
    e.close().unwrap();
}
