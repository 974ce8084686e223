//! Power-cut tests. A storage with a volatile write cache loses or tears (at 512-byte
//! granularity) every write not yet flushed. The workload is cut after every command in
//! turn; from the surviving storage we build the images "no pending write reached the
//! medium", "each prefix of the pending writes did, the next one torn", "all did" and some
//! random subsets; each is reopened (read-write, which replays the journal, and read-only,
//! which overlays it) and must hold every write acknowledged before the last completed
//! flush, and nothing but old or new data anywhere else.

use fvd_core::engine::{ImageFormat, PrefetchMode, Request, RequestId};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};
use fvd_host::cli::check::qed::analyze;
use fvd_host::cli::qed::open_qed;
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::memstore::{survivors, MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::collections::HashSet;

const SECTOR: usize = 512;

#[derive(Clone, Copy, Debug)]
enum Op {
    Read {
        sector: u64,
        sectors: u64,
    },
    Write {
        sector: u64,
        sectors: u64,
        pattern: u8,
    },
    Zeroes {
        sector: u64,
        sectors: u64,
    },
    Flush,
}

struct Scenario {
    options: CreateOptions<'static>,
    /// A QED image instead of the FVD one `options` describe (then only its
    /// `virtual_size` counts).
    qed: Option<QedCreateOptions<'static>>,
    base: Option<Vec<u8>>,
    batches: Vec<Vec<Op>>,
    cache_pages: usize,
    /// Copy-on-read and whole-image prefetch run alongside the workload.
    background_copies: bool,
}

fn fill(pattern: u8, sectors: u64) -> Vec<u8> {
    (0..sectors as usize * SECTOR)
        .map(|i| pattern ^ (i / SECTOR) as u8)
        .collect()
}

fn fresh(s: &Scenario) -> MemStorage {
    if let Some(options) = &s.qed {
        let plan = fvd_core::qed::plan(options).unwrap();
        let mut image = vec![0u8; plan.file_len as usize];
        plan.write_header_area(&mut image).unwrap();
        return MemStorage {
            image: MemFile::new(image),
            data: None,
            base: s.base.clone().map(MemFile::new),
            writes: 0,
        };
    }
    let header = plan(&s.options).unwrap();
    MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: s.options.data_file.map(|_| MemFile::new(Vec::new())),
        base: s.base.clone().map(MemFile::new),
        writes: 0,
    }
}

fn driver_options(s: &Scenario, writable: bool) -> DriverOptions {
    let (copy_on_read, prefetch) = match (s.background_copies, writable) {
        (true, true) => (
            Some(true),
            PrefetchMode::Now {
                max_read_kib_s: Some(64),
            },
        ),
        _ => (Some(false), PrefetchMode::Off),
    };
    DriverOptions {
        writable,
        cache_bytes: s.cache_pages * 512,
        copy_on_read,
        prefetch,
        ..Default::default()
    }
}

/// One submitted op: when it was submitted and completed (in commands performed).
struct Trace {
    op: Op,
    submitted: u64,
    completed: Option<u64>,
    ok: bool,
}

