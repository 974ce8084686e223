use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;

fn storage(options: &CreateOptions, base: Option<Vec<u8>>) -> MemStorage {
    let header = plan(options).unwrap();
    MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: options.data_file.map(|_| MemFile::new(Vec::new())),
        base: base.map(MemFile::new),
        writes: 0,
    }
}

#[test]
fn plain_image_round_trip() {
    let s = storage(
        &CreateOptions {
            virtual_size: 1 << 20,
            ..Default::default()
        },
        None,
    );
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    d.write(4096, &[0xab; 8192]).unwrap();
    assert_eq!(d.read(4096, 8192).unwrap(), vec![0xab; 8192]);
    assert_eq!(d.read(0, 4096).unwrap(), vec![0; 4096]);
    d.flush().unwrap();
    let (s, clean) = d.close().unwrap();
    assert!(clean);
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    assert_eq!(
        d.read(4096, 8192).unwrap(),
        vec![0xab; 8192],
        "data survives reopen"
    );
    assert_eq!(d.read(0, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(d.read(12288, 4096).unwrap(), vec![0; 4096]);
}

#[test]
fn compact_with_base_cow() {
    let base: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let opts = CreateOptions {
        virtual_size: 2 << 20,
        compact_image: true,
        chunk_size: Some(64 << 10),
        block_size: Some(4096),
        base: Some(BaseSpec {
            name: b"base.raw",
            format: b"raw",
            size: 1 << 20,
        }),
        ..Default::default()
    };
    let s = storage(&opts, Some(base.clone()));
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    assert_eq!(d.read(0, 8192).unwrap(), base[..8192]);
    d.write(1024, &[7; 512]).unwrap();
    let mut expect = base[..8192].to_vec();
    expect[1024..1536].fill(7);
    assert_eq!(d.read(0, 8192).unwrap(), expect);
    d.write_zeroes(8192, 4096).unwrap();
    assert_eq!(d.read(8192, 4096).unwrap(), vec![0; 4096]);
    d.flush().unwrap();
    d.write(65536 + 512, &[9; 512]).unwrap();
    let (s, clean) = d.close().unwrap();
    assert!(clean);
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    assert_eq!(d.read(0, 8192).unwrap(), expect);
    assert_eq!(d.read(8192, 4096).unwrap(), vec![0; 4096]);
    let mut e2 = base[65536..65536 + 4096].to_vec();
    e2[512..1024].fill(9);
    assert_eq!(d.read(65536, 4096).unwrap(), e2);
    assert_eq!(d.read(1 << 20, 4096).unwrap(), vec![0; 4096]);
}

fn compact_with_entry(entry: u32) -> MemStorage {
    let opts = CreateOptions {
        virtual_size: 8 << 20,
        compact_image: true,
        ..Default::default()
    };
    let mut s = storage(&opts, None);
    let table = plan(&opts).unwrap().table_offset.get() as usize;
    // Chunk 4's entry.
    s.image.current[table + 16..table + 20].copy_from_slice(&entry.to_le_bytes());
    s.image.durable = s.image.current.clone();
    s
}

#[test]
fn a_table_entry_past_the_storage_is_reported_corrupt() {
    use fvd_core::engine::{Corruption, RequestError};
    use fvd_host::host::driver::DriverError;
    let mut d = Driver::open(
        compact_with_entry(0x7fff_fff0),
        DriverOptions {
            writable: false,
            ..Default::default()
        },
    )
    .unwrap();
    let err = d.read(4 << 20, 4096).unwrap_err();
    assert!(
        matches!(
            err,
            DriverError::Request(RequestError::Corrupt(Corruption::BadTableEntry {
                chunk: 4,
                entry: 0x7fff_fff0
            }))
        ),
        "{err:?}"
    );
    // Healthy chunks around it still map and read.
    assert_eq!(d.read(2 << 20, 4096).unwrap(), vec![0; 4096]);
    let run = d.map(2 << 20, 6 << 20).unwrap();
    assert_eq!((run.offset, run.len), (2 << 20, 2 << 20));
}

#[test]
fn a_dirty_bit_in_a_later_entry_does_not_break_earlier_runs() {
    let mut d = Driver::open(
        compact_with_entry(0x8000_0001),
        DriverOptions {
            writable: false,
            ..Default::default()
        },
    )
    .unwrap();
    let run = d.map(2 << 20, 6 << 20).unwrap();
    assert_eq!(run.len, 2 << 20);
    assert!(d.read(4 << 20, 512).is_err());
}

#[test]
fn leaked_chunks_are_reused_first_zeroed_and_marked() {
    use fvd_core::engine::{FileId, Mapping};
    const CHUNK: u64 = 64 << 10;
    let opts = CreateOptions {
        virtual_size: 4 << 20,
        compact_image: true,
        chunk_size: Some(CHUNK),
        ..Default::default()
    };
    let header = plan(&opts).unwrap();
    let table = header.table_offset.get() as usize;
    let data_offset = header.data_offset.get();
    let mut d = Driver::open(storage(&opts, None), DriverOptions::default()).unwrap();
    d.write(0, &[1; CHUNK as usize]).unwrap(); // chunk 0 -> physical 0
    d.write(5 * CHUNK, &[5; CHUNK as usize]).unwrap(); // chunk 5 -> physical 1
    d.write(6 * CHUNK, &[6; 4096]).unwrap(); // chunk 6 -> physical 2
    let (mut s, clean) = d.close().unwrap();
    assert!(clean);
    // Lose chunk 5's mapping, as a crash before its journal record would: physical 1 leaks.
    s.image.current[table + 20..table + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    s.image.durable = s.image.current.clone();
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    assert_eq!(d.engine().leaked_chunks(), 1);
    d.write(9 * CHUNK + 4096, &[9; 512]).unwrap();
    let run = d.map(9 * CHUNK, CHUNK).unwrap();
    assert_eq!(
        run.mapping,
        Mapping::Data {
            file: FileId::Image,
            offset: data_offset + CHUNK
        },
        "the leaked chunk is reused first"
    );
    let mut expected = vec![0u8; CHUNK as usize];
    expected[4096..4608].fill(9);
    assert_eq!(
        d.read(9 * CHUNK, CHUNK as usize).unwrap(),
        expected,
        "a reused chunk's old data never shows"
    );
    assert_eq!(d.engine().leaked_chunks(), 0);
    let (s, _) = d.close().unwrap();
    let (raw, layout) =
        fvd_core::fvd::parse(&s.image.current, s.image.current.len() as u64).unwrap();
    assert!(layout.chunks_relocated && raw.chunks_relocated.get() == 1);
}

#[test]
fn metadata_is_committed_after_journal_clean_buf_period_without_a_flush() {
    let opts = CreateOptions {
        virtual_size: 4 << 20,
        compact_image: true,
        chunk_size: Some(65536),
        ..Default::default()
    };
    let mut s = storage(&opts, None);
    // journal_clean_buf_period = 250 ms (header offset 2180).
    s.image.current[2180..2188].copy_from_slice(&250u64.to_le_bytes());
    s.image.durable = s.image.current.clone();
    let mut d = Driver::open(s, DriverOptions::default()).unwrap();
    d.handle_timeout(1000).unwrap();
    assert_eq!(d.engine().poll_timeout(), None, "nothing to commit yet");
    d.write(0, &[3; 4096]).unwrap();
    assert_eq!(d.engine().poll_timeout(), Some(1250));
    let journal_writes = d.engine().stats().journal_writes;
    d.handle_timeout(1100).unwrap();
    assert_eq!(
        d.engine().stats().journal_writes,
        journal_writes,
        "not due yet"
    );
    d.handle_timeout(1250).unwrap();
    assert!(
        d.engine().stats().journal_writes > journal_writes,
        "due: journaled without a guest flush"
    );
    assert_eq!(d.engine().poll_timeout(), None);
    // A crash now keeps the mapping: the journal was flushed by the timed commit.
    let s = d.into_storage();
    let mut crashed = s.clone();
    crashed.image.current = s.image.after_cut(|_, _| false);
    crashed.image.durable = crashed.image.current.clone();
    crashed.image.pending.clear();
    let mut d = Driver::open(crashed, DriverOptions::default()).unwrap();
    assert_eq!(d.read(0, 4096).unwrap(), vec![3; 4096]);
}
