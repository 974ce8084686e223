//! The engine exercised inside `fvd-core` with no file at all: images held in byte
//! vectors, commands performed by a few lines of test host (`support`), for FVD plain,
//! FVD compact and QED — writes read back before and after a clean close and reopen.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod support;

use fvd_core::engine::{OpenOptions, Request};
use fvd_core::fvd::create::CreateOptions;
use support::*;

const M: u64 = 1 << 20;

fn round_trip(mut files: Files) {
    let mut engine = open_engine(&mut files, true, false);
    let writes: [(u64, u8, usize); 4] = [
        (0, 1, 4096),
        (512 * 1024, 2, 512),
        (M - 8192, 3, 8192),
        (70_000 / 512 * 512, 4, 1536),
    ];
    for (offset, byte, len) in writes {
        let request = Request::Write {
            offset,
            len: len as u64,
        };
        run_engine(&mut engine, &mut files, request, vec![byte; len]).unwrap();
    }
    let check = |engine: &mut fvd_core::engine::Engine<Vec<u8>, 64>, files: &mut Files| {
        for (offset, byte, len) in writes {
            let request = Request::Read {
                offset,
                len: len as u64,
            };
            let got = run_engine(engine, files, request, vec![0xEE; len]).unwrap();
            assert!(got.iter().all(|&b| b == byte), "data at {offset}");
        }
        let request = Request::Read {
            offset: 256 * 1024,
            len: 4096,
        };
        let got = run_engine(engine, files, request, vec![0xEE; 4096]).unwrap();
        assert!(got.iter().all(|&b| b == 0), "never written reads as zeros");
    };
    check(&mut engine, &mut files);
    assert!(close_engine(&mut engine, &mut files));
    let mut engine = open_engine(&mut files, false, false);
    check(&mut engine, &mut files);
}

#[test]
fn a_plain_fvd_image_keeps_what_was_written_across_reopen() {
    round_trip(Files {
        image: fvd_image(&CreateOptions {
            virtual_size: M,
            ..Default::default()
        }),
        ..Default::default()
    });
}

#[test]
fn a_compact_fvd_image_keeps_what_was_written_across_reopen() {
    round_trip(Files {
        image: fvd_image(&CreateOptions {
            virtual_size: M,
            compact_image: true,
            chunk_size: Some(64 * 1024),
            storage_grow_unit: Some(64 * 1024),
            journal_size: Some(8192),
            ..Default::default()
        }),
        ..Default::default()
    });
}

#[test]
fn a_qed_image_keeps_what_was_written_across_reopen() {
    round_trip(Files {
        image: qed_image(&small_qed(M, None)),
        ..Default::default()
    });
}

/// The journal region of a cleanly closed compact image after one session of flushed
/// writes, with the host's `release_stale_journal` as given.
fn journal_after_close(release_stale_journal: bool) -> Vec<u8> {
    let mut files = Files {
        image: fvd_image(&CreateOptions {
            virtual_size: M,
            compact_image: true,
            chunk_size: Some(64 * 1024),
            storage_grow_unit: Some(64 * 1024),
            journal_size: Some(8192),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = OpenOptions {
        release_stale_journal,
        ..options(&files, true, false)
    };
    let mut engine = open_engine_with(&mut files, options);
    for chunk in 0..4u64 {
        let request = Request::Write {
            offset: chunk * 64 * 1024,
            len: 4096,
        };
        run_engine(&mut engine, &mut files, request, vec![7; 4096]).unwrap();
        run_engine(&mut engine, &mut files, Request::Flush, Vec::new()).unwrap();
    }
    assert!(close_engine(&mut engine, &mut files));
    let (_, layout) = fvd_core::fvd::parse(&files.image, files.image.len() as u64).unwrap();
    let journal = layout.journal.unwrap();
    files.image[journal.offset as usize..][..journal.len as usize].to_vec()
}

#[test]
fn a_clean_close_releases_the_stale_journal_only_where_the_host_asks_for_it() {
    // A file host: the sectors the session wrote are zeroed (punched) at close.
    assert!(journal_after_close(true).iter().all(|&b| b == 0));
    // A host on raw media (the firmware) keeps them: stale, never replayed, no writes.
    assert!(journal_after_close(false).iter().any(|&b| b != 0));
}