/// Runs the scenario until `cut` commands were performed (or to the end); returns the
/// storage as the cut left it and the trace.
fn run(s: &Scenario, cut: Option<u64>) -> (MemStorage, Vec<Trace>, u64) {
    let mut driver = Driver::open(fresh(s), driver_options(s, true)).unwrap();
    let start = driver.commands_run;
    let mut trace: Vec<Trace> = Vec::new();
    let reached = |d: &Driver<MemStorage>| cut.is_some_and(|c| d.commands_run - start >= c);
    'batches: for (round, batch) in s.batches.iter().enumerate() {
        // Time passes between batches: prefetch (capped) copies a little each time.
        driver.tick(round as u64 * 100);
        let mut ids: Vec<(usize, RequestId)> = Vec::new();
        for op in batch {
            let (request, buffer) = match *op {
                Op::Write {
                    sector,
                    sectors,
                    pattern,
                } => (
                    Request::Write {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    fill(pattern, sectors),
                ),
                Op::Zeroes { sector, sectors } => (
                    Request::WriteZeroes {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    Vec::new(),
                ),
                Op::Flush => (Request::Flush, Vec::new()),
                Op::Read { sector, sectors } => (
                    Request::Read {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    vec![0; sectors as usize * SECTOR],
                ),
            };
            let id = driver.submit(request, buffer).unwrap();
            trace.push(Trace {
                op: *op,
                submitted: driver.commands_run - start,
                completed: None,
                ok: false,
            });
            ids.push((trace.len() - 1, id));
        }
        while !ids.is_empty() {
            if reached(&driver) {
                break 'batches;
            }
            assert!(driver.step(), "engine stalled");
            ids.retain(|&(t, id)| match driver.take_result(id) {
                Some((result, _)) => {
                    trace[t].completed = Some(driver.commands_run - start);
                    trace[t].ok = result.is_ok();
                    false
                }
                None => true,
            });
        }
    }
    let total = driver.commands_run - start;
    if s.background_copies && cut.is_none() {
        let stats = driver.engine().stats();
        // QED has copy-on-read but no whole-image prefetch.
        let prefetched = s.qed.is_some() || stats.prefetched_blocks > 0;
        assert!(
            stats.cor_fills_done > 0 && prefetched,
            "copy-on-read and prefetch must run: {stats:?}"
        );
    }
    (driver.into_storage(), trace, total)
}

/// Allowed contents per sector after a cut: the value every write certain to be durable
/// leaves, plus whatever any other submitted write could have left.
fn allowed(s: &Scenario, trace: &[Trace]) -> Vec<HashSet<Vec<u8>>> {
    let size = s.options.virtual_size as usize;
    let mut initial = vec![0u8; size];
    if let Some(base) = &s.base {
        let n = base.len().min(size);
        initial[..n].copy_from_slice(&base[..n]);
    }
    let last_flush_submitted = trace
        .iter()
        .filter(|t| matches!(t.op, Op::Flush) && t.ok && t.completed.is_some())
        .map(|t| t.submitted)
        .max();
    let certain = |t: &Trace| {
        last_flush_submitted.is_some_and(|f| t.ok && t.completed.is_some_and(|c| c <= f))
    };
    let mut must = initial.clone();
    let data_of = |op: &Op| match *op {
        Op::Write {
            sector,
            sectors,
            pattern,
        } => Some((sector, fill(pattern, sectors))),
        Op::Zeroes { sector, sectors } => Some((sector, vec![0; sectors as usize * SECTOR])),
        Op::Flush | Op::Read { .. } => None,
    };
    for t in trace.iter().filter(|t| certain(t)) {
        if let Some((sector, data)) = data_of(&t.op) {
            must[sector as usize * SECTOR..][..data.len()].copy_from_slice(&data);
        }
    }
    let mut sets: Vec<HashSet<Vec<u8>>> = must
        .chunks(SECTOR)
        .map(|c| HashSet::from([c.to_vec()]))
        .collect();
    for t in trace.iter().filter(|t| !certain(t)) {
        if let Some((sector, data)) = data_of(&t.op) {
            for (i, chunk) in data.chunks(SECTOR).enumerate() {
                sets[sector as usize + i].insert(chunk.to_vec());
            }
        }
    }
    sets
}

/// A QED image after a cut: qemu-img's rules find no corruption (leaked clusters at the
/// end are allowed: space the cut left allocated but unreferenced).
fn check_qed(storage: &MemStorage, name: &str, cut: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.qed");
    std::fs::write(&path, &storage.image.durable).unwrap();
    let image = open_qed(&path).unwrap();
    let analysis = analyze(&image).unwrap();
    assert!(
        analysis.problems.is_empty(),
        "cut {cut} ({name}): check found corruption: {:?}",
        analysis.problems
    );
}

fn verify(s: &Scenario, name: &str, storage: MemStorage, sets: &[HashSet<Vec<u8>>], cut: u64) {
    let size = s.options.virtual_size as usize;
    if s.qed.is_some() {
        check_qed(&storage, name, cut);
    }
    let mut contents = Vec::new();
    for writable in [true, false] {
        let mut driver =
            Driver::open(storage.clone(), driver_options(s, writable)).unwrap_or_else(|e| {
                panic!("cut {cut} ({name}): reopen (writable {writable}) failed: {e}")
            });
        let data = driver
            .read(0, size)
            .unwrap_or_else(|e| panic!("cut {cut} ({name}): read failed: {e}"));
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            if !sets[i].contains(chunk) && std::env::var_os("FVD_DEBUG").is_some() {
                eprintln!(
                    "sector {i}: got {:?}; allowed {:?}",
                    &chunk[..4],
                    sets[i].iter().map(|c| c[..4].to_vec()).collect::<Vec<_>>()
                );
            }
            assert!(sets[i].contains(chunk), "cut {cut} ({name}, writable {writable}): sector {i} holds data that was never written there or lost a flushed write");
        }
        if let Some(qed) = driver
            .engine()
            .info()
            .filter(|i| i.format == ImageFormat::Qed)
        {
            assert_eq!(
                qed.repaired_entries, 0,
                "cut {cut} ({name}): the open-time check had to repair table entries"
            );
        }
        if writable {
            // The repaired image must close cleanly and read the same once more.
            let (repaired, clean) = driver.close().unwrap();
            assert!(
                clean,
                "cut {cut} ({name}): close after recovery was not clean"
            );
            let mut again = Driver::open(repaired, driver_options(s, false)).unwrap();
            assert_eq!(
                again.read(0, size).unwrap(),
                data,
                "cut {cut} ({name}): content changed across a clean close"
            );
        }
        contents.push(data);
    }
    assert_eq!(
        contents[0], contents[1],
        "cut {cut} ({name}): read-only overlay and read-write replay disagree"
    );
}

fn sweep(s: &Scenario, every: u64) {
    let (_, _, total) = run(s, None);
    assert!(total > 10, "workload too small: {total} commands");
    eprintln!("sweeping {total} cut points every {every}");
    let mut cut = 0;
    while cut <= total {
        let (storage, trace, _) = run(s, Some(cut));
        let sets = allowed(s, &trace);
        if std::env::var_os("FVD_DEBUG").is_some() {
            for t in &trace {
                eprintln!(
                    "cut {cut}: {:?} submitted {} completed {:?} ok {}",
                    t.op, t.submitted, t.completed, t.ok
                );
            }
        }
        for (name, survivor) in survivors(&storage, cut) {
            verify(s, &name, survivor, &sets, cut);
        }
        cut += every;
    }
}

fn workload(seed: u64, sectors: u64, batches: usize) -> Vec<Vec<Op>> {
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    (0..batches)
        .map(|_| {
            let len = 1 + next(4) as usize;
            (0..len)
                .map(|_| match next(10) {
                    0 => Op::Flush,
                    1 => {
                        let sector = next(sectors - 1);
                        Op::Read {
                            sector,
                            sectors: 1 + next((sectors - sector).min(40)),
                        }
                    }
                    2 => {
                        let sector = next(sectors - 1);
                        Op::Zeroes {
                            sector,
                            sectors: 1 + next((sectors - sector).min(40)),
                        }
                    }
                    _ => {
                        let sector = next(sectors - 1);
                        Op::Write {
                            sector,
                            sectors: 1 + next((sectors - sector).min(40)),
                            pattern: next(255) as u8 + 1,
                        }
                    }
                })
                .collect()
        })
        .collect()
}

fn base(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 / 512) as u8 ^ 0x5a).collect()
}

