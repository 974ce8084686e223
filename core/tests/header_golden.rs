//! Golden tests for `create`'s geometry: for a matrix of create options, the planned header
//! validates against a file of exactly `metadata_len` bytes, its regions lie in creation
//! order (header, bitmap, table, journal) packed from `header_size` on, its bytes re-parse
//! to the same layout, and for hand-computed cases every offset and size is what
//! docs/FORMAT.md says. A few cases are checked byte for byte against a header assembled
//! here from the documented field offsets.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use fvd_core::fvd::create::{
    default_block_size, metadata_len, plan, BaseSpec, CreateOptions, GeometryError,
    DEFAULT_CHUNK_SIZE, DEFAULT_JOURNAL_SIZE, DEFAULT_MAX_OUTSTANDING_COPY_ON_READ,
    DEFAULT_STORAGE_GROW_UNIT,
};
use fvd_core::fvd::error::RegionKind;
use fvd_core::fvd::header::{mutable_sectors, FVD_MAGIC, FVD_VERSION, RAW_HEADER_LEN};
use fvd_core::fvd::validate::{MAX_BLOCK_SIZE, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_VIRTUAL_SIZE};
use fvd_core::fvd::{parse, validate, HeaderError, ImageLayout, RawHeader, Region};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// The header area as `create` writes it: the header padded with zeros to `header_size`.
/// Where `create` puts guest data after metadata ending at `end`: the next 64 KiB boundary.
fn aligned(end: u64) -> u64 {
    end.div_ceil(fvd_core::fvd::create::DATA_ALIGNMENT) * fvd_core::fvd::create::DATA_ALIGNMENT
}

fn header_area(h: &RawHeader) -> Vec<u8> {
    let mut bytes = h.bytes().to_vec();
    bytes.resize(h.header_size.get() as usize, 0);
    bytes
}

