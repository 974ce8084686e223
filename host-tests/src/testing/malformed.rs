//! The malformed-image corpus (`corpus/malformed/` at the repository root): one small
//! file per class of hostile input, built here from the create geometry of `fvd-core`
//! plus byte patches, so the committed files can be regenerated and compared. The
//! expected outcome of each (probe, engine opens and reads, `fvd-img check`) is in the
//! corpus's `expected.json`; `tests/malformed_corpus.rs` regenerates the files and checks
//! every outcome, and other hosts (browser, firmware) run the same files.

use crate::testing::newimage::initial_metadata;
use fvd_core::fvd::create::{metadata_len, plan, BaseSpec, CreateOptions};
use fvd_core::fvd::journal::{SectorBuilder, JOURNAL_SECTOR_SIZE};
use fvd_core::fvd::RawHeader;
use fvd_core::probe::FVD_2011_MAGIC;
use fvd_core::qed::{features, QedBacking, QedCreateOptions};

/// One corpus file.
#[derive(Clone, Debug)]
pub struct Entry {
    /// File name in the corpus directory.
    pub file: &'static str,
    /// The class of hostile input it stands for.
    pub class: &'static str,
    /// What is wrong with it, in one line.
    pub description: &'static str,
    /// Text its recorded outcomes must contain (so a regenerated `expected.json` cannot
    /// silently lose what the file is there to show).
    pub shows: &'static str,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Guest bytes of the small FVD images.
const FVD_SIZE: u64 = 64 << 10;
/// Chunk, block and growth step of the small compact images.
const UNIT: u64 = 4096;

/// What a small FVD image is built from.
#[derive(Clone, Copy, Default)]
struct Fvd<'a> {
    compact: bool,
    base: Option<(&'a [u8], &'a [u8])>,
    virtual_size: u64,
    block_size: u64,
    /// Chunks of data stored after the metadata (distinct bytes).
    stored_chunks: u64,
}

impl Fvd<'_> {
    fn compact(stored_chunks: u64) -> Self {
        Fvd {
            compact: true,
            stored_chunks,
            ..Fvd::default()
        }
    }

    /// The header `create` makes, with the data moved down to the end of the metadata
    /// (valid, and keeps the file small), and the whole file.
    fn build(self) -> (RawHeader, Vec<u8>) {
        let virtual_size = if self.virtual_size == 0 {
            FVD_SIZE
        } else {
            self.virtual_size
        };
        let mut header = plan(&CreateOptions {
            virtual_size,
            compact_image: self.compact,
            chunk_size: Some(UNIT),
            block_size: Some(if self.block_size == 0 {
                UNIT
            } else {
                self.block_size
            }),
            storage_grow_unit: Some(UNIT),
            journal_size: Some(UNIT),
            base: self.base.map(|(name, format)| BaseSpec {
                name,
                format,
                size: virtual_size,
            }),
            ..Default::default()
        })
        .expect("the corpus's create options are valid");
        let data_offset = metadata_len(&header);
        header.data_offset.set(data_offset);
        let mut bytes = initial_metadata(&header);
        bytes.extend((0..self.stored_chunks * UNIT).map(|i| (i / 512) as u8 ^ 0xA5));
        (header, bytes)
    }
}

/// Writes `header` into `bytes`.
fn put_header(bytes: &mut [u8], header: &RawHeader) {
    bytes[..header.bytes().len()].copy_from_slice(header.bytes());
}

/// Rewrites the header of the image in `bytes` through `change`.
fn patch(bytes: &mut [u8], change: impl FnOnce(&mut RawHeader)) {
    let header = RawHeader::view_mut(bytes).expect("an FVD header");
    change(header);
}

