//! A read-only open of an image left dirty (a crash after flushes) must show what the
//! journal says without writing, and without a journal pass per metadata page: only the
//! pages the journal touches are overlaid (the hostile-input issue, bug 9).

use fvd_core::engine::{FileId, Mapping};
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::testing::hooked::{Hook, Hooked, Op};
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::io;

const CHUNK: u64 = 64 << 10;
const SIZE: u64 = 512 << 20;

/// Counts the bytes read from a range of the image file.
struct RangeReads {
    range: (u64, u64),
    bytes: u64,
}

impl Hook for RangeReads {
    fn before(&mut self, op: Op) -> io::Result<()> {
        if let Op::Read {
            file: FileId::Image,
            offset,
            len,
        } = op
        {
            if offset < self.range.1 && offset + len as u64 > self.range.0 {
                self.bytes += len as u64;
            }
        }
        Ok(())
    }
}

/// A 512 MiB compact image whose first `written` chunks (all mapped by the first table
/// page) were each written and flushed, then the power was cut: clean_shutdown is 0 and
/// the mappings live only in the journal, one journal sector per flush.
fn dirty_image(written: u64) -> MemStorage {
    let header = plan(&CreateOptions {
        virtual_size: SIZE,
        compact_image: true,
        chunk_size: Some(CHUNK),
        journal_size: Some(1 << 20),
        storage_grow_unit: Some(CHUNK),
        ..Default::default()
    })
    .unwrap();
    let storage = MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: None,
        base: None,
        writes: 0,
    };
    let mut driver = Driver::open(storage, DriverOptions::default()).unwrap();
    for chunk in 0..written {
        driver
            .write(chunk * CHUNK, &[chunk as u8 + 1; 4096])
            .unwrap();
        driver.flush().unwrap();
    }
    let storage = driver.into_storage();
    MemStorage {
        image: MemFile::new(storage.image.durable.clone()),
        data: None,
        base: None,
        writes: 0,
    }
}

#[test]
fn a_read_only_open_of_a_dirty_image_reads_the_journal_only_for_pages_it_touches() {
    const WRITTEN: u64 = 100;
    let storage = dirty_image(WRITTEN);
    let image = storage.image.durable.clone();
    let (_, layout) = fvd_core::fvd::parse(&image, image.len() as u64).unwrap();
    assert!(!layout.clean_shutdown, "the cut must leave the image dirty");
    let journal = layout.journal.unwrap();
    let counting = Hooked::new(
        storage,
        RangeReads {
            range: (journal.offset, journal.end()),
            bytes: 0,
        },
    );
    let read_only = DriverOptions {
        writable: false,
        cache_bytes: 4 * 512,
        ..DriverOptions::default()
    };
    let mut driver = Driver::open(counting, read_only).unwrap();
    // Map the whole disk, page by page through a four-page cache.
    let mut offset = 0;
    let mut data_bytes = 0;
    while offset < SIZE {
        let run = driver.map(offset, SIZE - offset).unwrap();
        if matches!(run.mapping, Mapping::Data { .. }) {
            data_bytes += run.len;
        }
        offset += run.len;
    }
    assert_eq!(
        data_bytes,
        WRITTEN * CHUNK,
        "every mapping in the journal is visible"
    );
    for chunk in 0..WRITTEN {
        let at = chunk * CHUNK;
        assert_eq!(driver.read(at, 4096).unwrap(), vec![chunk as u8 + 1; 4096]);
    }
    let counting = driver.into_storage();
    // The open scans the journal once; the one table page the records touch is overlaid
    // when it is loaded (a few times through a four-page cache). Each of the other 63
    // table pages would cost one more pass over the valid journal without the filter.
    let extent = WRITTEN * 512;
    let table_pages = layout.table.unwrap().region.len / 512;
    assert_eq!(table_pages, 64);
    assert!(
        counting.hook.bytes <= journal.len + 8 * extent,
        "read {} journal bytes: a {}-byte journal and a {extent}-byte valid extent",
        counting.hook.bytes,
        journal.len
    );
    assert_eq!(
        counting.inner.image.durable, image,
        "a read-only open never writes"
    );
}