fn base(name: &'static [u8], size: u64) -> Option<BaseSpec<'static>> {
    Some(BaseSpec {
        name,
        format: b"raw",
        size,
    })
}

/// Plans `options` and checks every property a freshly created header must have.
/// Returns the header and its layout for case-specific checks.
fn plan_and_check(options: &CreateOptions<'_>) -> (RawHeader, ImageLayout) {
    let h = plan(options).unwrap_or_else(|e| panic!("plan({options:?}) failed: {e}"));
    let file_len = metadata_len(&h);
    let layout = validate(&h, file_len)
        .unwrap_or_else(|e| panic!("planned header for {options:?} does not validate: {e}"));

    // Fixed fields every created header carries.
    assert_eq!(h.magic.get(), FVD_MAGIC);
    assert_eq!(h.header_size.get(), 8192);
    assert_eq!(h.create_version.get(), FVD_VERSION);
    assert_eq!(h.last_open_version.get(), FVD_VERSION);
    assert_eq!(layout.header_size, 8192);
    assert!(layout.clean_shutdown);
    assert_eq!(layout.stable_journal_epoch, 0);
    assert!(!layout.chunks_relocated);
    assert!(!layout.base_fully_prefetched);
    assert!(h.incompatible_features.iter().all(|&b| b == 0));

    // The virtual size is rounded up to a sector.
    assert_eq!(
        layout.virtual_size,
        options.virtual_size.div_ceil(512) * 512
    );

    // Regions in creation order, packed from the end of the header area.
    let mut cursor = layout.header_size;
    for region in [
        layout.base.map(|b| b.bitmap),
        layout.table.map(|t| t.region),
        layout.journal,
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(
            region.offset, cursor,
            "regions out of order for {options:?}"
        );
        assert_eq!(region.offset % 4096, 0);
        assert_eq!(region.len % 4096, 0);
        assert!(region.len > 0);
        cursor = region.end();
    }
    assert_eq!(layout.metadata_end, cursor);
    assert_eq!(file_len, cursor);

    // Data: right after the metadata, or at 0 of the separate data file.
    match options.data_file {
        Some(_) => {
            assert!(layout.separate_data_file);
            assert_eq!(layout.data_offset, 0);
        }
        None => {
            assert!(!layout.separate_data_file);
            assert_eq!(layout.data_offset, aligned(layout.metadata_end));
        }
    }

    // Base, bitmap, block size.
    match options.base {
        Some(spec) => {
            let b = layout.base.expect("base layout");
            let expected_size = spec.size.min(layout.virtual_size).div_ceil(512) * 512;
            assert_eq!(b.size, expected_size);
            assert_eq!(b.blocks, b.size.div_ceil(layout.block_size));
            let bits_bytes = b.blocks.div_ceil(8);
            assert_eq!(b.bitmap.len, bits_bytes.div_ceil(4096).max(1) * 4096);
        }
        None => assert!(layout.base.is_none()),
    }
    let expected_block = options
        .block_size
        .unwrap_or_else(|| default_block_size(layout.base.map_or(0, |b| b.size)));
    assert_eq!(layout.block_size, expected_block);

    // Table.
    if options.compact_image {
        let t = layout.table.expect("table layout");
        let chunk = options
            .chunk_size
            .unwrap_or(DEFAULT_CHUNK_SIZE)
            .div_ceil(4096)
            * 4096;
        assert_eq!(t.chunk_size, chunk);
        assert_eq!(t.chunks, layout.virtual_size.div_ceil(chunk));
        assert_eq!(t.region.len, (t.chunks * 4).div_ceil(4096).max(1) * 4096);
        let grow = options
            .storage_grow_unit
            .unwrap_or(DEFAULT_STORAGE_GROW_UNIT)
            .div_ceil(512)
            * 512;
        assert_eq!(t.storage_grow_unit, grow);
    } else {
        assert!(layout.table.is_none());
        assert_eq!(h.chunk_size.get(), 0);
        assert_eq!(h.storage_grow_unit.get(), 0);
    }

    // Journal: only with metadata to protect; Some(0) disables it; never below one
    // whole-table commit (118 entries per sector).
    let has_metadata = options.base.is_some() || options.compact_image;
    match (has_metadata, options.journal_size) {
        (false, _) | (true, Some(0)) => assert!(layout.journal.is_none()),
        (true, requested) => {
            let j = layout.journal.expect("journal");
            let wanted = requested.unwrap_or(DEFAULT_JOURNAL_SIZE).div_ceil(4096) * 4096;
            let chunks = layout.table.map_or(0, |t| t.chunks);
            let needed = (chunks.div_ceil(118) * 512).max(4096).div_ceil(4096) * 4096;
            assert_eq!(j.len, wanted.max(needed));
        }
    }

    // Flags copied from the options.
    assert_eq!(layout.copy_on_read, options.copy_on_read);
    assert_eq!(layout.need_zero_init, options.need_zero_init);
    assert_eq!(
        h.prefetch_start_delay.get(),
        options.prefetch_start_delay.max(-1)
    );

    // The bytes as stored re-parse to the identical layout (and the identical header).
    let area = header_area(&h);
    let (raw, reparsed) = parse(&area, file_len).expect("re-parse");
    assert_eq!(reparsed, layout);
    assert_eq!(raw.bytes(), h.bytes());
    // A longer file (data written) changes nothing.
    assert_eq!(validate(&h, file_len + 100 * MIB).unwrap(), layout);
    // A file shorter than the metadata is refused.
    assert!(matches!(
        validate(&h, file_len - 1),
        Err(HeaderError::RegionBeyondFile { file_len: l, .. }) if l == file_len - 1
    ));
    (h, layout)
}

fn region(offset: u64, len: u64) -> Region {
    Region { offset, len }
}

#[test]
fn matrix_of_create_options_plans_valid_headers() {
    let virtual_sizes = [0, 512, 1000, MIB + 512, GIB, 10 * GIB];
    let bases: [Option<u64>; 6] = [
        None,
        Some(0),
        Some(1000),
        Some(300 * KIB),
        Some(GIB),
        Some(TIB),
    ];
    let block_sizes = [
        None,
        Some(512),
        Some(7680),
        Some(64 * KIB),
        Some(MAX_BLOCK_SIZE),
    ];
    let chunk_sizes = [
        None,
        Some(1),
        Some(4096),
        Some(7680 * 8),
        Some(MIB),
        Some(MAX_CHUNK_SIZE),
    ];
    let journals = [None, Some(0), Some(1), Some(3 * 4096 + 1)];
    let mut planned = 0;
    let mut refused = 0;
    for &virtual_size in &virtual_sizes {
        for &base_size in &bases {
            for compact in [false, true] {
                for &block_size in &block_sizes {
                    for &chunk_size in &chunk_sizes {
                        if !compact && chunk_size.is_some() {
                            continue;
                        }
                        for &journal_size in &journals {
                            for data_file in [None, Some(&b"disk.data"[..])] {
                                let options = CreateOptions {
                                    virtual_size,
                                    base: base_size.and_then(|s| base(b"base.img", s)),
                                    compact_image: compact,
                                    block_size,
                                    chunk_size,
                                    journal_size,
                                    data_file,
                                    data_file_fmt: b"raw",
                                    ..Default::default()
                                };
                                let block = block_size.unwrap_or_else(|| {
                                    default_block_size(base_size.map_or(0, |s| {
                                        s.min(virtual_size.div_ceil(512) * 512).div_ceil(512) * 512
                                    }))
                                });
                                let chunk =
                                    chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE).div_ceil(4096) * 4096;
                                if compact && base_size.is_some() && chunk % block != 0 {
                                    assert_eq!(
                                        plan(&options).err(),
                                        Some(GeometryError::BadChunkSize {
                                            size: chunk,
                                            block_size: block
                                        }),
                                        "{options:?}"
                                    );
                                    refused += 1;
                                    continue;
                                }
                                if compact && chunk > DEFAULT_STORAGE_GROW_UNIT {
                                    assert_eq!(
                                        plan(&options).err(),
                                        Some(GeometryError::BadStorageGrowUnit {
                                            unit: DEFAULT_STORAGE_GROW_UNIT,
                                            chunk_size: chunk
                                        })
                                    );
                                    refused += 1;
                                    continue;
                                }
                                plan_and_check(&options);
                                planned += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        planned > 1000 && refused > 100,
        "{planned} planned, {refused} refused"
    );
}

#[test]
fn plain_image_is_a_header_and_data() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        ..Default::default()
    });
    assert_eq!(l.data_offset, 65_536);
    assert_eq!(l.metadata_end, 8192);
    assert_eq!(l.block_size, 512);
    assert!(l.base.is_none() && l.table.is_none() && l.journal.is_none());
    assert_eq!(metadata_len(&h), 8192);
}

#[test]
fn plain_image_size_is_rounded_up_to_a_sector() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: 1,
        ..Default::default()
    });
    assert_eq!(l.virtual_size, 512);
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: 0,
        ..Default::default()
    });
    assert_eq!(l.virtual_size, 0);
}