const MIB: u64 = 1 << 20;

#[test]
fn flushed_writes_survive_a_cut_at_every_command_of_a_compact_cow_image() {
    let s = Scenario {
        options: CreateOptions {
            virtual_size: MIB,
            compact_image: true,
            chunk_size: Some(16384),
            storage_grow_unit: Some(65536),
            block_size: Some(4096),
            journal_size: Some(8192),
            base: Some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: 700 * 1024,
            }),
            ..Default::default()
        },
        base: Some(base(700 * 1024)),
        batches: workload(7, MIB / 512, 14),
        cache_pages: 4,
        background_copies: false,
        qed: None,
    };
    sweep(&s, 1);
}

#[test]
fn flushed_writes_survive_cuts_while_copy_on_read_and_prefetch_run() {
    let s = Scenario {
        options: CreateOptions {
            virtual_size: MIB,
            compact_image: true,
            chunk_size: Some(16384),
            storage_grow_unit: Some(65536),
            block_size: Some(4096),
            journal_size: Some(8192),
            base: Some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: 900 * 1024,
            }),
            ..Default::default()
        },
        base: Some(base(900 * 1024)),
        batches: workload(5, MIB / 512, 12),
        cache_pages: 6,
        background_copies: true,
        qed: None,
    };
    sweep(&s, 3);
}

