//! `fvd-bench`: one run that compares, for each workload (random and sequential, read and
//! write, 4 KiB and 64 KiB, queue depth 16), raw `pread`/`pwrite` on a plain file, FVD
//! (plain and compact, fully allocated) through the executor, and `qemu-img bench` on
//! fully allocated qcow2 and QED images of the same size; then the journal writes per
//! guest write of write workloads that flush every N writes. `scripts/bench-compare.sh`
//! runs it; BENCHMARKS.md records the figures.
//!
//! Fairness: every contender uses the page cache (`qemu-img bench -t writeback`), the same
//! file system and size, the same offsets (`qemu-img bench` only strides, so "random" is a
//! stride of about 0.618 × the size, which visits every block once in a scattered order;
//! see `workload::scatter_step`), and every write run ends with `fdatasync` inside the
//! timed span (qemu-img flushes when it closes the image: its runs are timed as the
//! whole process minus the median time of a one-request run, i.e. start-up and open).

use clap::Parser;
use fvd_host::host::executor::{Executor, ExecutorOptions, GuestBuffers};
use fvd_host::testing::workload::{
    create_image, open, prepare, run, scatter_step, Pattern, Subject, Workload,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Compare FVD through the executor with raw I/O and qemu-img bench")]
struct Args {
    /// Directory for the images (a real file system, not tmpfs)
    #[arg(long, default_value = "/var/tmp/fvd-bench")]
    dir: PathBuf,
    /// Image size in MiB
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Requests in flight
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Executor worker threads
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Bytes moved per run, in MiB (each run does this many MiB of requests)
    #[arg(long, default_value_t = 256)]
    run_mib: u64,
    /// Repetitions per figure (the median is reported)
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// qemu-img binary
    #[arg(long, default_value = "qemu-img")]
    qemu_img: String,
    /// qemu-img AIO backend (threads, native, io_uring)
    #[arg(long, default_value = "threads")]
    qemu_aio: String,
    /// Skip the qemu-img contenders
    #[arg(long)]
    no_qemu: bool,
    /// Also time FVD with guest buffers copied per command (GuestBuffers::Copy)
    #[arg(long)]
    copy_buffers: bool,
    /// Flush every this many writes in the journal-rate workloads
    #[arg(long, default_value_t = 1000)]
    flush_every: usize,
    /// Only these workloads (comma separated names like rand-read-4k)
    #[arg(long)]
    only: Option<String>,
    /// Only these contenders (comma separated: raw, fvd-plain, fvd-compact, fvd-qed, qcow2, qed)
    #[arg(long)]
    contenders: Option<String>,
    /// Keep the images in DIR and reuse them on the next run (for profiling)
    #[arg(long)]
    keep: bool,
    /// Skip the journal-rate workloads
    #[arg(long)]
    no_journal: bool,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    write: bool,
    sequential: bool,
    block: u64,
}

impl Spec {
    fn name(&self) -> String {
        format!(
            "{}-{}-{}k",
            if self.sequential { "seq" } else { "rand" },
            if self.write { "write" } else { "read" },
            self.block >> 10
        )
    }

    fn step(&self, size: u64) -> u64 {
        if self.sequential {
            self.block
        } else {
            scatter_step(size, self.block)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type BoxError = Box<dyn std::error::Error>;

fn qemu(args: &Args, extra: &[String]) -> Result<(Duration, String), BoxError> {
    let start = Instant::now();
    let out = Command::new(&args.qemu_img).args(extra).output()?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}",
            args.qemu_img,
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn bench_args(
    args: &Args,
    format: &str,
    path: &Path,
    spec: &Spec,
    count: u64,
    depth: usize,
) -> Vec<String> {
    let size = args.size_mib << 20;
    let mut v: Vec<String> = [
        "bench",
        "-f",
        format,
        "-t",
        "writeback",
        "-i",
        &args.qemu_aio,
        "-c",
        &count.to_string(),
        "-d",
        &depth.to_string(),
        "-s",
        &spec.block.to_string(),
        "-S",
        &spec.step(size).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spec.write {
        v.extend(["-w".to_string(), "--pattern=90".to_string()]);
    }
    v.push(path.display().to_string());
    v
}

/// Makes a fully allocated qcow2 or QED image with qemu-img.
fn prepare_qemu(args: &Args, dir: &Path, format: &str) -> Result<PathBuf, BoxError> {
    let path = dir.join(format!("bench.{format}"));
    let size = args.size_mib << 20;
    qemu(
        args,
        &[
            "create".into(),
            "-q".into(),
            "-f".into(),
            format.into(),
            path.display().to_string(),
            size.to_string(),
        ],
    )?;
    // Fill every cluster: sequential 1 MiB writes over the whole image.
    let fill = Spec {
        write: true,
        sequential: true,
        block: 1 << 20,
    };
    qemu(
        args,
        &bench_args(args, format, &path, &fill, size >> 20, 16),
    )?;
    Ok(path)
}

/// Start-up, open and close of qemu-img bench without I/O worth timing.
fn qemu_overhead(args: &Args, format: &str, path: &Path) -> Result<Duration, BoxError> {
    let one = Spec {
        write: false,
        sequential: true,
        block: 4096,
    };
    let a = bench_args(args, format, path, &one, 1, 1);
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(qemu(args, &a)?.0.as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(times)))
}

struct Contender {
    name: String,
    kind: Kind,
}

enum Kind {
    Executor {
        subject: Subject,
        path: PathBuf,
        options: ExecutorOptions,
    },
    Qemu {
        format: &'static str,
        path: PathBuf,
        overhead: Duration,
    },
}

/// CPU per request (calling thread, process) in ns and the final flush's share of the time.
type Breakdown = (f64, f64, f64);

/// Throughput (MiB/s) and, for the executor, where the time went.
fn measure(args: &Args, c: &Contender, spec: &Spec) -> Result<(f64, Option<Breakdown>), BoxError> {
    let size = args.size_mib << 20;
    let count = (args.run_mib << 20) / spec.block;
    if spec.write {
        // Start every write run with no dirty data from earlier runs (untimed), so one
        // contender's write-back does not land in another's final fdatasync.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    let bytes = (count * spec.block) as f64 / (1 << 20) as f64;
    match &c.kind {
        Kind::Executor {
            subject,
            path,
            options,
        } => {
            let mut executor = open(path, *subject, *options)?;
            let measured = run(
                &mut executor,
                &Workload {
                    write: spec.write,
                    block: spec.block as usize,
                    count: count as usize,
                    depth: args.depth,
                    pattern: Pattern::Stride {
                        step: spec.step(size),
                    },
                    flush_every: None,
                    flush_at_end: true,
                },
            )?;
            executor.close()?;
            Ok((
                measured.mib_per_s(),
                Some((
                    measured.caller_ns_per_request(),
                    measured.process_ns_per_request(),
                    measured.final_flush.as_secs_f64() / measured.elapsed.as_secs_f64(),
                )),
            ))
        }
        Kind::Qemu {
            format,
            path,
            overhead,
        } => {
            let a = bench_args(args, format, path, spec, count, args.depth);
            let (wall, _) = qemu(args, &a)?;
            let secs = wall.saturating_sub(*overhead).as_secs_f64().max(1e-6);
            Ok((bytes / secs, None))
        }
    }
}

/// Journal writes per guest write for random 4 KiB writes flushing every N writes.
fn journal_rate(args: &Args, out: &mut String) -> Result<(), BoxError> {
    let size = args.size_mib << 20;
    let options = ExecutorOptions {
        workers: args.workers,
        ..Default::default()
    };
    let writes = 20 * args.flush_every;
    writeln!(
        out,
        "\nJournal writes per guest write, {writes} random 4 KiB writes at depth {}, flush every {} writes:",
        args.depth, args.flush_every
    )?;
    writeln!(
        out,
        "{:<34} {:>12} {:>14} {:>8} {:>16}",
        "image", "guest writes", "journal writes", "commits", "journal/guest"
    )?;
    let cases: [(&str, Option<Subject>); 3] = [
        ("compact, empty (allocating)", None),
        ("compact, fully allocated", Some(Subject::Compact)),
        ("plain over raw base, empty (CoW)", Some(Subject::Cow)),
    ];
    for (name, subject) in cases {
        let dir = tempfile::tempdir_in(&args.dir)?;
        let path = match subject {
            None => {
                let path = dir.path().join("empty-compact.img");
                create_image(
                    &path,
                    &fvd_core::fvd::create::CreateOptions {
                        virtual_size: size,
                        compact_image: true,
                        ..Default::default()
                    },
                )?;
                path
            }
            Some(subject) => prepare(dir.path(), subject, size)?,
        };
        let mut executor = Executor::open(&path, options)?;
        let before = executor.stats().unwrap_or_default();
        run(
            &mut executor,
            &Workload {
                write: true,
                block: 4096,
                count: writes,
                depth: args.depth,
                pattern: Pattern::Random { seed: 7 },
                flush_every: Some(args.flush_every),
                flush_at_end: true,
            },
        )?;
        let after = executor.stats().unwrap_or_default();
        executor.close()?;
        let guest = after.guest_writes - before.guest_writes;
        let journal = after.journal_writes - before.journal_writes;
        writeln!(
            out,
            "{:<34} {:>12} {:>14} {:>8} {:>16.5}",
            name,
            guest,
            journal,
            after.commits - before.commits,
            journal as f64 / guest.max(1) as f64
        )?;
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let size = args.size_mib << 20;
    let work = tempfile::tempdir_in(&args.dir)?;
    let work_dir = if args.keep {
        args.dir.clone()
    } else {
        work.path().to_path_buf()
    };
    let options = ExecutorOptions {
        workers: args.workers,
        ..Default::default()
    };
    eprintln!(
        "preparing {} MiB images in {} ...",
        args.size_mib,
        work_dir.display()
    );
    let mut contenders = Vec::new();
    for subject in [Subject::Raw, Subject::Plain, Subject::Compact, Subject::Qed] {
        let made = work_dir.join(format!("{}.img", subject.name()));
        let path = if args.keep && made.exists() {
            made
        } else {
            prepare(&work_dir, subject, size)?
        };
        contenders.push(Contender {
            name: subject.name().to_string(),
            kind: Kind::Executor {
                subject,
                path: path.clone(),
                options,
            },
        });
        if args.copy_buffers && subject != Subject::Raw {
            contenders.push(Contender {
                name: format!("{}-copy", subject.name()),
                kind: Kind::Executor {
                    subject,
                    path,
                    options: ExecutorOptions {
                        guest_buffers: GuestBuffers::Copy,
                        ..options
                    },
                },
            });
        }
    }
    if !args.no_qemu {
        for format in ["qcow2", "qed"] {
            let made = work_dir.join(format!("bench.{format}"));
            let path = if args.keep && made.exists() {
                made
            } else {
                prepare_qemu(&args, &work_dir, format)?
            };
            let overhead = qemu_overhead(&args, format, &path)?;
            eprintln!(
                "qemu-img bench {format}: start-up/open/close overhead {:.1} ms (subtracted)",
                overhead.as_secs_f64() * 1e3
            );
            contenders.push(Contender {
                name: format.to_string(),
                kind: Kind::Qemu {
                    format,
                    path,
                    overhead,
                },
            });
        }
    }
    if let Some(keep) = &args.contenders {
        let names: Vec<&str> = keep.split(',').collect();
        contenders.retain(|c| names.contains(&c.name.as_str()));
    }
    // Keep the fill data from competing for write-back with the runs.
    for entry in std::fs::read_dir(&work_dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::File::open(path)?.sync_all()?;
        }
    }

    let mut specs = Vec::new();
    for write in [false, true] {
        for sequential in [false, true] {
            for block in [4096u64, 65536] {
                specs.push(Spec {
                    write,
                    sequential,
                    block,
                });
            }
        }
    }
    if let Some(only) = &args.only {
        let names: Vec<&str> = only.split(',').collect();
        specs.retain(|s| names.contains(&s.name().as_str()));
    }

    let mut out = String::new();
    writeln!(
        out,
        "MiB/s, median of {} runs of {} MiB each, queue depth {}, {} MiB images, {} executor workers, qemu-img -i {}",
        args.reps, args.run_mib, args.depth, args.size_mib, args.workers, args.qemu_aio
    )?;
    let mut header = format!("{:<14}", "workload");
    for c in &contenders {
        write!(header, " {:>12}", c.name)?;
    }
    let fvd: Vec<usize> = (0..contenders.len())
        .filter(|&i| contenders[i].name.starts_with("fvd-"))
        .collect();
    let others: Vec<usize> = (0..contenders.len())
        .filter(|&i| !contenders[i].name.starts_with("fvd-"))
        .collect();
    for &f in &fvd {
        for &o in &others {
            let short = |n: &str| n.trim_start_matches("fvd-").to_string();
            write!(
                header,
                " {:>14}",
                format!("{}/{}", short(&contenders[f].name), contenders[o].name)
            )?;
        }
    }
    writeln!(out, "{header}")?;
    let mut cpu_table = String::new();
    for spec in &specs {
        let mut figures = vec![Vec::new(); contenders.len()];
        let mut caller = vec![Vec::new(); contenders.len()];
        let mut process = vec![Vec::new(); contenders.len()];
        let mut sync_share = vec![Vec::new(); contenders.len()];
        for rep in 0..args.reps {
            // Rotate the order per repetition so no contender always runs first.
            for k in 0..contenders.len() {
                let i = (k + rep) % contenders.len();
                let c = &contenders[i];
                let (mib_s, cpu) = measure(&args, c, spec)?;
                figures[i].push(mib_s);
                if let Some((c, p, s)) = cpu {
                    caller[i].push(c);
                    process[i].push(p);
                    sync_share[i].push(s);
                }
            }
        }
        let figures: Vec<f64> = figures.into_iter().map(median).collect();
        write!(cpu_table, "{:<14}", spec.name())?;
        for ((c, p), s) in caller.into_iter().zip(process).zip(sync_share) {
            if !c.is_empty() {
                write!(
                    cpu_table,
                    " {:>7.0} {:>7.0} {:>5.0}",
                    median(c),
                    median(p),
                    median(s) * 100.0
                )?;
            }
        }
        writeln!(cpu_table)?;
        let mut line = format!("{:<14}", spec.name());
        for f in &figures {
            write!(line, " {f:>12.1}")?;
        }
        for &f in &fvd {
            for &o in &others {
                write!(line, " {:>14.3}", figures[f] / figures[o])?;
            }
        }
        eprintln!("{line}");
        writeln!(out, "{line}")?;
    }
    write!(
        out,
        "\nWhere the time goes (medians): CPU ns per request on the calling thread (submit, engine,\ncompletions) and in the whole process, and % of the wall time spent in the final fdatasync\n{:<14}",
        "workload"
    )?;
    for c in &contenders {
        if matches!(c.kind, Kind::Executor { .. }) {
            write!(out, " {:>21}", c.name)?;
        }
    }
    writeln!(out)?;
    write!(out, "{:<14}", "")?;
    for c in &contenders {
        if matches!(c.kind, Kind::Executor { .. }) {
            write!(out, " {:>7} {:>7} {:>5}", "caller", "total", "sync%")?;
        }
    }
    writeln!(out)?;
    out.push_str(&cpu_table);
    if !args.no_journal {
        journal_rate(&args, &mut out)?;
    }
    println!("{out}");
    Ok(())
}