#[test]
fn compact_1gib_with_1mib_chunks() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        chunk_size: Some(MIB),
        ..Default::default()
    });
    let t = l.table.unwrap();
    assert_eq!(t.region, region(8192, 4096));
    assert_eq!(t.chunks, 1024);
    assert_eq!(t.chunk_size, MIB);
    assert_eq!(t.storage_grow_unit, 100 * MIB);
    assert_eq!(l.journal, Some(region(12288, 16 * MIB)));
    assert_eq!(l.data_offset, aligned(12288 + 16 * MIB));
    assert_eq!(l.data_offset, 16_842_752);
    assert_eq!(metadata_len(&h), 16_789_504);
    assert!(l.base.is_none());
}

#[test]
fn compact_1tib_with_64kib_chunks_raises_a_small_journal() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: TIB,
        compact_image: true,
        chunk_size: Some(64 * KIB),
        journal_size: Some(4096),
        ..Default::default()
    });
    let t = l.table.unwrap();
    assert_eq!(t.chunks, 16_777_216);
    assert_eq!(t.region, region(8192, 64 * MIB));
    // ceil(16777216 / 118) = 142180 sectors = 72796160 bytes, rounded up to 4096.
    assert_eq!(l.journal, Some(region(8192 + 64 * MIB, 72_798_208)));
    assert_eq!(l.data_offset, aligned(8192 + 64 * MIB + 72_798_208));
}

#[test]
fn base_10gib_uses_512_byte_blocks_and_a_2_5mib_bitmap() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: 10 * GIB,
        base: base(b"base.raw", 10 * GIB),
        ..Default::default()
    });
    let b = l.base.unwrap();
    assert_eq!(l.block_size, 512);
    assert_eq!(b.size, 10 * GIB);
    assert_eq!(b.blocks, 20_971_520);
    assert_eq!(b.bitmap, region(8192, 2_621_440));
    assert_eq!(l.journal, Some(region(8192 + 2_621_440, 16 * MIB)));
    assert_eq!(l.data_offset, 19_464_192);
    assert_eq!(h.bytes_per_prefetch.get(), MIB);
}

#[test]
fn base_not_a_multiple_of_512_is_rounded_up() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: MIB,
        base: base(b"odd.raw", 1000),
        ..Default::default()
    });
    let b = l.base.unwrap();
    assert_eq!(b.size, 1024);
    assert_eq!(b.blocks, 2);
    assert_eq!(b.bitmap, region(8192, 4096));
    assert_eq!(l.journal, Some(region(12288, 16 * MIB)));
    assert_eq!(h.base_img_size.get(), 1024);
}

#[test]
fn base_larger_than_the_virtual_disk_is_clipped() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: MIB,
        base: base(b"big.raw", GIB),
        ..Default::default()
    });
    let b = l.base.unwrap();
    assert_eq!(b.size, MIB);
    assert_eq!(b.blocks, 2048);
    assert_eq!(b.bitmap, region(8192, 4096));
}

#[test]
fn empty_base_still_gets_a_one_page_bitmap() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: MIB,
        base: base(b"empty.raw", 0),
        ..Default::default()
    });
    let b = l.base.unwrap();
    assert_eq!((b.size, b.blocks), (0, 0));
    assert_eq!(b.bitmap, region(8192, 4096));
}

#[test]
fn compact_over_a_base() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        base: base(b"base.raw", 512 * MIB),
        compact_image: true,
        ..Default::default()
    });
    let b = l.base.unwrap();
    assert_eq!(l.block_size, 512);
    assert_eq!(b.bitmap, region(8192, 131_072));
    let t = l.table.unwrap();
    assert_eq!(t.region, region(139_264, 4096));
    assert_eq!(l.journal, Some(region(143_360, 16 * MIB)));
    assert_eq!(l.data_offset, aligned(143_360 + 16 * MIB));
}

#[test]
fn separate_data_file_puts_data_at_zero() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        data_file: Some(b"disk.raw"),
        data_file_fmt: b"raw",
        ..Default::default()
    });
    assert!(l.separate_data_file);
    assert_eq!(l.data_offset, 0);
    assert_eq!(metadata_len(&h), 8192);
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        data_file: Some(b"disk.raw"),
        ..Default::default()
    });
    assert_eq!(l.data_offset, 0);
    assert_eq!(l.metadata_end, 12288 + 16 * MIB);
}

