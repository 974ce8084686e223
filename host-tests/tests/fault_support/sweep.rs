//! The fault sweeps: a workload of concurrent requests, run with one fault at every
//! command in turn, each run checked against every promise (see `fault_sweep.rs`).

use super::{check, fill, read_all, setup, Kind, Setup, Shared, COMMAND_BUDGET, SECTOR};
use fvd_core::engine::{FileId, OpenError, Request, RequestError, RequestId};
use fvd_host::host::driver::{Driver, DriverError};
use fvd_host::host::faults::{FaultPlan, Rule};
use fvd_host::testing::memstore::{MemFile, MemStorage};
use std::collections::HashSet;

/// One guest request of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
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

impl Op {
    fn request(self) -> (Request, Vec<u8>) {
        match self {
            Op::Read { sector, sectors } => (
                Request::Read {
                    offset: sector * 512,
                    len: sectors * 512,
                },
                vec![0; sectors as usize * SECTOR],
            ),
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
        }
    }

    /// The sector and bytes a write-like op stores.
    fn stores(self) -> Option<(u64, Vec<u8>)> {
        match self {
            Op::Write {
                sector,
                sectors,
                pattern,
            } => Some((sector, fill(pattern, sectors))),
            Op::Zeroes { sector, sectors } => Some((sector, vec![0; sectors as usize * SECTOR])),
            Op::Read { .. } | Op::Flush => None,
        }
    }
}

/// `batches` batches of one to four requests over `size` bytes, from `seed`.
pub fn workload(seed: u64, size: u64, batches: usize) -> Vec<Vec<Op>> {
    let sectors = size / 512;
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
                .map(|_| {
                    let sector = next(sectors - 1);
                    let n = 1 + next((sectors - sector).min(40));
                    match next(10) {
                        0 => Op::Flush,
                        1 | 2 => Op::Read { sector, sectors: n },
                        3 => Op::Zeroes { sector, sectors: n },
                        _ => Op::Write {
                            sector,
                            sectors: n,
                            pattern: next(255) as u8 + 1,
                        },
                    }
                })
                .collect()
        })
        .collect()
}

/// One submitted request: when (in commands performed) it was submitted and completed.
#[derive(Clone, Debug)]
pub struct Trace {
    pub op: Op,
    pub batch: usize,
    pub id: RequestId,
    pub submitted: u64,
    pub completed: u64,
    pub result: Result<(), RequestError>,
    pub data: Vec<u8>,
}

/// What one run did.
pub struct Outcome {
    pub trace: Vec<Trace>,
    /// The plan as the run left it.
    pub plan: FaultPlan,
    /// Requests whose own data a faulted command carried.
    pub faulted: Vec<RequestId>,
    /// The batch during which the first fault hit.
    pub fault_batch: Option<usize>,
    /// The files right after the run, before the fault cleared.
    pub at_end: MemStorage,
    /// The files after the fault cleared and the image was closed.
    pub closed: MemStorage,
    pub base_changes: u64,
    /// The open failed (with this error) because of the fault.
    pub open_failed: Option<String>,
    /// `fvd-img check` after the clean close: 0 clean, 3 leaks only.
    pub check: u8,
}