fn set_entry(bytes: &mut [u8], header: &RawHeader, chunk: u64, value: u32) {
    let at = (header.table_offset.get() + 4 * chunk) as usize;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A journal sector for `epoch` at `position` with one table record.
fn table_sector(epoch: u64, position: u64, first: u32, physical: &[u32]) -> Vec<u8> {
    let mut sector = vec![0u8; JOURNAL_SECTOR_SIZE];
    let mut builder = SectorBuilder::new(&mut sector).expect("a sector buffer");
    let entries: Vec<u8> = physical.iter().flat_map(|p| p.to_le_bytes()).collect();
    builder.push_table(first, &entries);
    builder.finish(epoch, position);
    sector
}

fn put_sector(bytes: &mut [u8], header: &RawHeader, position: u64, sector: &[u8]) {
    let at = (header.journal_offset.get() + position * JOURNAL_SECTOR_SIZE as u64) as usize;
    bytes[at..at + JOURNAL_SECTOR_SIZE].copy_from_slice(sector);
}

/// A dirty compact image (epoch 5) with two stored chunks, chunk 0 mapped on disk, and
/// the journal sectors `sectors` (position, bytes).
fn dirty_with(sectors: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let (mut header, mut bytes) = Fvd::compact(2).build();
    header.clean_shutdown.set(0);
    header.stable_journal_epoch.set(5);
    put_header(&mut bytes, &header);
    set_entry(&mut bytes, &header, 0, 0);
    for (position, sector) in sectors {
        put_sector(&mut bytes, &header, *position, sector);
    }
    bytes
}

/// A small QED image: 4 KiB clusters, one-cluster tables, `size` guest bytes, a header
/// area of `header_clusters` and the empty L1 table right after it. Returns the L1
/// table's offset and the file.
fn qed(size: u64, header_clusters: u64, backing: bool) -> (u64, Vec<u8>) {
    let plan = fvd_core::qed::plan(&QedCreateOptions {
        size,
        cluster_size: 4096,
        table_size: 1,
        backing: backing.then_some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
    })
    .expect("the corpus's QED options are valid");
    let l1 = header_clusters * 4096;
    let mut bytes = vec![0u8; (l1 + 4096) as usize];
    plan.write_header_area(&mut bytes)
        .expect("room for the header");
    bytes[12..16].copy_from_slice(&(header_clusters as u32).to_le_bytes());
    bytes[40..48].copy_from_slice(&l1.to_le_bytes());
    (l1, bytes)
}

fn put_u64(bytes: &mut Vec<u8>, at: u64, value: u64) {
    let at = at as usize;
    if bytes.len() < at + 8 {
        bytes.resize(at + 8, 0);
    }
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A QED image with one L2 table (cluster 3 after a one-cluster header, or 4) mapping
/// guest cluster 0 to the data cluster after it, then `change` applied.
fn qed_mapped(header_clusters: u64, change: impl FnOnce(&mut Vec<u8>, u64, u64)) -> Vec<u8> {
    let (l1, mut bytes) = qed(256 << 10, header_clusters, false);
    let l2 = l1 + 4096;
    let data = l2 + 4096;
    put_u64(&mut bytes, l1, l2);
    put_u64(&mut bytes, l2, data);
    bytes.resize(data as usize, 0);
    bytes.resize((data + 4096) as usize, 0x6B);
    change(&mut bytes, l1, l2);
    bytes
}

/// A QED corpus file made by [`qed_mapped`]: file, class, description, what its outcome
/// shows, header clusters, and the change (given the file, the L1 and the L2 offsets).
type QedCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u64,
    Box<dyn Fn(&mut Vec<u8>, u64, u64)>,
);

/// Deterministic noise.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn entry(
    file: &'static str,
    class: &'static str,
    description: &'static str,
    shows: &'static str,
    bytes: Vec<u8>,
) -> Entry {
    Entry {
        file,
        class,
        description,
        shows,
        bytes,
    }
}

/// Every corpus file, in a fixed order.
pub fn corpus() -> Vec<Entry> {
    let mut out = fvd_region_entries();
    out.extend(fvd_journal_entries());
    out.extend(qed_entries());
    out.extend(foreign_entries());
    out
}