#[test]
fn journal_size_zero_disables_the_journal() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        base: base(b"b", GIB),
        journal_size: Some(0),
        ..Default::default()
    });
    assert!(l.journal.is_none());
    assert_eq!(l.data_offset, aligned(8192 + 262_144));
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        journal_size: Some(0),
        ..Default::default()
    });
    assert!(l.journal.is_none());
    assert_eq!(l.data_offset, 65_536);
}

#[test]
fn small_journal_sizes_are_raised_to_a_page_or_a_whole_table() {
    for requested in [1, 511, 4095, 4096] {
        let (_, l) = plan_and_check(&CreateOptions {
            virtual_size: GIB,
            base: base(b"b", GIB),
            journal_size: Some(requested),
            ..Default::default()
        });
        assert_eq!(l.journal, Some(region(8192 + 262_144, 4096)), "{requested}");
    }
    // 1 GiB / 4 KiB chunks = 262144 entries: ceil(262144/118) = 2222 sectors = 1137664
    // bytes, rounded up to 4096 = 1138688.
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        chunk_size: Some(4096),
        journal_size: Some(4096),
        ..Default::default()
    });
    assert_eq!(l.table.unwrap().region, region(8192, MIB));
    assert_eq!(l.journal, Some(region(8192 + MIB, 1_138_688)));
    // A journal without bitmap or table is never created.
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        journal_size: Some(MIB),
        ..Default::default()
    });
    assert!(l.journal.is_none());
    assert_eq!((h.journal_offset.get(), h.journal_size.get()), (0, 0));
}

#[test]
fn explicit_block_sizes_including_non_powers_of_two() {
    for (block, bitmap) in [
        (512, 4096),
        (1024, 4096),
        (7680, 4096),
        (15872, 4096),
        (65024, 4096),
        (MAX_BLOCK_SIZE, 4096),
    ] {
        let (h, l) = plan_and_check(&CreateOptions {
            virtual_size: 10 * MIB,
            base: base(b"b", 10 * MIB),
            block_size: Some(block),
            ..Default::default()
        });
        assert_eq!(l.block_size, block);
        assert_eq!(l.base.unwrap().bitmap.len, bitmap);
        assert_eq!(l.base.unwrap().blocks, (10 * MIB).div_ceil(block));
        // One prefetch unit is 1 MiB rounded up to whole blocks.
        assert_eq!(h.bytes_per_prefetch.get(), MIB.div_ceil(block) * block);
    }
    // 7680-byte blocks over 100 GiB: 13981014 blocks, 1747627 bytes, 427 pages.
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: 100 * GIB,
        base: base(b"b", 100 * GIB),
        block_size: Some(7680),
        ..Default::default()
    });
    assert_eq!(l.base.unwrap().blocks, 13_981_014);
    assert_eq!(l.base.unwrap().bitmap, region(8192, 427 * 4096));
}

#[test]
fn default_block_size_keeps_the_bitmap_moderate() {
    for (size, block) in [
        (10 * GIB, 512),
        (100 * GIB, 4096),
        (TIB, 32 * KIB),
        (4 * TIB, 128 * KIB),
    ] {
        let (_, l) = plan_and_check(&CreateOptions {
            virtual_size: size,
            base: base(b"b", size),
            ..Default::default()
        });
        assert_eq!(l.block_size, block, "{size}");
        assert!(l.base.unwrap().bitmap.len <= 4 * MIB);
    }
}

#[test]
fn chunk_sizes_are_rounded_up_to_a_page() {
    for (requested, chunk) in [(1, 4096), (3000, 4096), (4097, 8192), (MIB, MIB)] {
        let (h, l) = plan_and_check(&CreateOptions {
            virtual_size: 8 * MIB,
            compact_image: true,
            chunk_size: Some(requested),
            ..Default::default()
        });
        assert_eq!(l.table.unwrap().chunk_size, chunk);
        assert_eq!(h.chunk_size.get(), chunk);
    }
    // Over a base, a 7680-byte block needs a chunk that is a multiple of 7680 and 4096.
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: 8 * MIB,
        base: base(b"b", 8 * MIB),
        compact_image: true,
        block_size: Some(7680),
        chunk_size: Some(7680 * 8),
        ..Default::default()
    });
    assert_eq!(l.table.unwrap().chunk_size, 61_440);
}

#[test]
fn storage_grow_unit_defaults_and_rounding() {
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        storage_grow_unit: Some(MIB + 1),
        ..Default::default()
    });
    assert_eq!(l.table.unwrap().storage_grow_unit, MIB + 512);
}

#[test]
fn copy_on_read_prefetch_and_zero_init_are_recorded() {
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        base: base(b"b", GIB),
        copy_on_read: true,
        prefetch_start_delay: 30,
        need_zero_init: true,
        ..Default::default()
    });
    assert!(l.copy_on_read && l.need_zero_init);
    assert_eq!(h.copy_on_read.get(), 1);
    assert_eq!(h.need_zero_init.get(), 1);
    assert_eq!(h.prefetch_start_delay.get(), 30);
    // Any delay <= 0 is stored as -1 (disabled).
    for delay in [0, -1, -5, i64::MIN] {
        let (h, _) = plan_and_check(&CreateOptions {
            virtual_size: GIB,
            prefetch_start_delay: delay,
            ..Default::default()
        });
        assert_eq!(h.prefetch_start_delay.get(), delay.max(-1));
    }
    let (h, l) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        need_zero_init: true,
        ..Default::default()
    });
    assert!(l.need_zero_init && !l.copy_on_read);
    assert_eq!(h.need_zero_init.get(), 1);
}