/// Runs `batches` on `s` with `plan`; then clears the fault, flushes and closes (both
/// must succeed).
pub fn run(s: &Setup, batches: &[Vec<Op>], plan: FaultPlan, label: &str) -> Outcome {
    let shared = Shared::new(s.storage.clone());
    let mut driver = match Driver::open_with_faults(shared.clone(), s.options, Some(plan)) {
        Ok(driver) => driver,
        Err(e) => {
            assert!(
                matches!(
                    e,
                    DriverError::OpenIo { .. } | DriverError::Open(OpenError::Io(_))
                ),
                "{label}: open failed with {e:?}, not an I/O error"
            );
            let at_end = shared.storage();
            // The fault clears: the image opens and closes cleanly.
            let reopened = Driver::open(shared.clone(), s.options)
                .unwrap_or_else(|e| panic!("{label}: reopen after a failed open: {e}"));
            reopened
                .close()
                .unwrap_or_else(|e| panic!("{label}: close after a failed open: {e}"));
            return Outcome {
                trace: Vec::new(),
                plan: FaultPlan::new(),
                faulted: Vec::new(),
                fault_batch: Some(0),
                at_end,
                closed: shared.storage(),
                base_changes: shared.base_changes(),
                open_failed: Some(e.to_string()),
                check: 0,
            };
        }
    };
    driver.limit_commands(COMMAND_BUDGET);
    let mut trace = Vec::new();
    let mut fault_batch = None;
    for (batch, ops) in batches.iter().enumerate() {
        let mut waiting = Vec::new();
        for &op in ops {
            let (request, buffer) = op.request();
            let submitted = driver.commands_run;
            let id = driver
                .submit(request, buffer)
                .unwrap_or_else(|e| panic!("{label}: submit {op:?}: {e}"));
            waiting.push((op, id, submitted));
        }
        while !waiting.is_empty() {
            assert!(
                driver.step(),
                "{label}: the engine stalled (or ran past its command budget) with {} requests waiting",
                waiting.len()
            );
            waiting.retain(|&(op, id, submitted)| match driver.take_result(id) {
                Some((result, data)) => {
                    trace.push(Trace {
                        op,
                        batch,
                        id,
                        submitted,
                        completed: driver.commands_run,
                        result: result.map(drop),
                        data,
                    });
                    false
                }
                None => true,
            });
        }
        if fault_batch.is_none() && driver.faults().is_some_and(|p| p.hits() > 0) {
            fault_batch = Some(batch);
        }
    }
    let at_end = shared.storage();
    let plan = driver.faults().cloned().unwrap_or_default();
    let faulted = driver.faulted_requests().to_vec();
    driver.set_faults(None);
    driver
        .flush()
        .unwrap_or_else(|e| panic!("{label}: a flush after the fault cleared failed: {e}"));
    let (_, clean) = driver
        .close()
        .unwrap_or_else(|e| panic!("{label}: close after the fault cleared failed: {e}"));
    assert!(
        clean,
        "{label}: close after the fault cleared was not clean"
    );
    Outcome {
        trace,
        plan,
        faulted,
        fault_batch,
        at_end,
        closed: shared.storage(),
        base_changes: shared.base_changes(),
        open_failed: None,
        check: 0,
    }
}

/// Per-sector contents allowed after a run: `certain(t)` says which successful writes
/// must be there; failed writes (and writes not certain) may have left old or new data.
fn allowed(s: &Setup, trace: &[Trace], certain: impl Fn(&Trace) -> bool) -> Vec<HashSet<Vec<u8>>> {
    let mut sets: Vec<HashSet<Vec<u8>>> = s
        .initial
        .chunks(SECTOR)
        .map(|c| HashSet::from([c.to_vec()]))
        .collect();
    // In completion order: a later certain write replaces everything before it.
    let mut ordered: Vec<&Trace> = trace.iter().collect();
    ordered.sort_by_key(|t| (t.completed, t.submitted));
    for t in ordered {
        let Some((sector, bytes)) = t.op.stores() else {
            continue;
        };
        for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
            let set = &mut sets[sector as usize + i];
            if t.result.is_ok() && certain(t) {
                set.clear();
            }
            set.insert(chunk.to_vec());
        }
    }
    sets
}

fn assert_contents(label: &str, what: &str, data: &[u8], sets: &[HashSet<Vec<u8>>]) {
    for (i, chunk) in data.chunks(SECTOR).enumerate() {
        assert!(
            sets[i].contains(chunk),
            "{label}: {what}: sector {i} holds data that was never written there, or lost an acknowledged write"
        );
    }
}

