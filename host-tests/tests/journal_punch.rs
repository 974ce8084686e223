//! FORMAT.md §10.5: once the header naming a new epoch is durable every journal sector is
//! stale, and a clean close punches the sectors its session wrote. The journal of a cleanly
//! closed image reads as zeros (a hole on a real file), the image reopens with its data and
//! checks clean, and a power cut between the clean header and the punch (any part of the
//! punch lost) leaves an image that is just as clean: zero and stale sectors are both
//! ignored by replay, by the read-only overlay and by `check`.

mod common;

use common::{fvd_img, scratch};
use fvd_core::engine::FileId;
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_core::fvd::{parse, ImageLayout};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::hooked::{Hooked, Op};
use fvd_host::testing::memstore::{survivors, MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::io;
use std::os::unix::io::AsRawFd;

const CHUNK: u64 = 64 << 10;
const SIZE: u64 = 64 << 20;
/// Chunks written, each followed by a flush (one journal commit each).
const WRITTEN: u64 = 24;

/// A fresh compact image (its table changes go through the journal).
fn fresh() -> MemStorage {
    let header = plan(&CreateOptions {
        virtual_size: SIZE,
        compact_image: true,
        chunk_size: Some(CHUNK),
        journal_size: Some(1 << 20),
        storage_grow_unit: Some(CHUNK),
        ..Default::default()
    })
    .unwrap();
    MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: None,
        base: None,
        writes: 0,
    }
}

fn layout_of(image: &[u8]) -> ImageLayout {
    parse(image, image.len() as u64).unwrap().1
}

fn pattern(chunk: u64) -> Vec<u8> {
    vec![chunk as u8 + 1; 4096]
}

/// Writes the first 4 KiB of every chunk below `WRITTEN` with its pattern, each followed by
/// a flush.
fn write_chunks<S: fvd_host::host::storage::Storage>(driver: &mut Driver<S>) {
    for chunk in 0..WRITTEN {
        driver.write(chunk * CHUNK, &pattern(chunk)).unwrap();
        driver.flush().unwrap();
    }
}

/// Reopens `storage` (read-write, then read-only) and requires every chunk's pattern.
fn assert_data(storage: MemStorage, what: &str) -> MemStorage {
    let mut storage = storage;
    for writable in [false, true] {
        let options = DriverOptions {
            writable,
            ..DriverOptions::default()
        };
        let mut driver = Driver::open(storage, options).unwrap();
        for chunk in 0..WRITTEN {
            let got = driver.read(chunk * CHUNK, 4096).unwrap();
            assert_eq!(
                got,
                pattern(chunk),
                "{what}: chunk {chunk} (writable {writable})"
            );
        }
        let (back, clean) = driver.close().unwrap();
        assert!(
            !writable || clean,
            "{what}: the reopened image closes clean"
        );
        storage = back;
    }
    storage
}

/// `fvd-img check` of `image` written to a file: exit status and output.
fn check_file(image: &[u8]) -> (i32, String) {
    let dir = scratch();
    std::fs::write(dir.path().join("img.fvd"), image).unwrap();
    let run = fvd_img(dir.path(), &["check", "img.fvd"]);
    (run.code, run.stdout + &run.stderr)
}

/// Journal writes and zeroings of the image file, as `(offset, len, is_zeroing)`.
type Seen = Vec<(u64, u64, bool)>;