#[test]
fn runtime_updated_fields_lie_in_sectors_0_4_and_6() {
    assert_eq!(mutable_sectors::VERSION, 0);
    assert_eq!(mutable_sectors::SHUTDOWN_AND_EPOCH, 4);
    assert_eq!(mutable_sectors::RELOCATION_AND_PREFETCH, 6);
    // last_open_version 12..16; clean_shutdown 2160..2164 and stable_journal_epoch
    // 2164..2172 in 2048..2560; chunks_relocated 3244..3248 and
    // base_img_fully_prefetched 3268..3272 in 3072..3584.
    let h = plan(&CreateOptions {
        virtual_size: GIB,
        ..Default::default()
    })
    .unwrap();
    let mut changed = h.clone();
    changed.last_open_version.set(9);
    changed.clean_shutdown.set(0);
    changed.stable_journal_epoch.set(u64::MAX);
    changed.chunks_relocated.set(1);
    changed.base_img_fully_prefetched.set(1);
    let sectors: Vec<usize> = (0..RAW_HEADER_LEN)
        .filter(|&i| h.bytes()[i] != changed.bytes()[i])
        .map(|i| i / 512)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(sectors, [0, 4, 6]);
}

#[test]
fn header_area_is_header_size_bytes_of_header_then_zeros() {
    let h = plan(&CreateOptions {
        virtual_size: GIB,
        ..Default::default()
    })
    .unwrap();
    let area = header_area(&h);
    assert_eq!(area.len(), 8192);
    assert_eq!(RAW_HEADER_LEN, 7440);
    assert!(area[RAW_HEADER_LEN..].iter().all(|&b| b == 0));
}

// ---- byte-level goldens -------------------------------------------------------------

/// Assembles a 7440-byte header from (offset, bytes) pieces; every other byte is zero.
fn assemble(pieces: &[(usize, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; RAW_HEADER_LEN];
    for &(at, bytes) in pieces {
        out[at..at + bytes.len()].copy_from_slice(bytes);
    }
    out
}

/// The create defaults every header carries (docs/FORMAT.md, "Create defaults").
fn defaults(block_size: u64) -> Vec<(usize, Vec<u8>)> {
    vec![
        (0, b"FVD\0".to_vec()),
        (4, 8192u32.to_le_bytes().to_vec()),
        (8, 1u32.to_le_bytes().to_vec()),
        (12, 1u32.to_le_bytes().to_vec()),
        (2136, block_size.to_le_bytes().to_vec()),
        (2160, 1u32.to_le_bytes().to_vec()),
        (3252, 2_000_000u64.to_le_bytes().to_vec()),
        (3272, 2u32.to_le_bytes().to_vec()),
        (
            3276,
            MIB.div_ceil(block_size)
                .checked_mul(block_size)
                .unwrap()
                .to_le_bytes()
                .to_vec(),
        ),
        (3284, 100u64.to_le_bytes().to_vec()),
        (3292, 100u64.to_le_bytes().to_vec()),
        (3300, 5120u64.to_le_bytes().to_vec()),
        (3308, 5120u64.to_le_bytes().to_vec()),
        (3316, 1_000_000_000u64.to_le_bytes().to_vec()),
        (3324, 1_000_000_000u64.to_le_bytes().to_vec()),
        (3332, 30_000u64.to_le_bytes().to_vec()),
    ]
}

fn golden(mut pieces: Vec<(usize, Vec<u8>)>, extra: &[(usize, Vec<u8>)]) -> Vec<u8> {
    pieces.extend_from_slice(extra);
    let borrowed: Vec<(usize, &[u8])> = pieces.iter().map(|(a, b)| (*a, &b[..])).collect();
    assemble(&borrowed)
}

fn u32le(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn u64le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn i64le(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn assert_same_bytes(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len());
    if let Some(at) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "first difference at byte {at}: got {:02x?}, want {:02x?}",
            &got[at..(at + 8).min(got.len())],
            &want[at..(at + 8).min(want.len())]
        );
    }
}

#[test]
fn golden_bytes_compact_1gib() {
    let h = plan(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        ..Default::default()
    })
    .unwrap();
    let want = golden(
        defaults(512),
        &[
            (16, u64le(GIB)),
            (24, u64le(16_842_752)),
            (2144, u64le(12288)),
            (2152, u64le(16 * MIB)),
            (2188, u64le(8192)),
            (2196, u64le(4096)),
            (2204, u64le(MIB)),
            (2212, u64le(104_857_600)),
            (3260, i64le(-1)),
        ],
    );
    assert_same_bytes(h.bytes(), &want);
    // The first bytes spelled out.
    assert_eq!(
        &h.bytes()[..24],
        &[
            b'F', b'V', b'D', 0, // magic
            0x00, 0x20, 0, 0, // header_size 8192
            1, 0, 0, 0, // create_version
            1, 0, 0, 0, // last_open_version
            0, 0, 0, 0x40, 0, 0, 0, 0, // virtual_disk_size 2^30
        ]
    );
}

