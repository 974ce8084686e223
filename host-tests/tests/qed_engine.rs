//! The QED engine's own rules, pinned one by one: the zero-cluster marker never lets
//! backing data reappear (QEMU's QED does let it), the need-check bit's life (set before
//! the first metadata change, cleared after a quiet period or at close), the open-time
//! check and repair of an image left marked need-check, feature bits, and the file layout
//! (clusters and L2 tables appended at the end of the file).

use fvd_core::engine::{Corruption, FileId, ImageFormat, Mapping, RequestError, QUIET_MS};
use fvd_core::qed::{QedBacking, QedCreateOptions, QedHeader};
use fvd_host::host::driver::{Driver, DriverError, DriverOptions};
use fvd_host::testing::memstore::{MemFile, MemStorage};

const CLUSTER: u64 = 64 << 10;
const FEATURES_AT: usize = 16;
const NEED_CHECK: u64 = 1 << 1;

fn base_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 512) as u8 ^ 0xa5).collect()
}

fn image(size: u64, backing: bool) -> Vec<u8> {
    let plan = fvd_core::qed::plan(&QedCreateOptions {
        size,
        backing: backing.then_some(QedBacking {
            name: b"base",
            format: b"raw",
        }),
        ..Default::default()
    })
    .unwrap();
    let mut bytes = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut bytes).unwrap();
    bytes
}

fn storage(size: u64, base_len: Option<usize>) -> MemStorage {
    MemStorage {
        image: MemFile::new(image(size, base_len.is_some())),
        data: None,
        base: base_len.map(|n| MemFile::new(base_bytes(n))),
        writes: 0,
    }
}

fn open(storage: MemStorage, writable: bool) -> Driver<MemStorage> {
    Driver::open(
        storage,
        DriverOptions {
            writable,
            ..Default::default()
        },
    )
    .unwrap()
}

fn features(storage: &MemStorage) -> u64 {
    u64::from_le_bytes(
        storage.image.current[FEATURES_AT..FEATURES_AT + 8]
            .try_into()
            .unwrap(),
    )
}

#[test]
fn the_engine_probes_qed_by_its_magic() {
    let driver = open(storage(1 << 20, None), false);
    assert_eq!(driver.engine().format(), Some(ImageFormat::Qed));
    assert_eq!(driver.engine().virtual_size(), Some(1 << 20));
}

#[test]
fn a_partial_write_into_a_zero_cluster_leaves_the_rest_zero_not_backing_data() {
    let mut d = open(storage(1 << 20, Some(1 << 20)), true);
    // Whole clusters zeroed over a backing file become zero clusters (no data).
    d.write_zeroes(0, 2 * CLUSTER).unwrap();
    assert_eq!(d.map(0, 2 * CLUSTER).unwrap().mapping, Mapping::Zero);
    // QEMU 7.2..10 reads backing data around this write afterwards; we must read zeros.
    d.write(4096, &[0x28; 512]).unwrap();
    let data = d.read(0, 2 * CLUSTER as usize).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..4608].iter().all(|&b| b == 0x28));
    assert!(data[4608..].iter().all(|&b| b == 0));
    // The same after close and reopen.
    let (s, clean) = d.close().unwrap();
    assert!(clean);
    let mut d = open(s, false);
    let again = d.read(0, 2 * CLUSTER as usize).unwrap();
    assert_eq!(again, data);
}

#[test]
fn a_partial_write_over_backing_data_copies_the_rest_of_the_cluster() {
    let mut d = open(storage(1 << 20, Some(1 << 20)), true);
    d.write(CLUSTER + 512, &[0x77; 1024]).unwrap();
    let data = d.read(CLUSTER, CLUSTER as usize).unwrap();
    let base = base_bytes(2 * CLUSTER as usize);
    assert_eq!(data[..512], base[CLUSTER as usize..][..512]);
    assert!(data[512..1536].iter().all(|&b| b == 0x77));
    assert_eq!(data[1536..], base[CLUSTER as usize + 1536..]);
    // Write-zeroes of part of a cluster still in the backing file keeps the rest.
    d.write_zeroes(3 * CLUSTER + 4096, 4096).unwrap();
    let data = d.read(3 * CLUSTER, CLUSTER as usize).unwrap();
    assert_eq!(
        data[..4096],
        base_bytes(4 * CLUSTER as usize)[3 * CLUSTER as usize..][..4096]
    );
    assert!(data[4096..8192].iter().all(|&b| b == 0));
    // Past the backing file's end, unallocated clusters read as zeros.
    let mut short = open(storage(1 << 20, Some(1000)), false);
    let tail = short.read(0, 4096).unwrap();
    assert_eq!(tail[..1000], base_bytes(1000)[..]);
    assert!(tail[1000..].iter().all(|&b| b == 0));
}