#[test]
fn flushed_writes_survive_a_cut_at_every_command_of_a_compact_image_with_a_data_file() {
    let s = Scenario {
        options: CreateOptions {
            virtual_size: MIB,
            compact_image: true,
            chunk_size: Some(8192),
            storage_grow_unit: Some(8192),
            data_file: Some(b"data"),
            journal_size: Some(16384),
            ..Default::default()
        },
        base: None,
        batches: workload(11, MIB / 512, 12),
        cache_pages: 4,
        background_copies: false,
        qed: None,
    };
    sweep(&s, 1);
}

#[test]
fn flushed_writes_survive_a_cut_at_every_command_of_a_cow_image() {
    let s = Scenario {
        options: CreateOptions {
            virtual_size: MIB,
            block_size: Some(1536),
            base: Some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: MIB,
            }),
            ..Default::default()
        },
        base: Some(base(MIB as usize)),
        batches: workload(3, MIB / 512, 8),
        cache_pages: 64,
        background_copies: false,
        qed: None,
    };
    sweep(&s, 1);
}

#[test]
fn flushed_writes_survive_cuts_in_a_long_workload() {
    let s = Scenario {
        options: CreateOptions {
            virtual_size: 2 * MIB,
            compact_image: true,
            chunk_size: Some(4096),
            storage_grow_unit: Some(65536),
            block_size: Some(512),
            journal_size: Some(8192),
            base: Some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: 2 * MIB,
            }),
            ..Default::default()
        },
        base: Some(base(2 * MIB as usize)),
        batches: workload(99, 2 * MIB / 512, 80),
        cache_pages: 6,
        background_copies: false,
        qed: None,
    };
    sweep(&s, 37);
}

fn qed_scenario(base_len: Option<usize>, cluster_size: u64, table_size: u64) -> Scenario {
    Scenario {
        options: CreateOptions {
            virtual_size: MIB,
            ..Default::default()
        },
        qed: Some(QedCreateOptions {
            size: MIB,
            cluster_size,
            table_size,
            backing: base_len.map(|_| QedBacking {
                name: b"base",
                format: b"raw",
            }),
        }),
        base: base_len.map(base),
        batches: Vec::new(),
        cache_pages: 4,
        background_copies: false,
    }
}

#[test]
fn flushed_writes_survive_a_cut_at_every_command_of_a_qed_image_with_a_backing_file() {
    let s = Scenario {
        batches: workload(13, MIB / 512, 12),
        ..qed_scenario(Some(700 * 1024), 4096, 1)
    };
    sweep(&s, 1);
}

#[test]
fn flushed_writes_survive_a_cut_at_every_command_of_a_qed_image() {
    let s = Scenario {
        batches: workload(17, MIB / 512, 12),
        cache_pages: 6,
        ..qed_scenario(None, 8192, 2)
    };
    sweep(&s, 1);
}

#[test]
fn flushed_writes_survive_cuts_while_qed_copies_on_read() {
    let s = Scenario {
        batches: workload(19, MIB / 512, 16),
        background_copies: true,
        ..qed_scenario(Some(MIB as usize), 4096, 1)
    };
    sweep(&s, 2);
}