#[test]
fn golden_bytes_plain_1gib() {
    let h = plan(&CreateOptions {
        virtual_size: GIB,
        ..Default::default()
    })
    .unwrap();
    let want = golden(
        defaults(512),
        &[(16, u64le(GIB)), (24, u64le(65_536)), (3260, i64le(-1))],
    );
    assert_same_bytes(h.bytes(), &want);
}

#[test]
fn golden_bytes_base_with_copy_on_read_and_prefetch() {
    let h = plan(&CreateOptions {
        virtual_size: 10 * GIB,
        base: Some(BaseSpec {
            name: b"../images/base.qed",
            format: b"qed",
            size: 10 * GIB - 1000,
        }),
        copy_on_read: true,
        prefetch_start_delay: 60,
        need_zero_init: true,
        block_size: Some(64 * KIB),
        ..Default::default()
    })
    .unwrap();
    // base_img_size = round_up(10 GiB - 1000, 512) = 10 GiB - 512; 163840 blocks of
    // 64 KiB; 20480 bitmap bytes = 5 pages.
    let want = golden(
        defaults(64 * KIB),
        &[
            (16, u64le(10 * GIB)),
            (24, u64le(aligned(8192 + 20480 + 16 * MIB))),
            (1072, b"../images/base.qed".to_vec()),
            (2096, b"qed".to_vec()),
            (2112, u64le(10 * GIB - 512)),
            (2120, u64le(8192)),
            (2128, u64le(20480)),
            (2144, u64le(8192 + 20480)),
            (2152, u64le(16 * MIB)),
            (3248, u32le(1)),
            (3260, i64le(60)),
            (3340, u32le(1)),
        ],
    );
    assert_same_bytes(h.bytes(), &want);
    let l = validate(&h, metadata_len(&h)).unwrap();
    assert_eq!(l.base.unwrap().blocks, 163_840);
}

#[test]
fn golden_bytes_compact_with_separate_data_file() {
    let h = plan(&CreateOptions {
        virtual_size: 4 * GIB,
        compact_image: true,
        chunk_size: Some(2 * MIB),
        storage_grow_unit: Some(64 * MIB),
        journal_size: Some(MIB),
        data_file: Some(b"/dev/vg0/disk"),
        data_file_fmt: b"raw",
        ..Default::default()
    })
    .unwrap();
    // 2048 chunks of 2 MiB: an 8 KiB table, then the 1 MiB journal (a whole-table commit
    // needs only 18 sectors).
    let want = golden(
        defaults(512),
        &[
            (16, u64le(4 * GIB)),
            (24, u64le(0)),
            (32, b"/dev/vg0/disk".to_vec()),
            (1056, b"raw".to_vec()),
            (2144, u64le(16384)),
            (2152, u64le(MIB)),
            (2188, u64le(8192)),
            (2196, u64le(8192)),
            (2204, u64le(2 * MIB)),
            (2212, u64le(64 * MIB)),
            (3260, i64le(-1)),
        ],
    );
    assert_same_bytes(h.bytes(), &want);
}

#[test]
fn golden_bytes_parse_from_hand_assembled_header() {
    // A header written by hand from the documented offsets parses to the expected layout.
    let mut area = golden(
        defaults(4096),
        &[
            (16, u64le(MIB)),
            (24, u64le(24576)),
            (1072, b"base".to_vec()),
            (2112, u64le(MIB)),
            (2120, u64le(8192)),
            (2128, u64le(4096)),
            (2144, u64le(12288)),
            (2152, u64le(12288)),
            (2164, u64le(7)),
            (3260, i64le(-1)),
        ],
    );
    area.resize(8192, 0);
    // clean_shutdown 0 (open for writing).
    area[2160..2164].copy_from_slice(&0u32.to_le_bytes());
    let (_, l) = parse(&area, 24576).unwrap();
    assert_eq!(l.virtual_size, MIB);
    assert_eq!(l.block_size, 4096);
    assert_eq!(l.data_offset, 24576);
    assert_eq!(l.metadata_end, 24576);
    assert_eq!(l.stable_journal_epoch, 7);
    assert!(!l.clean_shutdown);
    let b = l.base.unwrap();
    assert_eq!((b.size, b.blocks, b.bitmap), (MIB, 256, region(8192, 4096)));
    assert_eq!(l.journal, Some(region(12288, 12288)));
    assert!(l.table.is_none());
}

// ---- geometry errors ---------------------------------------------------------------