#[test]
fn clusters_and_tables_are_appended_at_the_end_of_the_file() {
    let s = storage(8 << 20, None);
    let start = s.image.current.len() as u64;
    let mut d = open(s, true);
    d.write(5 * CLUSTER, &[1; 4096]).unwrap();
    d.write(2 * CLUSTER, &[2; 4096]).unwrap();
    let first = d.map(5 * CLUSTER, CLUSTER).unwrap();
    let second = d.map(2 * CLUSTER, CLUSTER).unwrap();
    // One L2 table (4 clusters) first, then the data clusters in allocation order.
    let table_len = 4 * CLUSTER;
    assert_eq!(
        first.mapping,
        Mapping::Data {
            file: FileId::Image,
            offset: start + table_len
        }
    );
    assert_eq!(
        second.mapping,
        Mapping::Data {
            file: FileId::Image,
            offset: start + table_len + CLUSTER
        }
    );
    let (s, _) = d.close().unwrap();
    assert_eq!(
        s.image.current.len() as u64,
        start + table_len + 2 * CLUSTER
    );
}

#[test]
fn need_check_is_set_before_the_first_change_and_cleared_after_a_quiet_period() {
    let mut d = open(storage(1 << 20, None), true);
    assert_eq!(features(&d.storage) & NEED_CHECK, 0);
    d.read(0, 4096).unwrap();
    assert_eq!(features(&d.storage) & NEED_CHECK, 0, "a read sets nothing");
    d.write(0, &[9; 4096]).unwrap();
    assert_ne!(features(&d.storage) & NEED_CHECK, 0);
    assert_ne!(
        d.storage.image.durable[FEATURES_AT] & NEED_CHECK as u8,
        0,
        "the bit is flushed before the first change goes out"
    );
    d.flush().unwrap();
    let deadline = d
        .engine()
        .poll_timeout()
        .expect("a deadline to clear need-check");
    d.handle_timeout(deadline - 1).unwrap();
    assert_ne!(
        features(&d.storage) & NEED_CHECK,
        0,
        "not before the quiet period"
    );
    d.handle_timeout(deadline).unwrap();
    assert_eq!(features(&d.storage) & NEED_CHECK, 0);
    assert!(deadline >= QUIET_MS);
    // Set again by the next change, cleared again by close.
    d.write(CLUSTER, &[3; 512]).unwrap();
    assert_ne!(features(&d.storage) & NEED_CHECK, 0);
    let (s, clean) = d.close().unwrap();
    assert!(clean);
    assert_eq!(features(&s) & NEED_CHECK, 0);
    assert_eq!(s.image.durable, s.image.current, "close flushed everything");
}

/// A closed image with one valid cluster and one L2 entry pointing past the end of the
/// file, marked need-check.
fn damaged() -> (MemStorage, u64) {
    let mut d = open(storage(1 << 20, None), true);
    d.write(0, &[0x42; 4096]).unwrap();
    d.write(CLUSTER, &[0x43; 4096]).unwrap();
    let Mapping::Data { offset, .. } = d.map(CLUSTER, CLUSTER).unwrap().mapping else {
        panic!("cluster 1 is allocated");
    };
    let (mut s, _) = d.close().unwrap();
    // Find the L2 entry holding `offset` and point it far past the end.
    let bytes = &mut s.image.current;
    let at = (0..bytes.len() - 8)
        .step_by(8)
        .find(|&i| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap()) == offset)
        .unwrap();
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let features = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) | NEED_CHECK;
    bytes[16..24].copy_from_slice(&features.to_le_bytes());
    s.image = MemFile::new(s.image.current.clone());
    (s, offset)
}

#[test]
fn a_read_only_open_of_a_need_check_image_reports_the_bad_entry_when_read() {
    let (s, _) = damaged();
    let mut d = open(s, false);
    assert_eq!(d.read(0, 4096).unwrap(), vec![0x42; 4096]);
    match d.read(CLUSTER, 4096) {
        Err(DriverError::Request(RequestError::Corrupt(Corruption::BadL2Entry {
            offset,
            entry,
        }))) => {
            assert_eq!(offset, CLUSTER);
            assert_eq!(entry, 1 << 40);
        }
        other => panic!("expected a corrupt-entry error, got {other:?}"),
    }
}

