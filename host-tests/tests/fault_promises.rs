//! The engine's promises under storage faults, one rule per test, through the synchronous
//! driver on in-memory files (see `fault_sweep.rs` for the sweeps, `fault_flush.rs` for
//! failed flushes): an I/O error fails the request whose command failed and no other; a
//! full file system or a file size limit fails the writes that need new space and nothing
//! else; a base that vanishes fails what needs the base and nothing else, and prefetch over
//! it gives up instead of spinning; a storage that keeps failing fails requests and never
//! spins; after the fault clears the image closes clean, checks clean (or with leaks only)
//! and holds every acknowledged write.

mod fault_support;

use fault_support::{
    all, base_bytes, clear, close_and_check, crashed, fill, inject, open, read, read_all, setup,
    setup_sized, write, Kind,
};
use fvd_core::engine::{
    FileId, IoError, Mapping, PrefetchFailure, PrefetchMode, PrefetchState, RequestError,
};
use fvd_host::host::driver::DriverError;
use fvd_host::host::faults::{AfterShort, Errno, Fault, Kinds, Rule};

const K: u64 = 1024;

#[test]
fn an_eio_on_one_write_fails_that_request_only() {
    for kind in [Kind::Plain, Kind::Compact, Kind::Qed] {
        let s = setup(kind);
        let (mut d, _) = open(&s);
        // Four writes in flight and a read; the second write's data write fails. On the
        // compact and QED images it is the first write into a new chunk or cluster.
        let offsets = [0, 64 * K, 128 * K, 192 * K];
        // The tables that map them exist already (a QED L2 table serves them all).
        d.write(768 * K, &fill(9, 1)).unwrap();
        d.flush().unwrap();
        let mut requests: Vec<_> = offsets
            .iter()
            .enumerate()
            .map(|(i, &o)| write(o, fill(i as u8 + 1, 16)))
            .collect();
        requests.push(read(512 * K, 8 * K));
        let data_file = match kind {
            Kind::Plain => {
                let start = fvd_layout(&d).data_offset + 64 * K;
                Rule::from(0, Fault::Fail(Errno::Eio)).within(start..start + 8 * K)
            }
            // The first data write of the second request: requests are planned in order,
            // so its first write is the second write of the batch.
            _ => Rule::from(1, Fault::Fail(Errno::Eio)),
        };
        inject(&mut d, data_file.kinds(Kinds::WRITES).times(1));
        let outcomes = all(&mut d, requests);
        let failed: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].is_err())
            .collect();
        assert_eq!(failed.len(), 1, "{kind:?}: requests {failed:?} failed");
        let bad = failed[0];
        assert!(bad < 4, "{kind:?}: the read failed");
        assert_eq!(
            outcomes[bad].as_ref().err(),
            Some(&RequestError::Io(IoError::Failed))
        );
        let reason = d
            .request_error(RequestError::Io(IoError::Failed))
            .to_string();
        assert_eq!(reason, "Input/output error", "{kind:?}");
        // The guest retries once the device works again; a flush follows.
        clear(&mut d);
        d.write(offsets[bad], &fill(bad as u8 + 1, 16)).unwrap();
        d.flush().unwrap();
        let (_, content) = close_and_check(&s, d, &format!("{kind:?}"));
        for (i, &o) in offsets.iter().enumerate() {
            assert_eq!(
                content[o as usize..][..8192],
                fill(i as u8 + 1, 16)[..],
                "{kind:?}"
            );
        }
    }
}

