//! Whole-image prefetch: copies every base block into the image, never clobbers guest
//! writes, respects its caps, backs off when throughput falls, survives a restart, and
//! leaves an image that no longer needs its base. Time is simulated: the test is the host's
//! clock.

use fvd_core::engine::{
    FileId, PrefetchFailure, PrefetchMode, PrefetchState, Request, MAX_FINISH_ATTEMPTS,
    MAX_FRUITLESS_PASSES,
};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::hooked::{Hook, Hooked, Op, ReadCounter};
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::io;

const BLOCK: u64 = 65536;
const SIZE: u64 = 4 << 20;

fn base_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i / 512) as u8 ^ 0x3c).collect()
}

/// MemStorage that counts the reads (and bytes) of each file.
type Counting = Hooked<MemStorage, ReadCounter>;

fn image(compact: bool, max_read_kib: u64) -> Counting {
    let options = CreateOptions {
        virtual_size: SIZE,
        compact_image: compact,
        block_size: Some(BLOCK),
        chunk_size: Some(4 * BLOCK),
        base: Some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: SIZE,
        }),
        ..Default::default()
    };
    let mut header = plan(&options).unwrap();
    header.prefetch_max_read_throughput.set(max_read_kib);
    header.prefetch_min_read_throughput.set(0);
    header.prefetch_min_write_throughput.set(0);
    let inner = MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: None,
        base: Some(MemFile::new(base_bytes())),
        writes: 0,
    };
    Hooked::new(inner, ReadCounter::default())
}

fn now_options() -> DriverOptions {
    DriverOptions {
        prefetch: PrefetchMode::Now {
            max_read_kib_s: None,
        },
        ..Default::default()
    }
}

/// Advances the clock `step` ms at a time until prefetch is done; returns the time taken.
fn run_to_done(d: &mut Driver<Counting>, step: u64, limit: u64) -> u64 {
    let mut now = 0;
    while d.engine().prefetch_progress().state != PrefetchState::Done {
        d.handle_timeout(now).unwrap();
        now += step;
        assert!(
            now < limit,
            "prefetch did not finish: {:?}",
            d.engine().prefetch_progress()
        );
    }
    now
}