/// Asserts every promise for one run with `rule`.
pub fn verify(s: &Setup, batches: &[Vec<Op>], rule: Rule, label: &str) -> Outcome {
    let one_shot = rule.times == Some(1);
    let harmless = matches!(
        rule.fault,
        fvd_host::host::faults::Fault::ShortRead {
            then: fvd_host::host::faults::AfterShort::Continue,
            ..
        }
    );
    let mut o = run(s, batches, FaultPlan::with(rule), label);
    if std::env::var_os("FVD_DEBUG").is_some() {
        eprintln!("{label}: injected {:?}", o.plan.injected());
        for t in &o.trace {
            eprintln!(
                "  batch {} {:?} submitted {} completed {} {:?}",
                t.batch, t.op, t.submitted, t.completed, t.result
            );
        }
    }
    let hit = o.plan.hits() > 0 || o.open_failed.is_some();
    for t in &o.trace {
        if let Err(e) = t.result {
            assert!(
                matches!(e, RequestError::Io(_)),
                "{label}: {:?} failed with {e:?}, not an I/O error",
                t.op
            );
            assert!(
                hit && !harmless,
                "{label}: {:?} failed with no fault: {e:?}",
                t.op
            );
            // Requests after the fault's batch succeed, but for flushes: the first commit
            // after a failed metadata write reports it.
            let first_flush_after = o
                .trace
                .iter()
                .filter(|u| u.op == Op::Flush && Some(u.batch) > o.fault_batch)
                .map(|u| u.batch)
                .min();
            assert!(
                !one_shot
                    || Some(t.batch) <= o.fault_batch
                    || (t.op == Op::Flush && Some(t.batch) == first_flush_after),
                "{label}: {:?} in batch {} failed, after the one-shot fault in batch {:?}",
                t.op,
                t.batch,
                o.fault_batch
            );
        }
    }
    if one_shot && !harmless {
        if let Some(&hit_request) = o.faulted.first() {
            // The fault hit a command carrying one request's own data: that request,
            // and no other, fails.
            for t in &o.trace {
                let this = t.id == hit_request && t.batch == o.fault_batch.unwrap_or(usize::MAX);
                assert_eq!(
                    t.result.is_err(),
                    this,
                    "{label}: the fault hit the data of one request; {:?} (batch {}) {}",
                    t.op,
                    t.batch,
                    if this { "succeeded" } else { "failed as well" }
                );
            }
        }
    }
    // Reads see, per sector, what any write so far could have left there.
    let all = allowed(s, &o.trace, |_| false);
    for t in o.trace.iter().filter(|t| t.result.is_ok()) {
        if let Op::Read { sector, .. } = t.op {
            let sets = &all[sector as usize..];
            assert_contents(label, &format!("read of {:?}", t.op), &t.data, sets);
        }
    }
    assert_eq!(o.base_changes, 0, "{label}: the base was written");
    assert_eq!(
        o.closed.base.as_ref().map(|b| &b.current),
        s.storage.base.as_ref().map(|b| &b.current),
        "{label}: the base changed"
    );
    // A crash at the end of the run: what was flushed survives.
    let last_flush = o
        .trace
        .iter()
        .filter(|t| t.op == Op::Flush && t.result.is_ok())
        .map(|t| t.submitted)
        .max();
    let crash = MemStorage {
        image: MemFile::new(o.at_end.image.durable.clone()),
        data: o
            .at_end
            .data
            .as_ref()
            .map(|d| MemFile::new(d.durable.clone())),
        base: o.at_end.base.clone(),
        writes: 0,
    };
    if std::env::var_os("FVD_DEBUG").is_some() && !matches!(s.kind, Kind::Qed | Kind::QedBase) {
        let img = &crash.image.current;
        let (h, layout) = fvd_core::fvd::parse(img, img.len() as u64).unwrap();
        let j = layout.journal.unwrap();
        let epoch = h.stable_journal_epoch.get();
        eprintln!(
            "epoch {epoch} journal at {} table at {:?}",
            j.offset, layout.table
        );
        for i in 0..(j.len / 512) {
            let at = (j.offset + i * 512) as usize;
            let sector = &img[at..at + 512];
            match fvd_core::fvd::journal::VerifiedSector::verify(sector, epoch, i) {
                Ok(v) => {
                    for r in v.records() {
                        eprintln!("sector {i}: {r:?}");
                    }
                }
                Err(e) => {
                    eprintln!("sector {i}: {e:?}");
                    break;
                }
            }
        }
    }
    let sets = allowed(s, &o.trace, |t| {
        last_flush.is_some_and(|f| t.completed <= f)
    });
    let data = read_all(s, crash, true, label);
    assert_contents(label, "after a crash", &data, &sets);
    // The clean close: check finds at most leaks; every acknowledged write is there.
    o.check = check(s, &o.closed, label);
    let sets = allowed(s, &o.trace, |_| true);
    let data = read_all(s, o.closed.clone(), false, label);
    assert_contents(label, "after the clean close", &data, &sets);
    o
}

