//! Prefetch benchmark: the engine's own whole-image prefetch (`fvd-img prefetch -r`) of
//! a copy-on-write image over a raw base with added latency per base read (a remote or
//! slow base), run by the serial driver (one command at a time, as `prefetch -r` ran
//! before) and by the concurrent executor (the engine's `num_prefetch_slots` units in
//! flight on a worker pool), under the same read cap. Prints the time of each and the
//! ratio.
//!
//! Usage: fvd-prefetch-bench [--size-mib N] [--dir DIR] [--latency-us N[,N...]]
//!        [--rate-kib N] [--blocks default|64k[,...]] [--workers N] [--repeat N]
//!        [--only driver|executor]
//!
//! The base holds data in every block (nothing is skipped as zeros). Each figure is the
//! best of `--repeat` runs (default 1), the hosts alternating, since other load on the
//! machine only ever adds time.

use fvd_core::engine::{PrefetchMode, PrefetchState};
use fvd_host::bench::{arg, delayed_base_reads, fresh_overlay, list};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::executor::{Executor, ExecutorOptions};
use fvd_host::host::files::{open_storage, FileStorage, Layers};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Host {
    Driver,
    Executor,
}

impl Host {
    fn name(self) -> &'static str {
        match self {
            Host::Driver => "serial driver",
            Host::Executor => "executor",
        }
    }
}

struct Case {
    blocks: Option<u64>,
    latency_us: u64,
    rate_kib: u64,
    workers: usize,
}

/// What one prefetch took.
struct Outcome {
    time: Duration,
    blocks: u64,
    base_bytes: u64,
}

/// Prefetch through the serial driver, driven as `fvd-img prefetch -r` drove it: pass
/// the time, perform every command, sleep until the engine wants time again.
fn by_driver(image: &Path, case: &Case) -> Outcome {
    let options = DriverOptions {
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(case.rate_kib),
        },
        ..DriverOptions::default()
    };
    let storage = open_storage(image, options).expect("open");
    let Layers { files, keys, .. } = storage.into_layers(image).expect("layers");
    let mut d: Driver<FileStorage> = Driver::open_chain(
        files,
        &keys,
        options,
        Some(delayed_base_reads(case.latency_us)),
    )
    .expect("open");
    let start = Instant::now();
    loop {
        d.handle_timeout(start.elapsed().as_millis() as u64)
            .expect("prefetch");
        match d.engine().prefetch_progress().state {
            PrefetchState::Done => break,
            PrefetchState::Failed | PrefetchState::Off => panic!("prefetch failed"),
            _ => {}
        }
        if let Some(deadline) = d.engine().poll_timeout() {
            let wait = deadline.saturating_sub(start.elapsed().as_millis() as u64);
            std::thread::sleep(Duration::from_millis(wait.clamp(1, 200)));
        }
    }
    let time = start.elapsed();
    let stats = d.engine().stats();
    d.close().expect("close");
    Outcome {
        time,
        blocks: stats.prefetched_blocks,
        base_bytes: stats.base_read_bytes,
    }
}

/// Prefetch through the executor, as `fvd-img prefetch -r` runs it now.
fn by_executor(image: &Path, case: &Case) -> Outcome {
    let options = ExecutorOptions {
        workers: case.workers,
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(case.rate_kib),
        },
        ..ExecutorOptions::default()
    };
    let plan = Arc::new(Mutex::new(delayed_base_reads(case.latency_us)));
    let mut e = Executor::open_with_faults(image, options, Some(plan)).expect("open");
    let start = Instant::now();
    loop {
        e.run_background(Duration::from_millis(100))
            .expect("prefetch");
        match e.engine().expect("image").prefetch_progress().state {
            PrefetchState::Done => break,
            PrefetchState::Failed | PrefetchState::Off => panic!("prefetch failed"),
            _ => {}
        }
    }
    let time = start.elapsed();
    let stats = e.stats().expect("image");
    e.close().expect("close");
    Outcome {
        time,
        blocks: stats.prefetched_blocks,
        base_bytes: stats.base_read_bytes,
    }
}

fn run(dir: &Path, case: &Case, host: Host) -> Outcome {
    let image = fresh_overlay(dir, case.blocks);
    let outcome = match host {
        Host::Driver => by_driver(&image, case),
        Host::Executor => by_executor(&image, case),
    };
    let _ = std::fs::remove_file(&image);
    outcome
}

/// Writes a base of `size` bytes with data in every 4 KiB.
fn make_base(path: &Path, size: u64) {
    let file = std::fs::File::create(path).expect("create the base");
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at).expect("write the base");
        at += n as u64;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = arg(&args, "--size-mib")
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let dir = arg(&args, "--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/fvd-prefetch-bench"));
    let latencies = list(&args, "--latency-us", &[1000u64]);
    let rate_kib: u64 = arg(&args, "--rate-kib")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let workers: usize = arg(&args, "--workers")
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let repeat: usize = arg(&args, "--repeat")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let blocks: Vec<Option<u64>> = list(&args, "--blocks", &["64k".to_string()])
        .iter()
        .map(|b| match b.as_str() {
            "default" => None,
            "64k" => Some(65536),
            other => Some(other.parse().expect("--blocks: default, 64k or bytes")),
        })
        .collect();
    let hosts: Vec<Host> = match arg(&args, "--only").as_deref() {
        Some("driver") => vec![Host::Driver],
        Some("executor") => vec![Host::Executor],
        _ => vec![Host::Driver, Host::Executor],
    };
    std::fs::create_dir_all(&dir).expect("bench dir");
    let size = size_mib << 20;
    make_base(&dir.join("base.raw"), size);
    println!(
        "prefetch of a {size_mib} MiB base (data in every block), read cap {rate_kib} KiB/s, \
         executor workers {workers}, best of {repeat}"
    );
    for &block in &blocks {
        for &latency_us in &latencies {
            let case = Case {
                blocks: block,
                latency_us,
                rate_kib,
                workers,
            };
            let mut best: Vec<Option<Outcome>> = hosts.iter().map(|_| None).collect();
            for _ in 0..repeat {
                for (i, &host) in hosts.iter().enumerate() {
                    let o = run(&dir, &case, host);
                    assert!(o.blocks > 0, "nothing prefetched");
                    if best[i].as_ref().is_none_or(|b| o.time < b.time) {
                        best[i] = Some(o);
                    }
                }
            }
            let label = match block {
                None => "default blocks".to_string(),
                Some(b) => format!("{} KiB blocks", b / 1024),
            };
            for (host, o) in hosts.iter().zip(&best) {
                let o = o.as_ref().expect("ran");
                println!(
                    "  {label}, {latency_us} us per base read, {:<13}: {:>7.2} s  {:>7.1} MiB/s  ({} blocks, {} MiB read)",
                    host.name(),
                    o.time.as_secs_f64(),
                    (o.base_bytes as f64 / (1 << 20) as f64) / o.time.as_secs_f64(),
                    o.blocks,
                    o.base_bytes >> 20,
                );
            }
            if let [Some(d), Some(e)] = &best[..] {
                println!(
                    "  {label}, {latency_us} us per base read: executor {:.1}x faster",
                    d.time.as_secs_f64() / e.time.as_secs_f64()
                );
            }
            let _ = std::io::stdout().flush();
        }
    }
    let _ = std::fs::remove_file(dir.join("base.raw"));
    let _ = std::fs::remove_dir(&dir);
}