fn fvd_region_entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let (header, mut bytes) = Fvd::compact(1).build();
    let journal = header.journal_offset.get();
    patch(&mut bytes, |h| h.table_offset.set(journal));
    out.push(entry(
        "fvd-overlapping-regions.fvd",
        "overlapping regions",
        "compact FVD whose table region starts where the journal region does",
        "RegionOverlap",
        bytes,
    ));

    let (header, mut bytes) = Fvd::compact(2).build();
    set_entry(&mut bytes, &header, 0, 0);
    set_entry(&mut bytes, &header, 15, 100);
    out.push(entry(
        "fvd-table-entry-past-storage.fvd",
        "table entry past the end of the storage",
        "compact FVD whose last table entry names physical chunk 100 of a 2-chunk data storage",
        "table-entry-beyond-storage",
        bytes,
    ));

    let (_, mut bytes) = Fvd {
        base: Some((b"base.raw", b"raw")),
        virtual_size: 32 << 20,
        block_size: 512,
        ..Fvd::default()
    }
    .build();
    patch(&mut bytes, |h| h.bitmap_size.set(4096));
    out.push(entry(
        "fvd-bitmap-too-small.fvd",
        "bitmap too small for the base",
        "FVD over a 32 MiB base with 512-byte blocks (8 KiB of bitmap) whose bitmap region is 4 KiB",
        "RegionTooSmall",
        bytes,
    ));

    let (header, mut bytes) = Fvd::compact(2).build();
    set_entry(&mut bytes, &header, 0, 0);
    set_entry(&mut bytes, &header, 1, 0);
    out.push(entry(
        "fvd-shared-chunk-table.fvd",
        "two table entries naming one physical chunk",
        "compact FVD whose table maps chunks 0 and 1 onto physical chunk 0",
        "SharedChunk",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    // data_offset + 2^31 chunks of 4 KiB wraps past 2^64 onto the metadata.
    patch(&mut bytes, |h| {
        h.data_offset.set(0u64.wrapping_sub(1 << 43))
    });
    out.push(entry(
        "fvd-data-offset-wraps.fvd",
        "data_offset that would wrap",
        "compact FVD whose data_offset (2^64 - 2^43) makes the last physical chunk's offset wrap",
        "DataBeyondAddressable",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    patch(&mut bytes, |h| h.storage_grow_unit.set((1 << 40) + 4096));
    out.push(entry(
        "fvd-grow-unit-above-1tib.fvd",
        "storage_grow_unit above 1 TiB",
        "compact FVD whose storage_grow_unit is 1 TiB + 4 KiB",
        "BadStorageGrowUnit",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    patch(&mut bytes, |h| h.stable_journal_epoch.set((1 << 63) + 1));
    out.push(entry(
        "fvd-epoch-above-2-63.fvd",
        "stable_journal_epoch above 2^63",
        "compact FVD whose stable_journal_epoch is 2^63 + 1",
        "BadJournalEpoch",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    patch(&mut bytes, |h| {
        h.virtual_disk_size.set(1 << 56);
    });
    out.push(entry(
        "fvd-chunk-count-overflows.fvd",
        "sizes whose products overflow",
        "compact FVD of 2^56 bytes in 4 KiB chunks: 2^44 chunks, whose table would need 2^46 bytes",
        "TooManyChunks",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    patch(&mut bytes, |h| {
        h.journal_offset.set(0u64.wrapping_sub(4096));
        h.journal_size.set(8192);
    });
    out.push(entry(
        "fvd-region-end-overflows.fvd",
        "sizes whose products overflow",
        "compact FVD whose journal offset + size overflows a u64",
        "RegionOverflow",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    bytes[1] ^= 0x20;
    out.push(entry(
        "fvd-damaged-magic.fvd",
        "damaged FVD magic",
        "compact FVD with one bit of its magic flipped",
        "DamagedFvd",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    bytes[..4].copy_from_slice(&FVD_2011_MAGIC.to_le_bytes());
    out.push(entry(
        "fvd-2011-magic.fvd",
        "the 2011 FVD magic",
        "compact FVD header carrying the January 2011 driver's magic",
        "Fvd2011",
        bytes,
    ));

    let (_, mut bytes) = Fvd::compact(1).build();
    bytes.truncate(4096);
    out.push(entry(
        "fvd-truncated-header.fvd",
        "truncated header",
        "the first 4 KiB of a compact FVD image (the header needs 7440 bytes)",
        "TooShort",
        bytes,
    ));

    let (_, bytes) = Fvd {
        base: Some((b"fvd-self-base.fvd", b"fvd")),
        ..Fvd::compact(1)
    }
    .build();
    out.push(entry(
        "fvd-self-base.fvd",
        "image naming itself as base",
        "compact FVD whose base is itself",
        "is the same file as",
        bytes,
    ));
    for (file, other) in [
        ("chain-cycle-a.fvd", b"chain-cycle-b.fvd"),
        ("chain-cycle-b.fvd", b"chain-cycle-a.fvd"),
    ] {
        let (_, bytes) = Fvd {
            base: Some((other, b"fvd")),
            ..Fvd::compact(1)
        }
        .build();
        out.push(entry(
            file,
            "cyclic chain",
            "compact FVD over the other chain-cycle image, which is over this one",
            "is the same file as",
            bytes,
        ));
    }
    out
}

fn fvd_journal_entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let good = table_sector(5, 0, 1, &[1]);
    let mut torn = table_sector(5, 1, 2, &[1]);
    torn[256..].copy_from_slice(&noise(256, 11));
    out.push(entry(
        "fvd-journal-torn-sector.fvd",
        "torn journal sector",
        "dirty compact FVD: sector 0 maps chunk 1; sector 1 (mapping chunk 2 onto the same chunk) is torn after 256 bytes",
        "\"journal_records\":1",
        dirty_with(&[(0, good.clone()), (1, torn)]),
    ));
    let mut bad_crc = table_sector(5, 0, 1, &[1]);
    bad_crc[4] ^= 1;
    out.push(entry(
        "fvd-journal-bad-crc.fvd",
        "bad-CRC journal sector",
        "dirty compact FVD whose only journal sector has a wrong CRC",
        "\"journal_records\":0",
        dirty_with(&[(0, bad_crc)]),
    ));
    out.push(entry(
        "fvd-journal-future-epoch.fvd",
        "future-epoch journal sector",
        "dirty compact FVD in epoch 5 with an intact sector of epoch 9 mapping chunk 1 onto physical chunk 0",
        "\"journal_records\":1",
        dirty_with(&[(0, good), (1, table_sector(9, 1, 1, &[0]))]),
    ));
    out.push(entry(
        "fvd-journal-record-past-table.fvd",
        "journal record past the table",
        "dirty compact FVD (16 chunks) whose journal maps chunks 15 to 17",
        "BadJournalRecord",
        dirty_with(&[(0, table_sector(5, 0, 15, &[1, 2, 3]))]),
    ));
    out.push(entry(
        "fvd-shared-chunk-journal.fvd",
        "two table entries naming one physical chunk",
        "dirty compact FVD: chunk 0 maps physical chunk 0 on disk, and the journal maps chunk 3 onto it too",
        "SharedChunk",
        dirty_with(&[(0, table_sector(5, 0, 3, &[0]))]),
    ));
    out
}

fn qed_entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let cases: [QedCase; 6] = [
        (
            "qed-l1-misaligned.qed",
            "QED L1 entry misaligned",
            "QED whose first L1 entry is 512 bytes into a cluster",
            "BadL1Entry",
            1,
            Box::new(|b, l1, l2| put_u64(b, l1, l2 + 512)),
        ),
        (
            "qed-l1-past-eof.qed",
            "QED L1 entry past EOF",
            "QED whose first L1 entry names cluster 64 of a 4-cluster file",
            "BadL1Entry",
            1,
            Box::new(|b, l1, _| put_u64(b, l1, 64 * 4096)),
        ),
        (
            "qed-l1-into-header.qed",
            "QED L1 entry into the header",
            "QED with a 2-cluster header area whose first L1 entry names header cluster 1",
            "BadL1Entry",
            2,
            Box::new(|b, l1, _| put_u64(b, l1, 4096)),
        ),
        (
            "qed-l2-misaligned.qed",
            "QED L2 entry misaligned",
            "QED whose first L2 entry is 512 bytes into a cluster",
            "BadL2Entry",
            1,
            Box::new(|b, _, l2| put_u64(b, l2, l2 + 4096 + 512)),
        ),
        (
            "qed-l2-past-eof.qed",
            "QED L2 entry past EOF",
            "QED whose first L2 entry names cluster 64 of a 4-cluster file",
            "BadL2Entry",
            1,
            Box::new(|b, _, l2| put_u64(b, l2, 64 * 4096)),
        ),
        (
            "qed-l2-into-header.qed",
            "QED L2 entry into the header",
            "QED with a 2-cluster header area whose first L2 entry names header cluster 1",
            "BadL2Entry",
            2,
            Box::new(|b, _, l2| put_u64(b, l2, 4096)),
        ),
    ];
    for (file, class, description, shows, header, change) in cases {
        out.push(entry(
            file,
            class,
            description,
            shows,
            qed_mapped(header, change),
        ));
    }

    // Guest 4 MiB: L1 entry 1 covers the second 2 MiB. Its "table" is the data cluster
    // L1 entry 0's table maps.
    let (l1, mut bytes) = qed(4 << 20, 1, false);
    let (l2, data) = (l1 + 4096, l1 + 8192);
    put_u64(&mut bytes, l1, l2);
    put_u64(&mut bytes, l2, data);
    bytes.resize((data + 4096) as usize, 0);
    bytes[data as usize..].copy_from_slice(&noise(4096, 7));
    put_u64(&mut bytes, l1 + 8, data);
    out.push(entry(
        "qed-l1-names-data-cluster.qed",
        "QED L1 entry pointing at another table's data cluster",
        "QED whose second L1 entry names the data cluster the first L2 table maps",
        "\"corruptions\":1",
        bytes,
    ));

    let (l1, mut bytes) = qed(256 << 10, 1, true);
    let features_now = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    bytes[16..24].copy_from_slice(&(features_now | features::NEED_CHECK).to_le_bytes());
    bytes.truncate((l1 + 2048) as usize);
    out.push(entry(
        "qed-need-check-l1-past-eof.qed",
        "QED need-check set with an L1 table running past EOF",
        "QED over a raw backing file, need-check set, file ending halfway through the L1 table",
        "L1TableBeyondFile",
        bytes,
    ));

    let (_, mut bytes) = qed(256 << 10, 1, false);
    bytes[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    bytes[8..12].copy_from_slice(&16u32.to_le_bytes());
    bytes[40..48].copy_from_slice(&(64u64 << 20).to_le_bytes());
    bytes[48..56].copy_from_slice(&(u64::MAX - 511).to_le_bytes());
    out.push(entry(
        "qed-size-product-overflows.qed",
        "sizes whose products overflow",
        "QED with 64 MiB clusters and 16-cluster tables (2^80 addressable bytes) claiming 2^64 - 512 guest bytes, in an 8 KiB file",
        "HeaderBeyondFile",
        bytes,
    ));
    out
}

fn foreign_entries() -> Vec<Entry> {
    let mut qcow2 = b"QFI\xfb".to_vec();
    qcow2.resize(512, 0);
    vec![
        entry(
            "random.bin",
            "random bytes",
            "8 KiB of pseudo-random bytes",
            "BadMagic",
            noise(8192, 0x9E37_79B9_7F4A_7C15),
        ),
        entry(
            "qcow2-magic.qcow2",
            "qcow2-looking file",
            "one sector holding the qcow2 magic QFI\\xfb and zeros",
            "\"probe\":\"Foreign(Qcow2)\"",
            qcow2,
        ),
    ]
}
