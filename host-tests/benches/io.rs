//! Throughput through the executor at queue depth 16: 4 KiB and 64 KiB random and
//! sequential reads and writes on a raw file (the executor's raw mode, same worker pool),
//! a fully allocated plain FVD image, a fully allocated compact FVD image, and a plain FVD
//! image over a raw base (reads are served from the base until written).
//!
//! Images are 256 MiB in `$FVD_BENCH_DIR` or the target directory's tmp (a real file
//! system, not tmpfs) and live in the page cache; every write sample ends with a flush
//! (`fdatasync`) inside the timed span. Run: `cargo bench -p fvd-host --bench io`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fvd_host::host::executor::{Executor, ExecutorOptions};
use fvd_host::testing::workload::{open, prepare, run, Pattern, Subject, Workload};
use std::path::PathBuf;
use std::time::Duration;

const SIZE: u64 = 256 << 20;
const DEPTH: usize = 16;

fn bench_dir() -> PathBuf {
    let root = std::env::var_os("FVD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = root.join("fvd-bench-io");
    std::fs::create_dir_all(&dir).expect("create the benchmark directory");
    dir
}

fn io(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("scratch directory");
    let mut subjects: Vec<(Subject, Executor)> = Subject::ALL
        .iter()
        .map(|&subject| {
            let path = prepare(dir.path(), subject, SIZE).expect("prepare the image");
            let executor =
                open(&path, subject, ExecutorOptions::default()).expect("open the image");
            (subject, executor)
        })
        .collect();
    for write in [false, true] {
        for sequential in [false, true] {
            for block in [4usize << 10, 64 << 10] {
                let name = format!(
                    "{}-{}-{}k",
                    if sequential { "seq" } else { "rand" },
                    if write { "write" } else { "read" },
                    block >> 10
                );
                let mut group = c.benchmark_group(name);
                group
                    .sample_size(10)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(2))
                    .throughput(Throughput::Bytes(block as u64));
                for (subject, executor) in subjects.iter_mut() {
                    group.bench_function(BenchmarkId::from_parameter(subject.name()), |b| {
                        let mut seed = 1;
                        b.iter_custom(|iters| {
                            seed += 1;
                            let workload = Workload {
                                write,
                                block,
                                count: iters as usize,
                                depth: DEPTH,
                                pattern: if sequential {
                                    Pattern::Sequential
                                } else {
                                    Pattern::Random { seed }
                                },
                                flush_every: None,
                                flush_at_end: true,
                            };
                            run(executor, &workload).expect("run").elapsed
                        })
                    });
                }
                group.finish();
            }
        }
    }
    for (_, executor) in subjects {
        executor.close().expect("close");
    }
}

criterion_group!(benches, io);
criterion_main!(benches);