#[test]
fn a_full_file_system_or_a_size_limit_fails_only_the_writes_that_need_new_space() {
    for (kind, errno, reason) in [
        (Kind::Compact, Errno::NoSpace, "No space left on device"),
        (Kind::Compact, Errno::TooLarge, "File too large"),
        (Kind::DataFile, Errno::NoSpace, "No space left on device"),
        (Kind::Qed, Errno::NoSpace, "No space left on device"),
        (Kind::Qed, Errno::TooLarge, "File too large"),
    ] {
        let label = format!("{kind:?} {errno:?}");
        let s = setup(kind);
        let (mut d, _) = open(&s);
        d.write(0, &fill(1, 8)).unwrap();
        d.flush().unwrap();
        inject(&mut d, Rule::from(0, Fault::NoGrowth(errno)));
        // Fill chunk after chunk (cluster after cluster) until the file must grow.
        let step = 64 * K;
        let mut failed_at = None;
        for i in 1..s.initial.len() as u64 / step {
            match d.write(i * step, &fill(i as u8, 8)) {
                Ok(()) => {}
                Err(DriverError::RequestIo { error, source }) => {
                    assert_eq!(error, RequestError::Io(IoError::NoSpace), "{label}");
                    assert_eq!(fvd_host::cli::error::io_reason(&source), reason, "{label}");
                    failed_at = Some(i);
                    break;
                }
                Err(e) => panic!("{label}: write {i} failed with {e}"),
            }
        }
        let failed_at = failed_at.unwrap_or_else(|| panic!("{label}: no write needed space"));
        // What is allocated stays writable and readable, and a flush still works.
        d.write(0, &fill(2, 8)).unwrap();
        assert_eq!(d.read(0, 4096).unwrap(), fill(2, 8), "{label}");
        d.flush().unwrap();
        // Space comes back: the write that failed goes through.
        clear(&mut d);
        d.write(failed_at * step, &fill(failed_at as u8, 8))
            .unwrap();
        d.flush().unwrap();
        let (_, content) = close_and_check(&s, d, &label);
        assert_eq!(content[..4096], fill(2, 8)[..], "{label}");
        for i in 1..=failed_at {
            assert_eq!(
                content[(i * step) as usize..][..4096],
                fill(i as u8, 8)[..],
                "{label}"
            );
        }
    }
}