#[test]
fn a_writable_open_of_a_need_check_image_repairs_it_and_clears_the_bit() {
    let (s, _) = damaged();
    let d = open(s, true);
    assert_eq!(d.engine().info().unwrap().repaired_entries, 1);
    let mut d = d;
    assert_eq!(d.read(0, 4096).unwrap(), vec![0x42; 4096]);
    // The bad entry became unallocated: zeros (no backing file).
    assert_eq!(d.read(CLUSTER, 4096).unwrap(), vec![0; 4096]);
    let (s, clean) = d.close().unwrap();
    assert!(clean);
    assert_eq!(features(&s) & NEED_CHECK, 0);
    let d = open(s, true);
    assert_eq!(d.engine().info().unwrap().repaired_entries, 0);
}

#[test]
fn unknown_feature_bits_are_refused_or_cleared_as_the_spec_says() {
    // An unknown incompatible feature: refused.
    let mut s = storage(1 << 20, None);
    s.image.current[FEATURES_AT + 1] |= 0x80;
    s.image = MemFile::new(s.image.current.clone());
    match Driver::open(s, DriverOptions::default()) {
        Err(DriverError::Open(e)) => assert!(e.to_string().contains("feature"), "{e}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // An unknown auto-clear bit: cleared by a writable open, kept by a read-only one.
    let mut s = storage(1 << 20, None);
    s.image.current[32] = 0x10;
    s.image = MemFile::new(s.image.current.clone());
    let d = open(s.clone(), false);
    assert_eq!(d.into_storage().image.current[32], 0x10);
    let d = open(s, true);
    let s = d.into_storage();
    assert_eq!(s.image.current[32], 0);
    let header = QedHeader::view(&s.image.durable).unwrap();
    assert_eq!(
        header.autoclear_features.get(),
        0,
        "the cleared header is durable"
    );
}

/// Performs `command` on `storage`, with guest buffers in `buffers` (by request slot).
/// The bytes `len` bytes long at `from` (engine memory or a request's buffer).
fn bytes_at(
    engine: &fvd_core::engine::Engine<Vec<u8>>,
    buffers: &[Vec<u8>],
    from: fvd_core::engine::Buffer,
    len: usize,
) -> Vec<u8> {
    use fvd_core::engine::Buffer;
    match from {
        Buffer::Engine { offset: at } => engine.memory()[at..at + len].to_vec(),
        Buffer::Guest {
            request,
            offset: at,
        } => buffers[request.slot()][at..at + len].to_vec(),
    }
}

/// Puts `data` at `into` (engine memory or a request's buffer).
fn put_at(
    engine: &mut fvd_core::engine::Engine<Vec<u8>>,
    buffers: &mut [Vec<u8>],
    into: fvd_core::engine::Buffer,
    data: &[u8],
) {
    use fvd_core::engine::Buffer;
    match into {
        Buffer::Engine { offset: at } => {
            engine.memory_mut()[at..at + data.len()].copy_from_slice(data)
        }
        Buffer::Guest {
            request,
            offset: at,
        } => buffers[request.slot()][at..at + data.len()].copy_from_slice(data),
    }
}

fn perform(
    engine: &mut fvd_core::engine::Engine<Vec<u8>>,
    storage: &mut MemStorage,
    buffers: &mut [Vec<u8>],
    command: fvd_core::engine::Command,
) {
    use fvd_core::engine::{Buffer, Op};
    use fvd_host::host::storage::Storage;
    let file = command.file;
    match command.op {
        Op::Read { offset, len, into } => {
            let mut data = vec![0u8; len];
            storage.read_at(file, offset, &mut data).unwrap();
            put_at(engine, buffers, into, &data);
        }
        Op::Write { offset, len, from } => {
            let data = bytes_at(engine, buffers, from, len);
            storage.write_at(file, offset, &data).unwrap();
        }
        Op::ZeroBuffer { into, len } => {
            if let Buffer::Guest {
                request,
                offset: at,
            } = into
            {
                buffers[request.slot()][at..at + len].fill(0);
            }
        }
        Op::WriteZeroes { offset, len, unmap } => {
            storage.write_zeroes(file, offset, len, unmap).unwrap()
        }
        Op::Flush => storage.flush(file).unwrap(),
        Op::SetLength { len } => storage.set_len(file, len).unwrap(),
        // Copy-on-read hands the guest its part of a fill's cluster.
        Op::Copy { from, into, len } => {
            let data = bytes_at(engine, buffers, from, len);
            put_at(engine, buffers, into, &data);
        }
    }
    engine.complete(command.id, Ok(()));
}

/// The interleaving of seed 004 on QED: a guest read starts a copy-on-read fill; while
/// the fill's backing read is in flight, a guest write to another sector of the same
/// cluster completes; then the fill's read lands (and answers the read). The fill must
/// not write the cluster.
#[test]
fn a_copy_on_read_fill_never_overwrites_a_newer_guest_write() {
    use fvd_core::engine::{
        Engine, Event, FileId, Op, OpenOptions, PrefetchMode, Request, HEADER_AREA, SCRATCH_AREA,
    };
    let mut storage = storage(1 << 20, Some(1 << 20));
    let memory = vec![0u8; HEADER_AREA + SCRATCH_AREA + 64 * 512 + (1 << 20)];
    let image_len = storage.image.current.len() as u64;
    let mut engine: Engine<Vec<u8>> = Engine::open(
        memory,
        OpenOptions {
            writable: true,
            image_len,
            data_len: None,
            base_available: true,
            cache_bytes: 64 * 512,
            storage_zero_init: true,
            release_stale_journal: true,
            copy_on_read: Some(true),
            prefetch: PrefetchMode::Off,
        },
    );
    let mut buffers = vec![Vec::new(); 64];
    let run = |engine: &mut Engine<Vec<u8>>,
               storage: &mut MemStorage,
               buffers: &mut Vec<Vec<u8>>,
               hold: &mut Vec<fvd_core::engine::Command>| {
        while let Some(c) = engine.poll_command() {
            // Hold the fill's read of the whole cluster from the backing file.
            let fill_read = c.file == FileId::Base
                && matches!(c.op, Op::Read { len, into: fvd_core::engine::Buffer::Engine { .. }, .. } if len as u64 == CLUSTER);
            if fill_read {
                hold.push(c);
            } else {
                perform(engine, storage, buffers, c);
            }
        }
    };
    let mut held = Vec::new();
    run(&mut engine, &mut storage, &mut buffers, &mut held);
    assert_eq!(engine.poll_event(), Some(Event::Opened));
    assert!(engine.copy_on_read());
    let read = engine
        .submit(Request::Read {
            offset: 0,
            len: 512,
        })
        .unwrap();
    buffers[read.slot()] = vec![0; 512];
    run(&mut engine, &mut storage, &mut buffers, &mut held);
    assert_eq!(held.len(), 1, "the fill's backing read is in flight");
    let write = engine
        .submit(Request::Write {
            offset: 4096,
            len: 512,
        })
        .unwrap();
    buffers[write.slot()] = vec![0xee; 512];
    run(&mut engine, &mut storage, &mut buffers, &mut held);
    let mut completed = Vec::new();
    while let Some(e) = engine.poll_event() {
        completed.push(e);
    }
    // The read is answered from the fill's data, so it waits for the fill's read; the
    // write does not.
    assert_eq!(completed.len(), 1, "the write completed: {completed:?}");
    // Now the fill's read lands; whatever it does next must keep the guest's data.
    for c in held.drain(..) {
        perform(&mut engine, &mut storage, &mut buffers, c);
    }
    run(&mut engine, &mut storage, &mut buffers, &mut held);
    while let Some(e) = engine.poll_event() {
        completed.push(e);
    }
    assert_eq!(completed.len(), 2, "the read completed too: {completed:?}");
    assert_eq!(buffers[read.slot()][..], base_bytes(512)[..]);
    assert_eq!(engine.stats().cor_fills_done, 0);
    assert_eq!(engine.stats().cor_fills_cancelled, 1);
    engine.close();
    run(&mut engine, &mut storage, &mut buffers, &mut held);
    let mut d = open(storage, false);
    let data = d.read(0, CLUSTER as usize).unwrap();
    let base = base_bytes(CLUSTER as usize);
    assert_eq!(data[..4096], base[..4096]);
    assert_eq!(data[4096..4608], [0xee; 512]);
    assert_eq!(data[4608..], base[4608..]);
}

#[test]
fn copy_on_read_follows_the_header_bit_unless_overridden() {
    let mut s = storage(1 << 20, Some(1 << 20));
    // Compatible feature bit 0: copy on read by default (the 2011 RFC's flag).
    s.image.current[24] |= 1;
    s.image = MemFile::new(s.image.current.clone());
    let mut d = open(s.clone(), true);
    assert!(d.engine().copy_on_read());
    d.read(0, 4096).unwrap();
    // The fill runs in the background after the read completed.
    d.run_until_idle().unwrap();
    assert!(matches!(
        d.map(0, CLUSTER).unwrap().mapping,
        Mapping::Data { .. }
    ));
    assert_eq!(d.engine().stats().cor_fills_done, 1);
    let off = Driver::open(
        s,
        DriverOptions {
            copy_on_read: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!off.engine().copy_on_read());
    // Read-only opens never copy.
    let plain = open(storage(1 << 20, Some(1 << 20)), false);
    assert!(!plain.engine().copy_on_read());
}

mod arbitrary_tables {
    //! Any bytes in the tables and data of a QED image with a valid header: the engine
    //! answers every request with data or a typed error (never a panic), and the
    //! writable open's check leaves an image whose every read succeeds.
    use super::*;
    use proptest::prelude::*;

    /// A 1 MiB image, 4 KiB clusters, one-cluster tables, with `bytes` scattered over
    /// the L1 table and whatever follows it; `len` is the file length after the header.
    fn image_from(bytes: &[(u16, u64)], len: u32, backing: bool) -> MemStorage {
        let plan = fvd_core::qed::plan(&QedCreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            table_size: 1,
            backing: backing.then_some(QedBacking {
                name: b"base",
                format: b"raw",
            }),
        })
        .unwrap();
        let mut image = vec![0u8; 4096 + len as usize];
        plan.write_header_area(&mut image).unwrap();
        for &(slot, value) in bytes {
            // Entries land 8-byte aligned anywhere after the header cluster; values are
            // mostly plausible offsets (cluster multiples near the file), sometimes junk.
            let at = 4096 + (slot as usize * 8) % (len as usize).max(8);
            if at + 8 <= image.len() {
                image[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        MemStorage {
            image: MemFile::new(image),
            data: None,
            base: backing.then(|| MemFile::new(base_bytes(1 << 20))),
            writes: 0,
        }
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => (0u64..64).prop_map(|c| c * 4096),
            1 => Just(1u64),
            1 => any::<u64>(),
            1 => 0u64..64 * 4096,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn corrupt_tables_give_errors_never_panics(
            entries in prop::collection::vec((any::<u16>(), value()), 0..40),
            len in 4096u32..64 * 4096,
            backing in any::<bool>(),
            need_check in any::<bool>(),
        ) {
            let mut storage = image_from(&entries, len, backing);
            if need_check {
                storage.image.current[FEATURES_AT] |= NEED_CHECK as u8;
                storage.image = MemFile::new(storage.image.current.clone());
            }
            // Read-only: reads and maps either work or report corruption.
            if let Ok(mut d) = Driver::open(storage.clone(), DriverOptions { writable: false, ..Default::default() }) {
                for at in (0..(1u64 << 20)).step_by(64 << 10) {
                    match d.read(at, 64 << 10) {
                        Ok(_) | Err(DriverError::Request(RequestError::Corrupt(_))) => {}
                        Err(e) => prop_assert!(false, "read at {at}: {e}"),
                    }
                    let _ = d.map(at, 64 << 10);
                }
            }
            // Writable: writes either work or report corruption; after close a reopen
            // reads back what was written wherever the write succeeded.
            if let Ok(mut d) = Driver::open(storage, DriverOptions::default()) {
                let mut written = Vec::new();
                for (i, at) in (0..(1u64 << 20)).step_by(96 << 10).enumerate() {
                    let data = vec![i as u8 + 1; 8192];
                    match d.write(at, &data) {
                        Ok(()) => written.push((at, data)),
                        Err(DriverError::Request(RequestError::Corrupt(_))) => {}
                        Err(e) => prop_assert!(false, "write at {at}: {e}"),
                    }
                    let _ = d.write_zeroes(at + 16384, 8192);
                }
                if let Ok((s, _)) = d.close() {
                    if let Ok(mut again) = Driver::open(s, DriverOptions { writable: false, ..Default::default() }) {
                        for (at, data) in written {
                            if let Ok(back) = again.read(at, data.len()) {
                                prop_assert_eq!(back, data, "write at {} lost", at);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn qed_first_copy_on_read_pass_reads_each_base_cluster_once() {
    let size = 1u64 << 20;
    let mut d = Driver::open(
        storage(size, Some(size as usize)),
        DriverOptions {
            copy_on_read: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    // Reads of a cluster and a half: each cluster is met by two reads, and each is read
    // from the backing file once, by its fill, which also answers the guest.
    let piece = CLUSTER + CLUSTER / 2;
    let mut at = 0;
    while at < size {
        let len = piece.min(size - at);
        assert_eq!(
            d.read(at, len as usize).unwrap(),
            base_bytes(size as usize)[at as usize..][..len as usize]
        );
        at += len;
    }
    d.run_until_idle().unwrap();
    let stats = d.engine().stats();
    assert_eq!(stats.base_read_bytes, size, "{stats:?}");
    assert_eq!(stats.cor_fills_done, size / CLUSTER);
    // The second pass reads nothing from the backing file.
    d.read(0, size as usize).unwrap();
    assert_eq!(d.engine().stats().base_read_bytes, size);
}

#[test]
fn a_qed_fill_that_cannot_get_memory_now_runs_later_and_the_cluster_ends_up_local() {
    use fvd_core::engine::Request;
    let size = 1u64 << 20;
    // Bounce room for two clusters: one fill at a time. Eight small reads in eight
    // clusters at once: seven find no room.
    let mut d = Driver::open(
        storage(size, Some(size as usize)),
        DriverOptions {
            copy_on_read: Some(true),
            bounce_bytes: 2 * CLUSTER as usize,
            max_pending: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let base = base_bytes(size as usize);
    let ids: Vec<_> = (0..8u64)
        .map(|c| {
            let at = c * CLUSTER + 4096;
            let request = Request::Read {
                offset: at,
                len: 4096,
            };
            (at, d.submit(request, vec![0; 4096]).unwrap())
        })
        .collect();
    for (at, id) in ids {
        let (result, data) = d.wait(id).unwrap();
        result.unwrap();
        assert!(data == base[at as usize..][..4096]);
    }
    d.run_until_idle().unwrap();
    let stats = d.engine().stats();
    assert!(stats.cor_fills_deferred >= 1, "{stats:?}");
    assert_eq!(stats.cor_fills_dropped, 0);
    for c in 0..8 {
        assert!(
            matches!(
                d.map(c * CLUSTER, CLUSTER).unwrap().mapping,
                Mapping::Data { .. }
            ),
            "cluster {c} ended up local"
        );
    }
    let (s, _) = d.close().unwrap();
    let mut d = open(s, false);
    assert!(d.read(0, 8 * CLUSTER as usize).unwrap() == base[..8 * CLUSTER as usize]);
}

#[test]
fn a_qed_fill_of_an_all_zero_backing_cluster_records_a_zero_cluster_without_data() {
    let size = 8 * CLUSTER;
    // Backing data in clusters 0, 2 and 5; the rest all zero.
    let data = [0u64, 2, 5];
    let mut backing = vec![0u8; size as usize];
    for &c in &data {
        backing[(c * CLUSTER) as usize..][..CLUSTER as usize].fill(0x3c + c as u8);
    }
    let mut st = storage(size, Some(0));
    st.base = Some(MemFile::new(backing.clone()));
    let len_before = st.image.current.len() as u64;
    let mut d = Driver::open(
        st,
        DriverOptions {
            copy_on_read: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(d.read(0, size as usize).unwrap() == backing);
    d.run_until_idle().unwrap();
    let stats = d.engine().stats();
    assert_eq!(
        stats.fills_recorded_as_zeros,
        8 - data.len() as u64,
        "{stats:?}"
    );
    for c in 0..8 {
        let mapping = d.map(c * CLUSTER, CLUSTER).unwrap().mapping;
        if data.contains(&c) {
            assert!(
                matches!(mapping, Mapping::Data { .. }),
                "cluster {c}: {mapping:?}"
            );
        } else {
            assert_eq!(mapping, Mapping::Zero, "cluster {c}");
        }
    }
    let (mut s, _) = d.close().unwrap();
    // Data clusters and one L2 table were appended; no zero cluster took space.
    let grown = s.image.current.len() as u64 - len_before;
    let table = grown - data.len() as u64 * CLUSTER;
    assert!(table <= 4 * CLUSTER, "grew {grown} bytes");
    // Every cluster is now the image's own: other backing bytes change nothing.
    s.base = Some(MemFile::new(vec![0xee; size as usize]));
    let mut d = open(s, false);
    assert!(d.read(0, size as usize).unwrap() == backing);
}