#[test]
fn prefetch_copies_every_block_and_the_base_is_no_longer_needed() {
    for compact in [false, true] {
        let mut d = Driver::open(image(compact, 0), now_options()).unwrap();
        run_to_done(&mut d, 10, 1_000_000);
        assert_eq!(d.engine().stats().prefetched_blocks, SIZE / BLOCK);
        let (mut storage, clean) = d.close().unwrap();
        assert!(clean);
        let (_, layout) = fvd_core::fvd::parse(
            &storage.inner.image.current,
            storage.inner.image.current.len() as u64,
        )
        .unwrap();
        assert!(layout.base_fully_prefetched);
        // The base is gone: the image opens without it and reads the same.
        storage.inner.base = None;
        storage.hook = ReadCounter::default();
        let mut d = Driver::open(
            storage,
            DriverOptions {
                writable: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(d.read(0, SIZE as usize).unwrap(), base_bytes());
        assert_eq!(d.storage.hook.bytes_of(FileId::Base), 0);
    }
}

#[test]
fn prefetch_never_clobbers_concurrent_guest_writes() {
    for seed in 1..6u64 {
        let options = DriverOptions {
            shuffle_seed: Some(seed),
            max_pending: 12,
            ..now_options()
        };
        let mut d = Driver::open(image(seed % 2 == 0, 0), options).unwrap();
        let mut model = base_bytes();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut now = 0;
        let mut ids = Vec::new();
        for round in 0..60u64 {
            d.handle_timeout(now).unwrap();
            now += 5;
            let sector = next(SIZE / 512 - 16);
            let sectors = 1 + next(16);
            let data = vec![round as u8 + 1; (sectors * 512) as usize];
            model[(sector * 512) as usize..][..data.len()].copy_from_slice(&data);
            ids.push(
                d.submit(
                    Request::Write {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    data,
                )
                .unwrap(),
            );
            for _ in 0..next(20) {
                d.step();
            }
        }
        for id in ids {
            assert!(d.wait(id).unwrap().0.is_ok());
        }
        run_to_done(&mut d, 5, 10_000_000);
        assert_eq!(d.read(0, SIZE as usize).unwrap(), model, "seed {seed}");
        let (storage, _) = d.close().unwrap();
        let mut d = Driver::open(storage, DriverOptions::default()).unwrap();
        assert_eq!(
            d.read(0, SIZE as usize).unwrap(),
            model,
            "seed {seed} after reopen"
        );
    }
}

#[test]
fn prefetch_respects_the_read_cap() {
    // 2048 KiB/s cap over 100 ms windows; the clock moves 1 ms per step.
    let d = Driver::open(
        image(false, 2048),
        DriverOptions {
            prefetch: PrefetchMode::Header,
            ..now_options()
        },
    )
    .unwrap();
    // Header mode with delay <= 0 is off: use Now with the header's cap.
    assert_eq!(d.engine().prefetch_progress().state, PrefetchState::Off);
    let mut d2 = Driver::open(image(false, 2048), now_options()).unwrap();
    let took = run_to_done(&mut d2, 1, 100_000);
    let rate_kib_s =
        d2.storage.hook.bytes_of(FileId::Base) as f64 / 1024.0 / (took as f64 / 1000.0);
    assert!(
        rate_kib_s <= 2048.0 * 1.1,
        "prefetch read at {rate_kib_s:.0} KiB/s, cap 2048"
    );
    assert!(
        rate_kib_s >= 2048.0 * 0.5,
        "prefetch far below its cap: {rate_kib_s:.0} KiB/s"
    );
    // An explicit cap from the host overrides the header's.
    let options = DriverOptions {
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(1024),
        },
        ..now_options()
    };
    let mut d3 = Driver::open(image(false, 0), options).unwrap();
    let took = run_to_done(&mut d3, 1, 100_000);
    let rate_kib_s =
        d3.storage.hook.bytes_of(FileId::Base) as f64 / 1024.0 / (took as f64 / 1000.0);
    assert!(
        rate_kib_s <= 1024.0 * 1.1,
        "prefetch read at {rate_kib_s:.0} KiB/s, cap 1024"
    );
    d.close().unwrap();
}

#[test]
fn a_read_cap_below_the_minimum_throughput_is_not_taken_for_a_busy_guest() {
    // The header keeps its default minimum (5 MiB/s); the host caps reads at 2 MiB/s, as
    // `fvd-img prefetch -r 2M` does. Pausing for a busy guest would take tens of seconds.
    let mut image = image(false, 0);
    let (mut header, _) = fvd_core::fvd::parse(
        &image.inner.image.current,
        image.inner.image.current.len() as u64,
    )
    .map(|(h, l)| (h.clone(), l))
    .unwrap();
    header.prefetch_min_read_throughput.set(5120);
    header.prefetch_min_write_throughput.set(5120);
    image.inner.image = MemFile::new(initial_metadata(&header));
    let options = DriverOptions {
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(2048),
        },
        ..now_options()
    };
    let mut d = Driver::open(image, options).unwrap();
    let mut now = 0;
    while d.engine().prefetch_progress().state != PrefetchState::Done {
        d.handle_timeout(now).unwrap();
        assert_ne!(
            d.engine().prefetch_progress().state,
            PrefetchState::Paused,
            "prefetch paused at {now} ms as if the guest were busy"
        );
        now += 1;
        assert!(now < 10_000, "4 MiB at 2 MiB/s took over 10 s");
    }
    d.close().unwrap();
}

#[test]
fn prefetch_backs_off_when_throughput_falls_below_the_minimum() {
    let options = CreateOptions {
        virtual_size: SIZE,
        block_size: Some(BLOCK),
        base: Some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: SIZE,
        }),
        ..Default::default()
    };
    let header = plan(&options).unwrap();
    // Defaults: minimum 5120 KiB/s, 100 ms windows, pauses up to 30 s.
    let storage = Hooked::new(
        MemStorage {
            image: MemFile::new(initial_metadata(&header)),
            data: None,
            base: Some(MemFile::new(base_bytes())),
            writes: 0,
        },
        ReadCounter::default(),
    );
    let mut d = Driver::open(storage, now_options()).unwrap();
    // A slow (or busy) host: 100 ms pass for every 4 commands it performs, about 2 blocks
    // (1.3 MiB/s), below the 5 MiB/s minimum.
    let mut now = 0;
    let mut paused = false;
    for _ in 0..400 {
        d.tick(now);
        for _ in 0..4 {
            d.step();
        }
        paused |= d.engine().prefetch_progress().state == PrefetchState::Paused;
        if paused {
            break;
        }
        now += 100;
    }
    assert!(
        paused,
        "prefetch never backed off: {:?}",
        d.engine().prefetch_progress()
    );
    // It resumes and finishes once time passes.
    run_to_done_from(&mut d, now, 1000);
}