fn plan_err(options: CreateOptions<'_>) -> GeometryError {
    let Err(err) = plan(&options) else {
        panic!("expected a geometry error for {options:?}");
    };
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn geometry_refuses_sizes_beyond_the_maximum() {
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: MAX_VIRTUAL_SIZE + 1,
            ..Default::default()
        }),
        GeometryError::SizeTooLarge {
            size: MAX_VIRTUAL_SIZE + 512,
            max: MAX_VIRTUAL_SIZE
        }
    );
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: u64::MAX,
            ..Default::default()
        }),
        GeometryError::SizeTooLarge {
            size: u64::MAX,
            max: MAX_VIRTUAL_SIZE
        }
    );
    // The maximum itself is fine.
    plan_and_check(&CreateOptions {
        virtual_size: MAX_VIRTUAL_SIZE,
        ..Default::default()
    });
}

#[test]
fn geometry_refuses_bad_block_sizes() {
    for size in [0, 1, 1000, 4097, MAX_BLOCK_SIZE + 512, u64::MAX] {
        assert_eq!(
            plan_err(CreateOptions {
                virtual_size: GIB,
                base: base(b"b", GIB),
                block_size: Some(size),
                ..Default::default()
            }),
            GeometryError::BadBlockSize { size }
        );
    }
}

#[test]
fn geometry_refuses_bad_chunk_sizes() {
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            compact_image: true,
            chunk_size: Some(0),
            ..Default::default()
        }),
        GeometryError::BadChunkSize {
            size: 0,
            block_size: 512
        }
    );
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            compact_image: true,
            chunk_size: Some(2 * GIB),
            storage_grow_unit: Some(4 * GIB),
            ..Default::default()
        }),
        GeometryError::BadChunkSize {
            size: 2 * GIB,
            block_size: 512
        }
    );
    // Over a base the chunk must hold whole blocks: 1 MiB is not a multiple of 7680.
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            base: base(b"b", GIB),
            compact_image: true,
            block_size: Some(7680),
            ..Default::default()
        }),
        GeometryError::BadChunkSize {
            size: MIB,
            block_size: 7680
        }
    );
    // Without a base the block size does not constrain the chunk.
    plan_and_check(&CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        block_size: Some(7680),
        ..Default::default()
    });
}

#[test]
fn geometry_refuses_too_many_chunks() {
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: MAX_VIRTUAL_SIZE,
            compact_image: true,
            chunk_size: Some(4096),
            ..Default::default()
        }),
        GeometryError::TooManyChunks { chunks: 1 << 44 }
    );
    // Exactly 2^31 chunks is one too many; 2^31 - 1 is the limit.
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: (MAX_CHUNKS + 1) * 4096,
            compact_image: true,
            chunk_size: Some(4096),
            ..Default::default()
        }),
        GeometryError::TooManyChunks {
            chunks: MAX_CHUNKS + 1
        }
    );
    let (_, l) = plan_and_check(&CreateOptions {
        virtual_size: MAX_CHUNKS * 4096,
        compact_image: true,
        chunk_size: Some(4096),
        ..Default::default()
    });
    assert_eq!(l.table.unwrap().chunks, MAX_CHUNKS);
    assert_eq!(l.table.unwrap().region.len, 8 * GIB);
}

#[test]
fn geometry_refuses_a_grow_unit_below_a_chunk() {
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            compact_image: true,
            storage_grow_unit: Some(4096),
            ..Default::default()
        }),
        GeometryError::BadStorageGrowUnit {
            unit: 4096,
            chunk_size: MIB
        }
    );
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            compact_image: true,
            storage_grow_unit: Some(0),
            ..Default::default()
        }),
        GeometryError::BadStorageGrowUnit {
            unit: 0,
            chunk_size: MIB
        }
    );
}

#[test]
fn geometry_refuses_names_that_do_not_fit() {
    let long = [b'x'; 1024];
    let fits = [b'x'; 1023];
    let cases: [(CreateOptions<'_>, &str); 6] = [
        (
            CreateOptions {
                virtual_size: GIB,
                base: Some(BaseSpec {
                    name: &long,
                    format: b"raw",
                    size: GIB,
                }),
                ..Default::default()
            },
            "backing file",
        ),
        (
            CreateOptions {
                virtual_size: GIB,
                base: Some(BaseSpec {
                    name: b"",
                    format: b"raw",
                    size: GIB,
                }),
                ..Default::default()
            },
            "backing file",
        ),
        (
            CreateOptions {
                virtual_size: GIB,
                base: Some(BaseSpec {
                    name: b"a\0b",
                    format: b"raw",
                    size: GIB,
                }),
                ..Default::default()
            },
            "backing file",
        ),
        (
            CreateOptions {
                virtual_size: GIB,
                base: Some(BaseSpec {
                    name: b"b",
                    format: b"0123456789abcdef",
                    size: GIB,
                }),
                ..Default::default()
            },
            "backing format",
        ),
        (
            CreateOptions {
                virtual_size: GIB,
                data_file: Some(b""),
                ..Default::default()
            },
            "data_file",
        ),
        (
            CreateOptions {
                virtual_size: GIB,
                data_file: Some(b"d"),
                data_file_fmt: b"0123456789abcdef",
                ..Default::default()
            },
            "data_file_fmt",
        ),
    ];
    for (options, field) in cases {
        // Format names are checked against the formats we can use, which also bounds them.
        let expected = match field {
            "backing format" | "data_file_fmt" => GeometryError::UnsupportedFormat { field },
            _ => GeometryError::NameTooLong { field },
        };
        assert_eq!(plan_err(options), expected);
    }
    // 1023 bytes plus the terminator fill the field exactly.
    let (h, _) = plan_and_check(&CreateOptions {
        virtual_size: GIB,
        base: Some(BaseSpec {
            name: &fits,
            format: b"",
            size: GIB,
        }),
        data_file: Some(&fits),
        ..Default::default()
    });
    assert_eq!(h.base_img[1022], b'x');
    assert_eq!(h.base_img[1023], 0);
    assert_eq!(h.data_file[1023], 0);
}

#[test]
fn geometry_refuses_copy_on_read_and_prefetch_without_base() {
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            copy_on_read: true,
            ..Default::default()
        }),
        GeometryError::NeedsBase {
            option: "copy_on_read"
        }
    );
    assert_eq!(
        plan_err(CreateOptions {
            virtual_size: GIB,
            prefetch_start_delay: 1,
            ..Default::default()
        }),
        GeometryError::NeedsBase {
            option: "prefetch_start_delay"
        }
    );
}