/// Runs the workload from `seed` on a `kind` image with a fault at every command in turn
/// (`fault_at(n)`), checking every promise; prints how many points ran and hit.
pub fn sweep(kind: Kind, seed: u64, fault_at: impl Fn(u64, Kind) -> Rule) {
    let s = setup(kind);
    let batches = workload(seed, kind.size(), 12);
    let clean = run(&s, &batches, FaultPlan::new(), "no fault");
    assert!(
        clean.trace.iter().all(|t| t.result.is_ok()),
        "requests failed without a fault"
    );
    let total = clean.plan.commands();
    assert!(total > 20, "workload too small: {total} commands");
    let only: Option<u64> = std::env::var("FVD_FAULT_AT")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut tally: Vec<(&'static str, Tally)> = Vec::new();
    for n in (0..=total).filter(|n| only.is_none_or(|o| o == *n)) {
        let rule = fault_at(n, kind);
        let name = fault_name(&rule);
        let label = format!("{kind:?}, fault {:?} at command {n}", rule.fault);
        let o = verify(&s, &batches, rule, &label);
        let row = match tally.iter().position(|(k, _)| *k == name) {
            Some(i) => &mut tally[i].1,
            None => {
                tally.push((name, Tally::default()));
                &mut tally.last_mut().expect("just pushed").1
            }
        };
        row.add(&o);
    }
    // One line per fault: the figures RELIABILITY.md quotes.
    for (name, t) in &tally {
        eprintln!(
            "| {kind:?} | {name} | {} | {} | {} | {}/{}/{} | {} | {} |",
            t.points,
            t.hit,
            t.open_failed,
            t.failed_reads,
            t.failed_writes,
            t.failed_flushes,
            t.check_clean,
            t.check_leaks
        );
    }
}

/// A short name for the fault a rule injects.
fn fault_name(rule: &Rule) -> &'static str {
    use fvd_host::host::faults::{AfterShort, Errno, Fault};
    let once = rule.times == Some(1);
    match rule.fault {
        Fault::Fail(Errno::Eio) if rule.file == Some(FileId::Base) && !once => {
            "base vanishes (EIO on every base read from N on)"
        }
        Fault::Fail(_) => "EIO, no effect",
        Fault::FailAfterEffect(_) => "EIO after the effect",
        Fault::Torn { .. } => "torn write (first sector lands), EIO",
        Fault::NoGrowth(Errno::NoSpace) => "ENOSPC: files cannot grow from N on",
        Fault::NoGrowth(_) => "EFBIG: files cannot grow from N on",
        Fault::ShortRead {
            then: AfterShort::Eof,
            ..
        } => "base read ends early (short read, then EOF)",
        Fault::ShortRead {
            then: AfterShort::Fail(_),
            ..
        } => "short read, then EIO",
        Fault::ShortRead { .. } => "short read, then the rest",
        Fault::Delay { .. } => "delayed, then performed",
    }
}

/// What the injection points of one fault did.
#[derive(Default)]
struct Tally {
    points: usize,
    hit: usize,
    open_failed: usize,
    failed_reads: usize,
    failed_writes: usize,
    failed_flushes: usize,
    check_clean: usize,
    check_leaks: usize,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.points += 1;
        self.hit += usize::from(o.plan.hits() > 0 || o.open_failed.is_some());
        self.open_failed += usize::from(o.open_failed.is_some());
        for t in o.trace.iter().filter(|t| t.result.is_err()) {
            match t.op {
                Op::Read { .. } => self.failed_reads += 1,
                Op::Write { .. } | Op::Zeroes { .. } => self.failed_writes += 1,
                Op::Flush => self.failed_flushes += 1,
            }
        }
        match o.check {
            0 => self.check_clean += 1,
            _ => self.check_leaks += 1,
        }
    }
}