#[test]
fn a_qed_l2_table_that_cannot_be_allocated_fails_the_write_and_leaves_the_image_consistent() {
    let s = setup(Kind::Qed);
    let (mut d, _) = open(&s);
    d.write(0, &fill(1, 8)).unwrap();
    // The second L2 table (from 2 MiB on) is appended at the end of the file: it cannot be.
    inject(&mut d, Rule::from(0, Fault::NoGrowth(Errno::NoSpace)));
    let outcome = d.write(3 << 20, &fill(3, 8));
    assert!(
        matches!(
            outcome,
            Err(DriverError::RequestIo {
                error: RequestError::Io(IoError::NoSpace),
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        d.map(2 << 20, 2 << 20).unwrap().mapping,
        Mapping::Unallocated
    );
    assert_eq!(d.read(3 << 20, 4096).unwrap(), vec![0; 4096]);
    d.flush().unwrap();
    clear(&mut d);
    d.write(3 << 20, &fill(3, 8)).unwrap();
    let (_, content) = close_and_check(&s, d, "qed");
    assert_eq!(content[3 << 20..][..4096], fill(3, 8)[..]);
    assert_eq!(content[..4096], fill(1, 8)[..]);
}

#[test]
fn a_vanished_base_fails_what_needs_the_base_and_nothing_else() {
    for kind in [Kind::Cow, Kind::Cor, Kind::QedBase] {
        let label = format!("{kind:?}");
        let s = setup(kind);
        let (mut d, _) = open(&s);
        d.write(0, &fill(1, 128)).unwrap();
        let fills = d.engine().stats().cor_fills_done;
        inject(
            &mut d,
            Rule::from(0, Fault::Fail(Errno::Eio)).on(FileId::Base),
        );
        // Local data reads; base data does not (and is not copied in).
        assert_eq!(d.read(0, 65536).unwrap(), fill(1, 128), "{label}");
        let base_read = d.read(256 * K, 4096);
        assert!(
            matches!(
                base_read,
                Err(DriverError::RequestIo {
                    error: RequestError::Io(_),
                    ..
                })
            ),
            "{label}: {base_read:?}"
        );
        assert_eq!(d.engine().stats().cor_fills_done, fills, "{label}");
        assert_eq!(
            d.map(256 * K, 4096).unwrap().mapping,
            Mapping::Base,
            "{label}"
        );
        // A write that must copy the rest of its block from the base fails; one that
        // covers whole blocks (clusters) does not need the base.
        assert!(d.write(320 * K + 512, &fill(5, 1)).is_err(), "{label}");
        d.write(384 * K, &fill(6, 128)).unwrap();
        d.flush().unwrap();
        clear(&mut d);
        assert_eq!(
            d.read(256 * K, 4096).unwrap(),
            s.initial[256 * K as usize..][..4096],
            "{label}"
        );
        let (_, content) = close_and_check(&s, d, &label);
        assert_eq!(
            content[384 * K as usize..][..65536],
            fill(6, 128)[..],
            "{label}"
        );
        assert_eq!(
            content[320 * K as usize..][..4096],
            s.initial[320 * K as usize..][..4096]
        );
    }
}

#[test]
fn prefetch_over_a_vanishing_base_ends_with_an_error_and_never_spins() {
    for (name, fault) in [
        ("vanished", Fault::Fail(Errno::Eio)),
        (
            "shrunk",
            Fault::ShortRead {
                bytes: 0,
                then: AfterShort::Eof,
            },
        ),
    ] {
        let mut s = setup_sized(Kind::Cow, 4 << 20);
        s.options.prefetch = PrefetchMode::Now {
            max_read_kib_s: Some(1024),
        };
        let (mut d, _) = open(&s);
        let mut now = 0;
        // Prefetch copies some blocks; then the base goes away.
        while d.engine().prefetch_progress().copied < 8 {
            now += 10;
            d.handle_timeout(now).unwrap();
        }
        inject(&mut d, Rule::from(0, fault).on(FileId::Base));
        let vanished = now;
        let state = loop {
            now += 50;
            d.handle_timeout(now).unwrap();
            let progress = d.engine().prefetch_progress();
            if matches!(progress.state, PrefetchState::Failed | PrefetchState::Done) {
                break progress;
            }
            // Failing reads are not a busy guest: no pauses of up to 30 s in between.
            assert_ne!(
                progress.state,
                PrefetchState::Paused,
                "{name}: paused at {now} ms"
            );
            // Three passes over 4 MiB at 1 MiB/s.
            assert!(now - vanished < 15_000, "{name}: prefetch did not give up");
        };
        assert_eq!(state.state, PrefetchState::Failed, "{name}");
        assert!(
            matches!(state.failure, Some(PrefetchFailure::Copy { .. })),
            "{name}: {:?}",
            state.failure
        );
        let os = d.take_os_error().expect("the storage's reason is kept");
        assert!(
            os.raw_os_error() == Some(libc::EIO) || os.kind() == std::io::ErrorKind::UnexpectedEof,
            "{name}: {os}"
        );
        // What was copied is right; the base is still needed for the rest.
        clear(&mut d);
        let (status, content) = close_and_check(&s, d, name);
        assert_eq!(status, 0, "{name}");
        assert_eq!(content, s.initial, "{name}: prefetch copied wrong data");
    }
}

#[test]
fn a_failed_journal_write_then_a_crash_leaves_a_journal_that_replays() {
    // 64 chunks of 16 KiB: the table ends inside its only page.
    let s = setup(Kind::Compact);
    let (mut d, shared) = open(&s);
    let journal = fvd_layout(&d).journal.unwrap();
    let journal = journal.offset..journal.offset + journal.len;
    let mut expect = s.initial.clone();
    for (round, fault) in [
        Fault::Fail(Errno::Eio),
        Fault::Torn {
            bytes: 512,
            errno: Errno::Eio,
        },
    ]
    .into_iter()
    .enumerate()
    {
        // New chunks: table entries to journal.
        let (a, b) = (round as u64 * 256 * K, round as u64 * 256 * K + 128 * K);
        d.write(a, &fill(1, 8)).unwrap();
        let rule = Rule::from(0, fault).on(FileId::Image).kinds(Kinds::WRITES);
        inject(&mut d, rule.within(journal.clone()).times(1));
        assert!(
            d.flush().is_err(),
            "{fault:?}: the journal write did not fail"
        );
        d.write(b, &fill(2, 8)).unwrap();
        d.flush().unwrap();
        expect[a as usize..][..4096].copy_from_slice(&fill(1, 8));
        expect[b as usize..][..4096].copy_from_slice(&fill(2, 8));
        // The retry journals the dirty pages whole: a crash must still replay.
        let content = read_all(&s, crashed(&shared), true, &format!("{fault:?}"));
        assert!(
            content == expect,
            "{fault:?}: flushed writes lost in the crash"
        );
    }
    close_and_check(&s, d, "compact");
}

#[test]
fn reads_that_come_back_short_are_completed_never_padded() {
    for kind in [Kind::Plain, Kind::Cow, Kind::QedBase] {
        let s = setup(kind);
        let (mut d, _) = open(&s);
        d.write(4 * K, &fill(4, 40)).unwrap();
        // Every read system call returns one sector, then reads on.
        let short = Fault::ShortRead {
            bytes: 512,
            then: AfterShort::Continue,
        };
        inject(&mut d, Rule::from(0, short).kinds(Kinds::READS));
        let mut expect = s.initial.clone();
        expect[4 * K as usize..][..20480].copy_from_slice(&fill(4, 40));
        assert_eq!(
            d.read(0, 512 * K as usize).unwrap(),
            expect[..512 * K as usize],
            "{kind:?}"
        );
        assert!(d.faults().unwrap().hits() > 0);
        let (_, content) = close_and_check(&s, d, &format!("{kind:?}"));
        assert_eq!(content, expect, "{kind:?}");
    }
}

#[test]
fn a_base_read_that_ends_early_is_an_error_not_zeros() {
    let s = setup(Kind::Cor);
    let (mut d, _) = open(&s);
    let short = Fault::ShortRead {
        bytes: 512,
        then: AfterShort::Eof,
    };
    inject(&mut d, Rule::from(0, short).on(FileId::Base).times(1));
    let outcome = d.read(128 * K, 8192);
    assert!(
        matches!(&outcome, Err(DriverError::RequestIo { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof),
        "{outcome:?}"
    );
    // Nothing was copied in from the short read.
    assert_eq!(d.map(128 * K, 8192).unwrap().mapping, Mapping::Base);
    assert_eq!(
        d.read(128 * K, 8192).unwrap(),
        base_bytes(s.initial.len() * 3 / 4)[128 * K as usize..][..8192]
    );
    close_and_check(&s, d, "cor");
}

#[test]
fn a_storage_whose_flushes_or_writes_keep_failing_fails_requests_and_never_spins() {
    // 64 MiB spread over many metadata pages, a 6-page cache: requests need pages evicted,
    // which needs commits and write-backs, which keep failing. Every request must end (a
    // runaway engine hits the command budget and fails the test).
    let flushes = Rule::from(0, Fault::Fail(Errno::Eio)).kinds(Kinds::FLUSHES);
    let writes = Rule::from(0, Fault::Fail(Errno::Eio)).kinds(Kinds::WRITES);
    for kind in [
        Kind::Compact,
        Kind::Cow,
        Kind::DataFile,
        Kind::Qed,
        Kind::QedBase,
    ] {
        for (name, rule) in [("flushes", &flushes), ("writes", &writes)] {
            let label = format!("{kind:?}, {name} failing");
            let s = setup_sized(kind, 64 << 20);
            let (mut d, _) = open(&s);
            let mut expect = s.initial.clone();
            // What a block may hold: a failed write leaves old or new data.
            let mut maybe: Vec<(u64, Vec<u8>)> = Vec::new();
            let block = |i: u64, stride: u64| (i * stride % 16000) * 4096;
            for i in 0..60 {
                d.write(block(i, 7919), &fill(i as u8, 8)).unwrap();
                expect[block(i, 7919) as usize..][..4096].copy_from_slice(&fill(i as u8, 8));
            }
            inject(&mut d, rule.clone());
            let mut failed = 0;
            for i in 0..300u64 {
                let at = block(i, 6007);
                let outcome = match i % 3 {
                    0 => d.read(at, 4096).map(drop),
                    _ => d.write(at, &fill((i as u8).wrapping_add(100), 8)),
                };
                match outcome {
                    Ok(()) if i % 3 != 0 => {
                        expect[at as usize..][..4096]
                            .copy_from_slice(&fill((i as u8).wrapping_add(100), 8));
                        maybe.retain(|(o, _)| *o != at);
                    }
                    Ok(()) => {}
                    // A request that needed room the failed write-back of an earlier one
                    // should have made (a QED copy-on-read fill's zero-cluster marker is
                    // metadata only) fails with the engine's I/O error: the storage's reason
                    // went to the request that met it first.
                    Err(
                        DriverError::RequestIo { .. }
                        | DriverError::Request(fvd_core::engine::RequestError::Io(_)),
                    ) => {
                        failed += 1;
                        if i % 3 != 0 {
                            maybe.push((at, fill((i as u8).wrapping_add(100), 8)));
                        }
                    }
                    Err(e) => panic!("{label}: request {i} ended with {e}"),
                }
            }
            assert!(failed > 0, "{label}: nothing failed");
            clear(&mut d);
            d.flush().unwrap();
            let (_, content) = close_and_check(&s, d, &label);
            for (i, got) in content.chunks(4096).enumerate() {
                let at = i as u64 * 4096;
                let want = &expect[i * 4096..][..4096];
                let new = maybe.iter().any(|(o, data)| *o == at && data[..] == *got);
                assert!(
                    got == want || new,
                    "{label}: block at {at} holds data never written"
                );
            }
        }
    }
}

/// The FVD layout of the image `d` serves.
fn fvd_layout<S: fvd_host::host::storage::Storage>(
    d: &fvd_host::host::driver::Driver<S>,
) -> fvd_core::fvd::ImageLayout {
    match d.engine().info().map(|i| i.layout) {
        Some(fvd_core::engine::Layout::Fvd(layout)) => layout,
        other => panic!("not an FVD image: {other:?}"),
    }
}