#[test]
fn geometry_error_messages_are_distinct_and_name_the_option() {
    let errors = [
        (
            GeometryError::SizeTooLarge {
                size: 1,
                max: MAX_VIRTUAL_SIZE,
            },
            "size",
        ),
        (GeometryError::BadBlockSize { size: 1 }, "block_size"),
        (
            GeometryError::BadChunkSize {
                size: 1,
                block_size: 512,
            },
            "chunk_size",
        ),
        (GeometryError::TooManyChunks { chunks: 1 }, "chunks"),
        (
            GeometryError::BadStorageGrowUnit {
                unit: 1,
                chunk_size: 2,
            },
            "storage_grow_unit",
        ),
        (
            GeometryError::NameTooLong { field: "data_file" },
            "data_file",
        ),
        (
            GeometryError::NeedsBase {
                option: "copy_on_read",
            },
            "copy_on_read",
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (error, needle) in errors {
        let message = error.to_string();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert!(seen.insert(message));
    }
}

#[test]
fn defaults_match_the_documented_constants() {
    assert_eq!(DEFAULT_CHUNK_SIZE, MIB);
    assert_eq!(DEFAULT_STORAGE_GROW_UNIT, 100 * MIB);
    assert_eq!(DEFAULT_JOURNAL_SIZE, 16 * MIB);
    assert_eq!(DEFAULT_MAX_OUTSTANDING_COPY_ON_READ, 2_000_000);
    assert_eq!(MAX_VIRTUAL_SIZE, 1 << 56);
    assert_eq!(MAX_BLOCK_SIZE, 64 * MIB);
    assert_eq!(MAX_CHUNK_SIZE, GIB);
    assert_eq!(MAX_CHUNKS, 0x7FFF_FFFF);
}

#[test]
fn planned_regions_never_beyond_metadata_len() {
    let h = plan(&CreateOptions {
        virtual_size: GIB,
        base: base(b"b", GIB),
        compact_image: true,
        journal_size: Some(0),
        ..Default::default()
    })
    .unwrap();
    let len = metadata_len(&h);
    assert_eq!(len, 8192 + 262_144 + 4096);
    assert_eq!(
        validate(&h, len - 1).unwrap_err(),
        HeaderError::RegionBeyondFile {
            region: RegionKind::Table,
            end: len,
            file_len: len - 1
        }
    );
}

// ---- known format-code bugs (see the report; not fixed here) --------------------------

/// `plan` promises a header that always validates, but it stores any format name that
/// fits the field, while `validate` accepts only "", "raw", "fvd", "qed" for the base and
/// "", "raw" for a data file.
#[test]
fn geometry_refuses_format_names_validate_refuses() {
    let options = CreateOptions {
        virtual_size: GIB,
        base: Some(BaseSpec {
            name: b"b",
            format: b"qcow2",
            size: GIB,
        }),
        ..Default::default()
    };
    if let Ok(h) = plan(&options) {
        validate(&h, metadata_len(&h)).expect("plan() result must validate");
    }
    let options = CreateOptions {
        virtual_size: GIB,
        data_file: Some(b"d"),
        data_file_fmt: b"qcow2",
        ..Default::default()
    };
    if let Ok(h) = plan(&options) {
        validate(&h, metadata_len(&h)).expect("plan() result must validate");
    }
}

/// `plan` adds region sizes to its cursor unchecked: a journal_size near u64::MAX
/// overflows (a panic in debug builds, a wrapped layout in release), and one a little
/// smaller yields a header whose data_offset + virtual size overflows, which validate()
/// refuses.
#[test]
fn geometry_survives_huge_journal_sizes() {
    for journal in [u64::MAX - 4095, u64::MAX - 4095 - 16384, u64::MAX - GIB] {
        let options = CreateOptions {
            virtual_size: GIB,
            compact_image: true,
            journal_size: Some(journal),
            ..Default::default()
        };
        if let Ok(h) = plan(&options) {
            validate(&h, metadata_len(&h)).expect("plan() result must validate");
        }
    }
}