fn run_to_done_from(d: &mut Driver<Counting>, mut now: u64, step: u64) {
    for _ in 0..1_000_000 {
        if d.engine().prefetch_progress().state == PrefetchState::Done {
            return;
        }
        d.handle_timeout(now).unwrap();
        now += step;
    }
    panic!(
        "prefetch did not finish: {:?}",
        d.engine().prefetch_progress()
    );
}

#[test]
fn prefetch_progress_survives_a_restart() {
    // Capped at 1 MiB/s and the clock stopped: the first session copies one window's worth.
    let mut d = Driver::open(image(true, 1024), now_options()).unwrap();
    d.handle_timeout(0).unwrap();
    d.handle_timeout(150).unwrap();
    let copied_first = d.engine().stats().prefetched_blocks;
    assert!(
        copied_first < SIZE / BLOCK,
        "the first session must stop part way"
    );
    let (storage, _) = d.close().unwrap();
    let mut d = Driver::open(storage, now_options()).unwrap();
    run_to_done(&mut d, 10, 1_000_000);
    assert_eq!(
        d.engine().stats().prefetched_blocks + copied_first,
        SIZE / BLOCK,
        "every block copied exactly once"
    );
    assert_eq!(d.read(0, SIZE as usize).unwrap(), base_bytes());
}

/// A simulated link: every read or write of any file costs its latency plus its bytes at
/// the link's rate, on a clock the test reads.
struct Throttle {
    clock_us: u64,
    latency_us: u64,
    bytes_per_ms: u64,
}

impl Hook for Throttle {
    fn before(&mut self, op: Op) -> io::Result<()> {
        if let Op::Read { len, .. } | Op::Write { len, .. } = op {
            self.clock_us += self.latency_us + len as u64 * 1000 / self.bytes_per_ms;
        }
        Ok(())
    }
}

