//! Power cuts during a commit: an overlay's local blocks are written into its FVD base
//! (what `fvd-img commit` does, through the base's engine), and the base's storage is cut
//! after every command. Reopened (read-write, replaying its journal, and read-only), the
//! base must hold, sector by sector, its old data or the overlay's, never anything else;
//! and everything once the commit's final flush completed.

use fvd_core::engine::{Mapping, Request};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::memstore::{survivors, MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;

const SIZE: u64 = 1 << 20;

fn fresh(options: &CreateOptions) -> MemStorage {
    MemStorage {
        image: MemFile::new(initial_metadata(&plan(options).unwrap())),
        data: None,
        base: None,
        writes: 0,
    }
}

fn base_options() -> CreateOptions<'static> {
    CreateOptions {
        virtual_size: SIZE,
        compact_image: true,
        chunk_size: Some(16384),
        storage_grow_unit: Some(65536),
        journal_size: Some(8192),
        ..Default::default()
    }
}

/// The base before the commit (some data of its own) and what it reads as.
fn old_base() -> (MemStorage, Vec<u8>) {
    let mut d = Driver::open(
        fresh(&base_options()),
        DriverOptions {
            cache_bytes: 4 * 512,
            ..Default::default()
        },
    )
    .unwrap();
    let mut content = vec![0u8; SIZE as usize];
    for (i, at) in [0u64, 100, 700, 1500].iter().enumerate() {
        let data = vec![0x10 + i as u8; 64 * 512];
        d.write(at * 512, &data).unwrap();
        content[(at * 512) as usize..][..data.len()].copy_from_slice(&data);
    }
    let (storage, _) = d.close().unwrap();
    (storage, content)
}

/// An overlay with local writes and zeroed ranges; returns its runs to commit and the
/// content the base should have after a complete commit.
fn overlay(old: &[u8]) -> (Vec<(u64, Vec<u8>)>, Vec<u8>) {
    let options = CreateOptions {
        virtual_size: SIZE,
        block_size: Some(4096),
        base: Some(BaseSpec {
            name: b"base",
            format: b"fvd",
            size: SIZE,
        }),
        ..Default::default()
    };
    let mut storage = fresh(&options);
    storage.base = Some(MemFile::new(old.to_vec()));
    let mut d = Driver::open(storage, DriverOptions::default()).unwrap();
    let mut expected = old.to_vec();
    for (i, (at, sectors)) in [(8u64, 40u64), (90, 30), (1200, 200), (1900, 48)]
        .iter()
        .enumerate()
    {
        let data = vec![0xA0 + i as u8; (*sectors * 512) as usize];
        d.write(at * 512, &data).unwrap();
        expected[(at * 512) as usize..][..data.len()].copy_from_slice(&data);
    }
    d.write_zeroes(720 * 512, 64 * 512).unwrap();
    expected[720 * 512..784 * 512].fill(0);
    // The commit's input: every run that is not still in the base, read through the overlay.
    let mut runs = Vec::new();
    let mut at = 0;
    while at < SIZE {
        let run = d.map(at, SIZE - at).unwrap();
        if run.mapping != Mapping::Base {
            runs.push((run.offset, d.read(run.offset, run.len as usize).unwrap()));
        }
        at += run.len;
    }
    (runs, expected)
}

/// Commits `runs` into the base, cutting after `cut` base commands. Returns the storage
/// left behind and whether the final flush completed.
fn commit(base: &MemStorage, runs: &[(u64, Vec<u8>)], cut: Option<u64>) -> (MemStorage, bool, u64) {
    let mut d = Driver::open(
        base.clone(),
        DriverOptions {
            cache_bytes: 4 * 512,
            ..Default::default()
        },
    )
    .unwrap();
    let start = d.commands_run;
    let mut requests: Vec<(Request, Vec<u8>)> = Vec::new();
    for (offset, data) in runs {
        for (i, piece) in data.chunks(64 * 1024).enumerate() {
            let offset = offset + i as u64 * 64 * 1024;
            requests.push((
                Request::Write {
                    offset,
                    len: piece.len() as u64,
                },
                piece.to_vec(),
            ));
        }
    }
    requests.push((Request::Flush, Vec::new()));
    let last = requests.len() - 1;
    for (n, (request, buffer)) in requests.into_iter().enumerate() {
        let id = d.submit(request, buffer).unwrap();
        loop {
            if let Some((result, _)) = d.take_result(id) {
                assert!(result.is_ok());
                if n == last {
                    let total = d.commands_run - start;
                    return (d.into_storage(), true, total);
                }
                break;
            }
            if cut.is_some_and(|c| d.commands_run - start >= c) {
                let total = d.commands_run - start;
                return (d.into_storage(), false, total);
            }
            assert!(d.step(), "stalled");
        }
    }
    unreachable!()
}

#[test]
fn a_power_cut_during_commit_leaves_old_or_new_data_in_the_base() {
    let (base, old) = old_base();
    let (runs, new) = overlay(&old);
    let (_, _, total) = commit(&base, &runs, None);
    assert!(
        total > 20,
        "commit too small to be interesting: {total} commands"
    );
    for cut in 0..=total {
        let (left, flushed, _) = commit(&base, &runs, Some(cut));
        for (name, survivor) in survivors(&left, cut) {
            for writable in [true, false] {
                let mut d = Driver::open(
                    survivor.clone(),
                    DriverOptions {
                        writable,
                        cache_bytes: 4 * 512,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("cut {cut} ({name}): reopen failed: {e}"));
                let data = d.read(0, SIZE as usize).unwrap();
                for (i, sector) in data.chunks(512).enumerate() {
                    let (o, n) = (&old[i * 512..][..512], &new[i * 512..][..512]);
                    assert!(sector == o || sector == n, "cut {cut} ({name}, writable {writable}): sector {i} is neither old nor committed data");
                    if flushed {
                        assert_eq!(
                            sector, n,
                            "cut {cut} ({name}): the commit was flushed but sector {i} is old"
                        );
                    }
                }
            }
        }
    }
}