#[test]
fn a_clean_close_punches_every_journal_sector_its_session_wrote() {
    let storage = fresh();
    let journal = layout_of(&storage.image.current).journal.unwrap();
    let mut seen: Seen = Vec::new();
    let hooked = Hooked::new(storage, |op: Op| -> io::Result<()> {
        let (offset, len, zeroing) = match op {
            Op::Write {
                file: FileId::Image,
                offset,
                len,
            } => (offset, len as u64, false),
            Op::WriteZeroes {
                file: FileId::Image,
                offset,
                len,
            } => (offset, len, true),
            _ => return Ok(()),
        };
        if offset < journal.end() && offset + len > journal.offset {
            seen.push((offset, len, zeroing));
        }
        Ok(())
    });
    let mut driver = Driver::open(hooked, DriverOptions::default()).unwrap();
    write_chunks(&mut driver);
    let (hooked, clean) = driver.close().unwrap();
    assert!(clean);
    let storage = hooked.inner;
    let written_end = seen
        .iter()
        .filter(|s| !s.2)
        .map(|s| s.0 + s.1)
        .max()
        .expect("the session's flushes wrote journal sectors");
    let punch = seen.last().copied().unwrap();
    assert!(punch.2, "the last journal operation is the punch: {seen:?}");
    assert_eq!(punch.0, journal.offset);
    assert!(
        punch.0 + punch.1 >= written_end && punch.0 + punch.1 <= journal.end(),
        "the punch covers every sector written, inside the journal: {punch:?}, written to {written_end}"
    );
    let image = &storage.image.current;
    let layout = layout_of(image);
    assert!(layout.clean_shutdown);
    assert!(
        image[journal.offset as usize..journal.end() as usize]
            .iter()
            .all(|&b| b == 0),
        "the journal of a cleanly closed image reads as zeros"
    );
    let storage = assert_data(storage, "after the punch");
    let (code, out) = check_file(&storage.image.current);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_power_cut_between_the_clean_header_and_the_journal_punch_leaves_a_clean_image() {
    let mut driver = Driver::open(fresh(), DriverOptions::default()).unwrap();
    write_chunks(&mut driver);
    let (storage, clean) = driver.close().unwrap();
    assert!(clean);
    // The clean header is durable; only the punch is still pending (it needs no flush).
    let durable = &storage.image.durable;
    let layout = layout_of(durable);
    assert!(
        layout.clean_shutdown,
        "the clean header is durable before the punch"
    );
    let journal = layout.journal.unwrap();
    let stale_sectors = durable[journal.offset as usize..journal.end() as usize]
        .chunks(512)
        .filter(|s| s.iter().any(|&b| b != 0))
        .count();
    assert!(
        stale_sectors > 0,
        "stale sectors remain until the punch lands"
    );
    assert_eq!(storage.image.pending.len(), 1, "the punch alone is pending");
    let cuts = survivors(&storage, 0x5eed);
    assert!(cuts.len() > 4);
    for (what, cut) in cuts {
        let layout = layout_of(&cut.image.current);
        assert!(layout.clean_shutdown, "{what}: the header is clean");
        let cut = assert_data(cut, &what);
        let (code, out) = check_file(&cut.image.current);
        assert_eq!(code, 0, "{what}: check of the cut image: {out}");
        assert!(out.contains("No errors were found"), "{what}: {out}");
    }
}

#[test]
fn a_dirty_image_whose_stale_journal_sectors_were_partly_zeroed_replays_its_current_ones() {
    // Session 1 journals WRITTEN commits and is cut; session 2 replays them (moving the
    // epoch on), journals a few commits of its own and is cut too. Its journal: the
    // current epoch's sectors first, session 1's stale ones after. Zeroing every other
    // stale sector (a punch half done) changes nothing: zero and stale sectors are both
    // ignored by replay and by check.
    let mut driver = Driver::open(fresh(), DriverOptions::default()).unwrap();
    write_chunks(&mut driver);
    let cut = MemStorage {
        image: MemFile::new(driver.into_storage().image.durable),
        data: None,
        base: None,
        writes: 0,
    };
    let mut driver = Driver::open(cut, DriverOptions::default()).unwrap();
    let second: Vec<u8> = vec![0xee; 4096];
    for chunk in WRITTEN..WRITTEN + 3 {
        driver.write(chunk * CHUNK, &second).unwrap();
        driver.flush().unwrap();
    }
    let mut image = driver.into_storage().image.durable;
    let layout = layout_of(&image);
    assert!(
        !layout.clean_shutdown,
        "the second cut leaves the image dirty"
    );
    let journal = layout.journal.unwrap();
    let epochs: Vec<Option<u64>> = image[journal.offset as usize..journal.end() as usize]
        .chunks(512)
        .map(fvd_core::fvd::journal::SectorHeader::intact_epoch)
        .collect();
    let stale: Vec<usize> = (0..epochs.len())
        .filter(|&i| epochs[i].is_some_and(|e| e != layout.stable_journal_epoch))
        .collect();
    assert!(
        epochs.contains(&Some(layout.stable_journal_epoch)) && stale.len() >= 4,
        "the journal holds current and stale sectors: {epochs:?}"
    );
    for &i in stale.iter().step_by(2) {
        let at = journal.offset as usize + i * 512;
        image[at..at + 512].fill(0);
    }
    let (code, out) = check_file(&image);
    assert_eq!(code, 0, "zero journal sectors are no corruption: {out}");
    let storage = MemStorage {
        image: MemFile::new(image),
        data: None,
        base: None,
        writes: 0,
    };
    let mut storage = assert_data(storage, "replayed");
    let mut driver = Driver::open(storage, DriverOptions::default()).unwrap();
    for chunk in WRITTEN..WRITTEN + 3 {
        assert_eq!(driver.read(chunk * CHUNK, 4096).unwrap(), second);
    }
    (storage, _) = driver.close().unwrap();
    let (code, out) = check_file(&storage.image.current);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_journal_of_a_cleanly_closed_image_file_is_a_hole() {
    let dir = scratch();
    let run = fvd_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "fvd",
            "-o",
            "compact_image=on,chunk_size=65536",
            "img.fvd",
            "64M",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut args = vec!["io".to_string()];
    for i in 0..32 {
        args.push("-c".into());
        args.push(format!("write -q -P {} {}k 4k", i + 1, i * 64));
        args.push("-c".into());
        args.push("flush".into());
    }
    args.push("img.fvd".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = fvd_img(dir.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let path = dir.path().join("img.fvd");
    let bytes = std::fs::read(&path).unwrap();
    let journal = layout_of(&bytes).journal.unwrap();
    assert!(bytes[journal.offset as usize..journal.end() as usize]
        .iter()
        .all(|&b| b == 0));
    // No data anywhere in the journal region: SEEK_DATA from its start lands past it.
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: lseek only reads its integer arguments; the descriptor is owned by `file`.
    let next = unsafe { libc::lseek(file.as_raw_fd(), journal.offset as i64, libc::SEEK_DATA) };
    assert!(
        next < 0 || next as u64 >= journal.end(),
        "data at {next} inside the journal [{}, {})",
        journal.offset,
        journal.end()
    );
    let run = fvd_img(dir.path(), &["check", "img.fvd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = fvd_img(dir.path(), &["io", "-c", "read -P 32 1984k 4k", "img.fvd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("mismatch"), "{}", run.stdout);
}