#[test]
fn prefetch_over_a_throttled_base_completes_within_its_cap_and_yields_to_the_guest() {
    // A 20 MiB/s link with 2 ms latency; prefetch capped at 4 MiB/s by the header.
    let mut inner = image(false, 4096);
    // Back off below 2 MiB/s (header offset 3300: prefetch_min_read_throughput, KiB/s).
    inner.inner.image.current[3300..3308].copy_from_slice(&2048u64.to_le_bytes());
    inner.inner.image.durable = inner.inner.image.current.clone();
    let storage = Hooked::new(
        inner,
        Throttle {
            clock_us: 0,
            latency_us: 2000,
            bytes_per_ms: 20 * 1024,
        },
    );
    let mut d = Driver::open(storage, now_options()).unwrap();
    let mut model = base_bytes();
    let mut paused_under_load = false;
    let mut round = 0u64;
    while d.engine().prefetch_progress().state != PrefetchState::Done {
        let now = d.storage.hook.clock_us / 1000;
        d.handle_timeout(now).unwrap();
        if (10..120).contains(&round) {
            paused_under_load |= d.engine().prefetch_progress().state == PrefetchState::Paused;
        }
        // Idle links still let time pass.
        d.storage.hook.clock_us += 1000;
        // A burst of foreground writes for a while: they take the link's time, so
        // prefetch's measured throughput drops and it may pause.
        if (10..70).contains(&round) {
            let at = (round * 7919 % (SIZE / 65536)) * 65536;
            let data = vec![round as u8; 65536];
            d.write(at, &data).unwrap();
            model[at as usize..at as usize + 65536].copy_from_slice(&data);
            // A heavy foreground load: 300 ms of the link per round.
            d.storage.hook.clock_us += 300_000;
            paused_under_load |= d.engine().prefetch_progress().state == PrefetchState::Paused;
        }
        round += 1;
        assert!(
            round < 200_000,
            "prefetch did not finish: {:?}",
            d.engine().prefetch_progress()
        );
    }
    let elapsed_s = d.storage.hook.clock_us as f64 / 1e6;
    let prefetch_bytes = d.engine().stats().prefetched_blocks * BLOCK;
    let rate_kib_s = prefetch_bytes as f64 / 1024.0 / elapsed_s;
    assert!(
        rate_kib_s <= 4096.0 * 1.1,
        "prefetch averaged {rate_kib_s:.0} KiB/s over a 4096 KiB/s cap"
    );
    assert!(
        paused_under_load,
        "prefetch never backed off under the foreground load"
    );
    let (mut storage, _) = d.close().unwrap();
    storage.inner.inner.base = None;
    let mut d = Driver::open(
        storage,
        DriverOptions {
            writable: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.read(0, SIZE as usize).unwrap(), model);
}

/// Fails base reads of the blocks in `bad` (by block index), or every flush when
/// `flush_fails`, counting the base reads tried.
struct FailingBase {
    bad: std::ops::Range<u64>,
    flush_fails: bool,
    base_reads: u64,
}

impl Hook for FailingBase {
    fn before(&mut self, op: Op) -> io::Result<()> {
        match op {
            Op::Read {
                file: FileId::Base,
                offset,
                ..
            } => {
                self.base_reads += 1;
                if self.bad.contains(&(offset / BLOCK)) {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
            Op::Flush { .. } if self.flush_fails => {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            _ => {}
        }
        Ok(())
    }
}

type Failing = Hooked<Counting, FailingBase>;

/// Advances the clock until prefetch leaves its working states; returns the final state.
fn run_until_settled(d: &mut Driver<Failing>) -> PrefetchState {
    for now in 0..100_000u64 {
        let state = d.engine().prefetch_progress().state;
        if matches!(state, PrefetchState::Done | PrefetchState::Failed) {
            return state;
        }
        d.handle_timeout(now * 10).unwrap();
    }
    panic!(
        "prefetch neither finished nor gave up: {:?}",
        d.engine().prefetch_progress()
    );
}

#[test]
fn prefetch_gives_up_on_blocks_that_keep_failing_after_bounded_passes() {
    let blocks = SIZE / BLOCK;
    let storage = Hooked::new(
        image(false, 0),
        FailingBase {
            bad: 5..7,
            flush_fails: false,
            base_reads: 0,
        },
    );
    let mut d = Driver::open(storage, now_options()).unwrap();
    assert_eq!(run_until_settled(&mut d), PrefetchState::Failed);
    let progress = d.engine().prefetch_progress();
    match progress.failure {
        Some(PrefetchFailure::Copy { block, passes, .. }) => {
            assert_eq!(block, 5);
            assert_eq!(passes, MAX_FRUITLESS_PASSES);
        }
        other => panic!("want a copy failure, got {other:?}"),
    }
    // Every good block was copied once; the bad ones were tried once per pass: the first
    // pass (which copied the others) and the fruitless ones after it.
    assert_eq!(d.engine().stats().prefetched_blocks, blocks - 2);
    let tries = u64::from(MAX_FRUITLESS_PASSES) + 1;
    assert_eq!(d.storage.hook.base_reads, blocks - 2 + 2 * tries);
    // Nothing waits for time any more, and the image stays usable and closes cleanly.
    assert_eq!(d.engine().poll_timeout(), None);
    assert_eq!(
        d.read(0, BLOCK as usize).unwrap(),
        base_bytes()[..BLOCK as usize]
    );
    let (_, clean) = d.close().unwrap();
    assert!(clean);
}

#[test]
fn prefetch_gives_up_when_its_final_commit_keeps_failing() {
    let storage = Hooked::new(
        image(false, 0),
        FailingBase {
            bad: 0..0,
            flush_fails: false,
            base_reads: 0,
        },
    );
    let mut d = Driver::open(storage, now_options()).unwrap();
    d.storage.hook.flush_fails = true;
    assert_eq!(run_until_settled(&mut d), PrefetchState::Failed);
    match d.engine().prefetch_progress().failure {
        Some(PrefetchFailure::Finish { attempts, .. }) => {
            assert_eq!(attempts, MAX_FINISH_ATTEMPTS)
        }
        other => panic!("want a finish failure, got {other:?}"),
    }
    let os = d.take_os_error().expect("the storage's reason is kept");
    assert_eq!(os.raw_os_error(), Some(libc::EINVAL));
}
