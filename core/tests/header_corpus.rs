//! A corpus of hand-broken headers, one group per validation rule. Every case starts from
//! a header that `create` plans (and that validates), breaks exactly one thing, and must be
//! refused with exactly the error of the rule it breaks, fields included. Every message
//! must name the offending field or region, and no two cases may share a message.
//!
//! Field offsets are written out here by hand (from docs/FORMAT.md), so these tests also
//! pin the on-disk layout independently of the `RawHeader` definition.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use fvd_core::fvd::create::{metadata_len, plan, BaseSpec, CreateOptions};
use fvd_core::fvd::error::RegionKind;
use fvd_core::fvd::validate::{MAX_CHUNKS, MAX_VIRTUAL_SIZE};
use fvd_core::fvd::{parse, HeaderError};
use std::collections::HashMap;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Byte offsets of the header fields.
mod off {
    pub const MAGIC: usize = 0;
    pub const HEADER_SIZE: usize = 4;
    pub const CREATE_VERSION: usize = 8;
    pub const LAST_OPEN_VERSION: usize = 12;
    pub const VIRTUAL_DISK_SIZE: usize = 16;
    pub const DATA_OFFSET: usize = 24;
    pub const DATA_FILE: usize = 32;
    pub const DATA_FILE_FMT: usize = 1056;
    pub const BASE_IMG: usize = 1072;
    pub const BASE_IMG_FMT: usize = 2096;
    pub const BASE_IMG_SIZE: usize = 2112;
    pub const BITMAP_OFFSET: usize = 2120;
    pub const BITMAP_SIZE: usize = 2128;
    pub const BLOCK_SIZE: usize = 2136;
    pub const JOURNAL_OFFSET: usize = 2144;
    pub const JOURNAL_SIZE: usize = 2152;
    pub const CLEAN_SHUTDOWN: usize = 2160;
    pub const STABLE_JOURNAL_EPOCH: usize = 2164;
    pub const JOURNAL_BUF_SIZE: usize = 2172;
    pub const JOURNAL_CLEAN_BUF_PERIOD: usize = 2180;
    pub const TABLE_OFFSET: usize = 2188;
    pub const TABLE_SIZE: usize = 2196;
    pub const CHUNK_SIZE: usize = 2204;
    pub const STORAGE_GROW_UNIT: usize = 2212;
    pub const ADD_STORAGE_CMD: usize = 2220;
    pub const CHUNKS_RELOCATED: usize = 3244;
    pub const COPY_ON_READ: usize = 3248;
    pub const MAX_OUTSTANDING_COPY_ON_READ_DATA: usize = 3252;
    pub const PREFETCH_START_DELAY: usize = 3260;
    pub const BASE_IMG_FULLY_PREFETCHED: usize = 3268;
    pub const NUM_PREFETCH_SLOTS: usize = 3272;
    pub const BYTES_PER_PREFETCH: usize = 3276;
    pub const PREFETCH_READ_THROUGHPUT_MEASURE_TIME: usize = 3284;
    pub const PREFETCH_WRITE_THROUGHPUT_MEASURE_TIME: usize = 3292;
    pub const PREFETCH_MIN_READ_THROUGHPUT: usize = 3300;
    pub const PREFETCH_MIN_WRITE_THROUGHPUT: usize = 3308;
    pub const PREFETCH_MAX_READ_THROUGHPUT: usize = 3316;
    pub const PREFETCH_MAX_WRITE_THROUGHPUT: usize = 3324;
    pub const PREFETCH_THROTTLE_TIME: usize = 3332;
    pub const NEED_ZERO_INIT: usize = 3340;
    pub const INCOMPATIBLE_FEATURES: usize = 3344;
}

/// A header area (as stored: padded to `header_size`) and the length of its file.
#[derive(Clone)]
struct Image {
    bytes: Vec<u8>,
    file_len: u64,
}

impl Image {
    fn planned(options: CreateOptions<'_>) -> Image {
        let h = plan(&options).unwrap_or_else(|e| panic!("{options:?}: {e}"));
        let mut bytes = h.bytes().to_vec();
        bytes.resize(h.header_size.get() as usize, 0);
        let image = Image {
            bytes,
            file_len: metadata_len(&h),
        };
        if let Err(e) = parse(&image.bytes, image.file_len) {
            panic!("fixture {options:?} does not validate: {e:?}");
        }
        image
    }
    fn u32(mut self, at: usize, value: u32) -> Self {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        self
    }
    fn u64(mut self, at: usize, value: u64) -> Self {
        self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        self
    }
    fn i64(mut self, at: usize, value: i64) -> Self {
        self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        self
    }
    fn byte(mut self, at: usize, value: u8) -> Self {
        self.bytes[at] = value;
        self
    }
    fn put(mut self, at: usize, value: &[u8]) -> Self {
        self.bytes[at..at + value.len()].copy_from_slice(value);
        self
    }
    fn fill(mut self, at: usize, len: usize, value: u8) -> Self {
        self.bytes[at..at + len].fill(value);
        self
    }
    fn truncate(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self
    }
    fn file_len(mut self, len: u64) -> Self {
        self.file_len = len;
        self
    }
    fn parse(&self) -> Result<(), HeaderError> {
        parse(&self.bytes, self.file_len).map(|_| ())
    }
}

// ---- fixtures (all valid) -------------------------------------------------------------

/// 1 GiB, no base, not compact: header only, data at 8192.
fn plain() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        ..Default::default()
    })
}

/// 1 GiB compact, 1 MiB chunks: table 8192+4096, journal 12288+16 MiB, data 16789504.
fn compact() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        ..Default::default()
    })
}

/// 1 GiB compact, 4 KiB chunks: table 8192+1 MiB.
fn compact_4k() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        chunk_size: Some(4096),
        ..Default::default()
    })
}

/// 1 GiB compact without journal: table 8192+4096, data 12288.
fn compact_no_journal() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        compact_image: true,
        journal_size: Some(0),
        ..Default::default()
    })
}

/// 1 GiB over a 1 GiB raw base, 512-byte blocks: bitmap 8192+262144, journal 270336+16 MiB.
fn based() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        base: Some(BaseSpec {
            name: b"base.raw",
            format: b"raw",
            size: GIB,
        }),
        ..Default::default()
    })
}

/// `based` with prefetch enabled (delay 10 s) and copy-on-read.
fn based_prefetch() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        base: Some(BaseSpec {
            name: b"base.raw",
            format: b"raw",
            size: GIB,
        }),
        copy_on_read: true,
        prefetch_start_delay: 10,
        ..Default::default()
    })
}

/// Compact over a base with 64 KiB blocks: bitmap 8192+4096, table 12288+4096,
/// journal 16384+16 MiB.
fn compact_based() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        base: Some(BaseSpec {
            name: b"base.qed",
            format: b"qed",
            size: GIB,
        }),
        compact_image: true,
        block_size: Some(64 * KIB),
        ..Default::default()
    })
}

/// Plain image whose data lives in a separate raw file.
fn separate() -> Image {
    Image::planned(CreateOptions {
        virtual_size: GIB,
        data_file: Some(b"disk.raw"),
        data_file_fmt: b"raw",
        ..Default::default()
    })
}

// ---- the corpus ----------------------------------------------------------------------

struct Case {
    what: &'static str,
    image: Image,
    want: HeaderError,
    /// Words the message must contain (the field or region it is about).
    mentions: &'static [&'static str],
}

fn case(
    what: &'static str,
    image: Image,
    want: HeaderError,
    mentions: &'static [&'static str],
) -> Case {
    Case {
        what,
        image,
        want,
        mentions,
    }
}

fn check(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for c in cases {
        let got = c.image.parse();
        assert_eq!(got, Err(c.want), "case {:?}", c.what);
        let message = c.want.to_string();
        assert!(!message.is_empty(), "case {:?}", c.what);
        for needle in c.mentions {
            assert!(
                message.contains(needle),
                "case {:?}: message {message:?} does not mention {needle:?}",
                c.what
            );
        }
    }
}

fn too_short_cases() -> Vec<Case> {
    vec![
        case(
            "one byte short of a header",
            plain().truncate(7439),
            HeaderError::TooShort {
                len: 7439,
                needed: 7440,
            },
            &["header", "7439", "7440"],
        ),
        case(
            "empty file",
            plain().truncate(0).file_len(0),
            HeaderError::TooShort {
                len: 0,
                needed: 7440,
            },
            &["header", "0 bytes"],
        ),
    ]
}

fn bad_magic_cases() -> Vec<Case> {
    vec![
        case(
            "qcow2 magic",
            plain().put(off::MAGIC, b"QFI\xfb"),
            HeaderError::BadMagic {
                found: u32::from_le_bytes(*b"QFI\xfb"),
            },
            &["magic", "0xfb494651"],
        ),
        case(
            "the January 2011 FVD magic",
            plain().u32(off::MAGIC, 0x5143_F5A9),
            HeaderError::BadMagic { found: 0x5143_F5A9 },
            &["magic", "0x5143f5a9"],
        ),
        case(
            "lower-case magic",
            plain().put(off::MAGIC, b"fvd\0"),
            HeaderError::BadMagic {
                found: u32::from_le_bytes(*b"fvd\0"),
            },
            &["magic"],
        ),
        case(
            "zero magic",
            plain().u32(off::MAGIC, 0),
            HeaderError::BadMagic { found: 0 },
            &["magic"],
        ),
    ]
}

fn bad_version_cases() -> Vec<Case> {
    vec![
        case(
            "create_version 0",
            plain().u32(off::CREATE_VERSION, 0),
            HeaderError::BadVersion {
                field: "create_version",
                value: 0,
            },
            &["create_version"],
        ),
        case(
            "last_open_version 0",
            plain().u32(off::LAST_OPEN_VERSION, 0),
            HeaderError::BadVersion {
                field: "last_open_version",
                value: 0,
            },
            &["last_open_version"],
        ),
    ]
}

fn bad_header_size_cases() -> Vec<Case> {
    let sizes: [(&'static str, u32); 6] = [
        ("unaligned", 8193),
        ("the raw header length, unaligned", 7440),
        ("too small", 4096),
        ("zero", 0),
        ("larger than 1 MiB", (MIB + 4096) as u32),
        ("u32::MAX", u32::MAX),
    ];
    sizes
        .into_iter()
        .map(|(what, size)| {
            case(
                what,
                plain().u32(off::HEADER_SIZE, size),
                HeaderError::BadHeaderSize { size },
                &["header_size"],
            )
        })
        .collect()
}

fn unknown_incompatible_feature_cases() -> Vec<Case> {
    let at = off::INCOMPATIBLE_FEATURES;
    vec![
        case(
            "byte 3 bit 5",
            plain().byte(at + 3, 0x20),
            HeaderError::UnknownIncompatibleFeature { bit: 29 },
            &["incompatible feature bit 29"],
        ),
        case(
            "byte 0 bit 0",
            plain().byte(at, 0x01),
            HeaderError::UnknownIncompatibleFeature { bit: 0 },
            &["incompatible feature bit 0"],
        ),
        case(
            "lowest of two bits in byte 10",
            plain().byte(at + 10, 0x06),
            HeaderError::UnknownIncompatibleFeature { bit: 81 },
            &["incompatible feature bit 81"],
        ),
        case(
            "last byte, bit 0",
            plain().byte(at + 4095, 0x01),
            HeaderError::UnknownIncompatibleFeature { bit: 32760 },
            &["incompatible feature bit 32760"],
        ),
        case(
            "last byte, bit 7 (the last bit of the header)",
            plain().byte(7439, 0x80),
            HeaderError::UnknownIncompatibleFeature { bit: 32767 },
            &["incompatible feature bit 32767"],
        ),
    ]
}

fn not_boolean_cases() -> Vec<Case> {
    vec![
        case(
            "clean_shutdown 2",
            plain().u32(off::CLEAN_SHUTDOWN, 2),
            HeaderError::NotBoolean {
                field: "clean_shutdown",
                value: 2,
            },
            &["clean_shutdown"],
        ),
        case(
            "clean_shutdown all ones",
            plain().u32(off::CLEAN_SHUTDOWN, u32::MAX),
            HeaderError::NotBoolean {
                field: "clean_shutdown",
                value: u32::MAX,
            },
            &["clean_shutdown"],
        ),
        case(
            "copy_on_read 2",
            plain().u32(off::COPY_ON_READ, 2),
            HeaderError::NotBoolean {
                field: "copy_on_read",
                value: 2,
            },
            &["copy_on_read"],
        ),
        case(
            "chunks_relocated 3",
            compact().u32(off::CHUNKS_RELOCATED, 3),
            HeaderError::NotBoolean {
                field: "chunks_relocated",
                value: 3,
            },
            &["chunks_relocated"],
        ),
        case(
            "base_img_fully_prefetched 256",
            based().u32(off::BASE_IMG_FULLY_PREFETCHED, 256),
            HeaderError::NotBoolean {
                field: "base_img_fully_prefetched",
                value: 256,
            },
            &["base_img_fully_prefetched"],
        ),
        case(
            "need_zero_init 0x01000000 (big-endian 1)",
            plain().u32(off::NEED_ZERO_INIT, 0x0100_0000),
            HeaderError::NotBoolean {
                field: "need_zero_init",
                value: 0x0100_0000,
            },
            &["need_zero_init"],
        ),
    ]
}

fn unterminated_name_cases() -> Vec<Case> {
    vec![
        case(
            "data_file without NUL",
            separate().fill(off::DATA_FILE, 1024, b'd'),
            HeaderError::UnterminatedName { field: "data_file" },
            &["data_file"],
        ),
        case(
            "data_file_fmt without NUL",
            separate().fill(off::DATA_FILE_FMT, 16, b'f'),
            HeaderError::UnterminatedName {
                field: "data_file_fmt",
            },
            &["data_file_fmt"],
        ),
        case(
            "base_img without NUL",
            based().fill(off::BASE_IMG, 1024, b'b'),
            HeaderError::UnterminatedName { field: "base_img" },
            &["base_img"],
        ),
        case(
            "base_img_fmt without NUL",
            based().fill(off::BASE_IMG_FMT, 16, b'r'),
            HeaderError::UnterminatedName {
                field: "base_img_fmt",
            },
            &["base_img_fmt"],
        ),
        case(
            "add_storage_cmd without NUL",
            compact().fill(off::ADD_STORAGE_CMD, 1024, b'c'),
            HeaderError::UnterminatedName {
                field: "add_storage_cmd",
            },
            &["add_storage_cmd"],
        ),
    ]
}

fn unsupported_format_name_cases() -> Vec<Case> {
    vec![
        case(
            "qcow2 data file",
            separate().put(off::DATA_FILE_FMT, b"qcow2\0"),
            HeaderError::UnsupportedFormatName {
                field: "data_file_fmt",
            },
            &["data_file_fmt"],
        ),
        case(
            "vmdk base",
            based().put(off::BASE_IMG_FMT, b"vmdk\0"),
            HeaderError::UnsupportedFormatName {
                field: "base_img_fmt",
            },
            &["base_img_fmt"],
        ),
    ]
}

fn virtual_size_unaligned_cases() -> Vec<Case> {
    vec![case(
        "1 GiB + 256",
        plain().u64(off::VIRTUAL_DISK_SIZE, GIB + 256),
        HeaderError::VirtualSizeUnaligned { size: GIB + 256 },
        &["virtual disk size", "512"],
    )]
}

fn virtual_size_too_large_cases() -> Vec<Case> {
    vec![
        case(
            "one sector beyond 64 PiB",
            plain().u64(off::VIRTUAL_DISK_SIZE, MAX_VIRTUAL_SIZE + 512),
            HeaderError::VirtualSizeTooLarge {
                size: MAX_VIRTUAL_SIZE + 512,
                max: MAX_VIRTUAL_SIZE,
            },
            &["virtual disk size"],
        ),
        case(
            "largest aligned u64",
            plain().u64(off::VIRTUAL_DISK_SIZE, u64::MAX - 511),
            HeaderError::VirtualSizeTooLarge {
                size: u64::MAX - 511,
                max: MAX_VIRTUAL_SIZE,
            },
            &["virtual disk size"],
        ),
    ]
}

fn bad_block_size_cases() -> Vec<Case> {
    [
        ("zero", 0),
        ("unaligned", 1000),
        ("too big", 64 * MIB + 512),
    ]
    .into_iter()
    .map(|(what, size)| {
        case(
            what,
            based().u64(off::BLOCK_SIZE, size),
            HeaderError::BadBlockSize { size },
            &["block_size"],
        )
    })
    .collect()
}

fn base_size_without_base_cases() -> Vec<Case> {
    vec![case(
        "base_img_size 512 without base",
        plain().u64(off::BASE_IMG_SIZE, 512),
        HeaderError::BaseSizeWithoutBase { size: 512 },
        &["base_img_size"],
    )]
}

fn bad_base_size_cases() -> Vec<Case> {
    vec![
        case(
            "base larger than the virtual disk",
            based().u64(off::BASE_IMG_SIZE, GIB + 512),
            HeaderError::BadBaseSize {
                size: GIB + 512,
                virtual_size: GIB,
            },
            &["base_img_size"],
        ),
        case(
            "base size not a multiple of 512",
            based().u64(off::BASE_IMG_SIZE, 1000),
            HeaderError::BadBaseSize {
                size: 1000,
                virtual_size: GIB,
            },
            &["base_img_size"],
        ),
    ]
}

fn bad_chunk_size_cases() -> Vec<Case> {
    vec![
        case(
            "zero",
            compact().u64(off::CHUNK_SIZE, 0),
            HeaderError::BadChunkSize {
                size: 0,
                block_size: 512,
            },
            &["chunk_size"],
        ),
        case(
            "not a multiple of 4096",
            compact().u64(off::CHUNK_SIZE, 6144),
            HeaderError::BadChunkSize {
                size: 6144,
                block_size: 512,
            },
            &["chunk_size"],
        ),
        case(
            "larger than 1 GiB",
            compact().u64(off::CHUNK_SIZE, 2 * GIB),
            HeaderError::BadChunkSize {
                size: 2 * GIB,
                block_size: 512,
            },
            &["chunk_size"],
        ),
        case(
            "over a base, not a multiple of the block size",
            compact_based().u64(off::CHUNK_SIZE, 17 * 4096),
            HeaderError::BadChunkSize {
                size: 17 * 4096,
                block_size: 64 * KIB,
            },
            &["chunk_size", "65536"],
        ),
    ]
}

fn too_many_chunks_cases() -> Vec<Case> {
    vec![
        case(
            "64 PiB in 1 MiB chunks",
            compact().u64(off::VIRTUAL_DISK_SIZE, MAX_VIRTUAL_SIZE),
            HeaderError::TooManyChunks {
                chunks: 1 << 36,
                max: MAX_CHUNKS,
            },
            &["chunks"],
        ),
        case(
            "exactly 2^31 chunks of 4 KiB",
            compact_4k().u64(off::VIRTUAL_DISK_SIZE, (MAX_CHUNKS + 1) * 4096),
            HeaderError::TooManyChunks {
                chunks: MAX_CHUNKS + 1,
                max: MAX_CHUNKS,
            },
            &["chunks"],
        ),
    ]
}

fn bad_storage_grow_unit_cases() -> Vec<Case> {
    [
        ("smaller than a chunk", 4096),
        ("zero", 0),
        ("not a multiple of 512", MIB + 1),
        ("above 1 TiB", (1 << 40) + 512),
        (
            "near 2^64 (wraps the grown storage length)",
            18_446_744_073_709_494_272,
        ),
    ]
    .into_iter()
    .map(|(what, unit)| {
        case(
            what,
            compact().u64(off::STORAGE_GROW_UNIT, unit),
            HeaderError::BadStorageGrowUnit {
                unit,
                chunk_size: MIB,
            },
            &["storage_grow_unit"],
        )
    })
    .collect()
}

fn region_unaligned_cases() -> Vec<Case> {
    vec![
        case(
            "bitmap offset on a sector, not a page",
            based().u64(off::BITMAP_OFFSET, 8192 + 512),
            HeaderError::RegionUnaligned {
                region: RegionKind::Bitmap,
                offset: 8704,
                size: 262_144,
            },
            &["bitmap"],
        ),
        case(
            "table size not whole pages",
            compact().u64(off::TABLE_SIZE, 4608),
            HeaderError::RegionUnaligned {
                region: RegionKind::Table,
                offset: 8192,
                size: 4608,
            },
            &["table"],
        ),
        case(
            "journal offset on a sector",
            compact().u64(off::JOURNAL_OFFSET, 12288 + 512),
            HeaderError::RegionUnaligned {
                region: RegionKind::Journal,
                offset: 12800,
                size: 16 * MIB,
            },
            &["journal"],
        ),
        case(
            "journal size not whole pages",
            compact().u64(off::JOURNAL_SIZE, 16 * MIB - 512),
            HeaderError::RegionUnaligned {
                region: RegionKind::Journal,
                offset: 12288,
                size: 16 * MIB - 512,
            },
            &["journal"],
        ),
    ]
}

fn region_misplaced_cases() -> Vec<Case> {
    vec![
        case(
            "bitmap without a base image",
            plain()
                .u64(off::BITMAP_OFFSET, 8192)
                .u64(off::BITMAP_SIZE, 4096),
            HeaderError::RegionMisplaced {
                region: RegionKind::Bitmap,
                offset: 8192,
                size: 4096,
            },
            &["bitmap"],
        ),
        case(
            "base image without a bitmap (offset without size)",
            based().u64(off::BITMAP_SIZE, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Bitmap,
                offset: 8192,
                size: 0,
            },
            &["bitmap"],
        ),
        case(
            "bitmap size without offset",
            based().u64(off::BITMAP_OFFSET, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Bitmap,
                offset: 0,
                size: 262_144,
            },
            &["bitmap"],
        ),
        case(
            "journal offset without size",
            compact().u64(off::JOURNAL_SIZE, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Journal,
                offset: 12288,
                size: 0,
            },
            &["journal"],
        ),
        case(
            "journal size without offset",
            compact().u64(off::JOURNAL_OFFSET, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Journal,
                offset: 0,
                size: 16 * MIB,
            },
            &["journal"],
        ),
        case(
            "table offset without size",
            compact().u64(off::TABLE_SIZE, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Table,
                offset: 8192,
                size: 0,
            },
            &["table"],
        ),
        case(
            "table size without offset",
            compact().u64(off::TABLE_OFFSET, 0),
            HeaderError::RegionMisplaced {
                region: RegionKind::Table,
                offset: 0,
                size: 4096,
            },
            &["table"],
        ),
    ]
}

fn region_too_small_cases() -> Vec<Case> {
    vec![
        case(
            "bitmap of one page for 2^21 blocks",
            based().u64(off::BITMAP_SIZE, 4096),
            HeaderError::RegionTooSmall {
                region: RegionKind::Bitmap,
                size: 4096,
                needed: 262_144,
            },
            &["bitmap"],
        ),
        case(
            "virtual disk grown without growing the table",
            compact().u64(off::VIRTUAL_DISK_SIZE, 2 * GIB),
            HeaderError::RegionTooSmall {
                region: RegionKind::Table,
                size: 4096,
                needed: 8192,
            },
            &["table"],
        ),
        case(
            "2^31 - 1 chunks (the most allowed) in a 1 MiB table",
            compact_4k().u64(off::VIRTUAL_DISK_SIZE, MAX_CHUNKS * 4096),
            HeaderError::RegionTooSmall {
                region: RegionKind::Table,
                size: MIB,
                needed: 8 * GIB,
            },
            &["table"],
        ),
    ]
}

fn region_overflow_cases() -> Vec<Case> {
    let top = u64::MAX - 4095;
    vec![
        case(
            "bitmap at the top of the address space",
            based().u64(off::BITMAP_OFFSET, top),
            HeaderError::RegionOverflow {
                region: RegionKind::Bitmap,
            },
            &["bitmap"],
        ),
        case(
            "table at the top of the address space",
            compact().u64(off::TABLE_OFFSET, top),
            HeaderError::RegionOverflow {
                region: RegionKind::Table,
            },
            &["table"],
        ),
        case(
            "journal at the top of the address space",
            compact().u64(off::JOURNAL_OFFSET, top),
            HeaderError::RegionOverflow {
                region: RegionKind::Journal,
            },
            &["journal"],
        ),
    ]
}

fn region_overlap_cases() -> Vec<Case> {
    vec![
        case(
            "journal moved onto the table",
            compact().u64(off::JOURNAL_OFFSET, 8192),
            HeaderError::RegionOverlap {
                a: RegionKind::Journal,
                b: RegionKind::Table,
            },
            &["journal", "table"],
        ),
        case(
            "bitmap inside the header area",
            based().u64(off::BITMAP_OFFSET, 4096),
            HeaderError::RegionOverlap {
                a: RegionKind::Header,
                b: RegionKind::Bitmap,
            },
            &["header", "bitmap"],
        ),
        case(
            "journal inside the header area",
            based().u64(off::JOURNAL_OFFSET, 4096),
            HeaderError::RegionOverlap {
                a: RegionKind::Header,
                b: RegionKind::Journal,
            },
            &["header", "journal"],
        ),
        case(
            "table moved onto the bitmap",
            compact_based().u64(off::TABLE_OFFSET, 8192),
            HeaderError::RegionOverlap {
                a: RegionKind::Bitmap,
                b: RegionKind::Table,
            },
            &["bitmap", "table"],
        ),
        case(
            "journal moved onto the bitmap",
            compact_based().u64(off::JOURNAL_OFFSET, 8192),
            HeaderError::RegionOverlap {
                a: RegionKind::Bitmap,
                b: RegionKind::Journal,
            },
            &["bitmap", "journal"],
        ),
    ]
}

fn region_beyond_file_cases() -> Vec<Case> {
    vec![
        case(
            "file shorter than the table end",
            compact_no_journal().file_len(12287),
            HeaderError::RegionBeyondFile {
                region: RegionKind::Table,
                end: 12288,
                file_len: 12287,
            },
            &["table", "12288", "12287"],
        ),
        case(
            "file shorter than the header area",
            plain().file_len(8191),
            HeaderError::RegionBeyondFile {
                region: RegionKind::Header,
                end: 8192,
                file_len: 8191,
            },
            &["header"],
        ),
        case(
            "file ends in the journal",
            compact().file_len(16 * MIB),
            HeaderError::RegionBeyondFile {
                region: RegionKind::Journal,
                end: 12288 + 16 * MIB,
                file_len: 16 * MIB,
            },
            &["journal"],
        ),
        case(
            "file ends after the header",
            based().file_len(8192),
            HeaderError::RegionBeyondFile {
                region: RegionKind::Bitmap,
                end: 8192 + 262_144,
                file_len: 8192,
            },
            &["bitmap"],
        ),
    ]
}

fn bad_journal_epoch_cases() -> Vec<Case> {
    vec![
        case(
            "one above 2^63",
            compact().u64(off::STABLE_JOURNAL_EPOCH, (1 << 63) + 1),
            HeaderError::BadJournalEpoch {
                epoch: (1 << 63) + 1,
            },
            &["stable_journal_epoch"],
        ),
        case(
            "the largest u64 (moving on would wrap to 0)",
            plain().u64(off::STABLE_JOURNAL_EPOCH, u64::MAX),
            HeaderError::BadJournalEpoch { epoch: u64::MAX },
            &["stable_journal_epoch"],
        ),
    ]
}

fn data_beyond_addressable_cases() -> Vec<Case> {
    let max = i64::MAX as u64;
    vec![
        case(
            "plain image data ending past 2^63 - 1",
            plain().u64(off::DATA_OFFSET, max - 4095),
            HeaderError::DataBeyondAddressable {
                offset: max - 4095,
                max,
            },
            &["data_offset"],
        ),
        case(
            "compact: the last physical chunk would wrap onto the header",
            compact().u64(off::DATA_OFFSET, 0u64.wrapping_sub(0x7FFF_FFFF * MIB)),
            HeaderError::DataBeyondAddressable {
                offset: 0u64.wrapping_sub(0x7FFF_FFFF * MIB),
                max,
            },
            &["data_offset"],
        ),
        case(
            "compact: one growth step past the last chunk exceeds 2^63 - 1",
            compact().u64(off::DATA_OFFSET, max - (1 << 31) * MIB - 4095),
            HeaderError::DataBeyondAddressable {
                offset: max - (1 << 31) * MIB - 4095,
                max,
            },
            &["data_offset"],
        ),
    ]
}

fn bad_data_offset_cases() -> Vec<Case> {
    vec![
        case(
            "unaligned",
            plain().u64(off::DATA_OFFSET, 8192 + 512),
            HeaderError::BadDataOffset {
                offset: 8704,
                metadata_end: 8192,
            },
            &["data_offset"],
        ),
        case(
            "inside the header area",
            plain().u64(off::DATA_OFFSET, 4096),
            HeaderError::BadDataOffset {
                offset: 4096,
                metadata_end: 8192,
            },
            &["data_offset"],
        ),
        case(
            "zero with data in the same file",
            plain().u64(off::DATA_OFFSET, 0),
            HeaderError::BadDataOffset {
                offset: 0,
                metadata_end: 8192,
            },
            &["data_offset"],
        ),
        case(
            "inside the journal",
            compact().u64(off::DATA_OFFSET, 12288),
            HeaderError::BadDataOffset {
                offset: 12288,
                metadata_end: 12288 + 16 * MIB,
            },
            &["data_offset"],
        ),
        case(
            "data would end beyond 2^64",
            plain().u64(off::DATA_OFFSET, u64::MAX - 4095),
            HeaderError::BadDataOffset {
                offset: u64::MAX - 4095,
                metadata_end: 8192,
            },
            &["data_offset"],
        ),
        case(
            "unaligned in a separate data file",
            separate().u64(off::DATA_OFFSET, 512),
            HeaderError::BadDataOffset {
                offset: 512,
                metadata_end: 0,
            },
            &["data_offset"],
        ),
    ]
}

fn bad_tuning_cases() -> Vec<Case> {
    let t = |field: &'static str, value: u64| HeaderError::BadTuning { field, value };
    vec![
        case(
            "more than 1024 prefetch slots",
            plain().u32(off::NUM_PREFETCH_SLOTS, 1025),
            t("num_prefetch_slots", 1025),
            &["num_prefetch_slots"],
        ),
        case(
            "prefetch enabled with no slot",
            based_prefetch().u32(off::NUM_PREFETCH_SLOTS, 0),
            t("num_prefetch_slots", 0),
            &["num_prefetch_slots"],
        ),
        case(
            "bytes_per_prefetch not a multiple of 512",
            plain().u64(off::BYTES_PER_PREFETCH, 1000),
            t("bytes_per_prefetch", 1000),
            &["bytes_per_prefetch"],
        ),
        case(
            "bytes_per_prefetch above 256 MiB",
            plain().u64(off::BYTES_PER_PREFETCH, 512 * MIB),
            t("bytes_per_prefetch", 512 * MIB),
            &["bytes_per_prefetch"],
        ),
        case(
            "prefetch enabled with an empty unit",
            based_prefetch().u64(off::BYTES_PER_PREFETCH, 0),
            t("bytes_per_prefetch", 0),
            &["bytes_per_prefetch"],
        ),
        case(
            "read measure time above a day",
            plain().u64(off::PREFETCH_READ_THROUGHPUT_MEASURE_TIME, 86_400_001),
            t("prefetch_read_throughput_measure_time", 86_400_001),
            &["prefetch_read_throughput_measure_time"],
        ),
        case(
            "write measure time above a day",
            plain().u64(off::PREFETCH_WRITE_THROUGHPUT_MEASURE_TIME, u64::MAX),
            t("prefetch_write_throughput_measure_time", u64::MAX),
            &["prefetch_write_throughput_measure_time"],
        ),
        case(
            "throttle time above a day",
            plain().u64(off::PREFETCH_THROTTLE_TIME, 86_400_001),
            t("prefetch_throttle_time", 86_400_001),
            &["prefetch_throttle_time"],
        ),
        case(
            "read minimum above the read maximum",
            plain().u64(off::PREFETCH_MAX_READ_THROUGHPUT, 1000),
            t("prefetch_min_read_throughput", 5120),
            &["prefetch_min_read_throughput"],
        ),
        case(
            "read minimum raised above the read maximum",
            plain().u64(off::PREFETCH_MIN_READ_THROUGHPUT, 2_000_000_000),
            t("prefetch_min_read_throughput", 2_000_000_000),
            &["prefetch_min_read_throughput"],
        ),
        case(
            "write minimum above the write maximum",
            plain().u64(off::PREFETCH_MIN_WRITE_THROUGHPUT, 1_000_000_001),
            t("prefetch_min_write_throughput", 1_000_000_001),
            &["prefetch_min_write_throughput"],
        ),
    ]
}

// ---- one test per rule ---------------------------------------------------------------

#[test]
fn too_short() {
    check(too_short_cases());
}
#[test]
fn bad_magic() {
    check(bad_magic_cases());
}
#[test]
fn bad_version() {
    check(bad_version_cases());
}
#[test]
fn bad_header_size() {
    check(bad_header_size_cases());
}
#[test]
fn unknown_incompatible_feature() {
    check(unknown_incompatible_feature_cases());
}
#[test]
fn not_boolean() {
    check(not_boolean_cases());
}
#[test]
fn unterminated_name() {
    check(unterminated_name_cases());
}
#[test]
fn unsupported_format_name() {
    check(unsupported_format_name_cases());
}
#[test]
fn virtual_size_unaligned() {
    check(virtual_size_unaligned_cases());
}
#[test]
fn virtual_size_too_large() {
    check(virtual_size_too_large_cases());
}
#[test]
fn bad_block_size() {
    check(bad_block_size_cases());
}
#[test]
fn base_size_without_base() {
    check(base_size_without_base_cases());
}
#[test]
fn bad_base_size() {
    check(bad_base_size_cases());
}
#[test]
fn bad_chunk_size() {
    check(bad_chunk_size_cases());
}
#[test]
fn too_many_chunks() {
    check(too_many_chunks_cases());
}
#[test]
fn bad_journal_epoch() {
    check(bad_journal_epoch_cases());
}
#[test]
fn data_beyond_addressable() {
    check(data_beyond_addressable_cases());
}
#[test]
fn bad_storage_grow_unit() {
    check(bad_storage_grow_unit_cases());
}
#[test]
fn region_unaligned() {
    check(region_unaligned_cases());
}
#[test]
fn region_misplaced() {
    check(region_misplaced_cases());
}
#[test]
fn region_too_small() {
    check(region_too_small_cases());
}
#[test]
fn region_overflow() {
    check(region_overflow_cases());
}
#[test]
fn region_overlap() {
    check(region_overlap_cases());
}
#[test]
fn region_beyond_file() {
    check(region_beyond_file_cases());
}
#[test]
fn bad_data_offset() {
    check(bad_data_offset_cases());
}
#[test]
fn bad_tuning() {
    check(bad_tuning_cases());
}

fn all_cases() -> Vec<Case> {
    [
        too_short_cases as fn() -> Vec<Case>,
        bad_magic_cases,
        bad_version_cases,
        bad_header_size_cases,
        unknown_incompatible_feature_cases,
        not_boolean_cases,
        unterminated_name_cases,
        unsupported_format_name_cases,
        virtual_size_unaligned_cases,
        virtual_size_too_large_cases,
        bad_block_size_cases,
        base_size_without_base_cases,
        bad_base_size_cases,
        bad_chunk_size_cases,
        too_many_chunks_cases,
        bad_storage_grow_unit_cases,
        region_unaligned_cases,
        region_misplaced_cases,
        region_too_small_cases,
        region_overflow_cases,
        region_overlap_cases,
        region_beyond_file_cases,
        bad_data_offset_cases,
        data_beyond_addressable_cases,
        bad_journal_epoch_cases,
        bad_tuning_cases,
    ]
    .into_iter()
    .flat_map(|f| f())
    .collect()
}

#[test]
fn every_case_has_its_own_message() {
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    let cases = all_cases();
    assert!(cases.len() >= 90, "{} cases", cases.len());
    for c in cases {
        let message = c.want.to_string();
        if let Some(other) = seen.insert(message.clone(), c.what) {
            panic!(
                "cases {other:?} and {:?} share the message {message:?}",
                c.what
            );
        }
    }
}

#[test]
fn every_variant_is_covered() {
    let mut variants: Vec<&'static str> = all_cases()
        .iter()
        .map(|c| match c.want {
            HeaderError::TooShort { .. } => "TooShort",
            HeaderError::BadMagic { .. } => "BadMagic",
            HeaderError::BadVersion { .. } => "BadVersion",
            HeaderError::BadHeaderSize { .. } => "BadHeaderSize",
            HeaderError::NotBoolean { .. } => "NotBoolean",
            HeaderError::UnterminatedName { .. } => "UnterminatedName",
            HeaderError::UnsupportedFormatName { .. } => "UnsupportedFormatName",
            HeaderError::UnknownIncompatibleFeature { .. } => "UnknownIncompatibleFeature",
            HeaderError::VirtualSizeUnaligned { .. } => "VirtualSizeUnaligned",
            HeaderError::VirtualSizeTooLarge { .. } => "VirtualSizeTooLarge",
            HeaderError::BadBlockSize { .. } => "BadBlockSize",
            HeaderError::BaseSizeWithoutBase { .. } => "BaseSizeWithoutBase",
            HeaderError::BadBaseSize { .. } => "BadBaseSize",
            HeaderError::BadChunkSize { .. } => "BadChunkSize",
            HeaderError::TooManyChunks { .. } => "TooManyChunks",
            HeaderError::BadStorageGrowUnit { .. } => "BadStorageGrowUnit",
            HeaderError::RegionUnaligned { .. } => "RegionUnaligned",
            HeaderError::RegionMisplaced { .. } => "RegionMisplaced",
            HeaderError::RegionTooSmall { .. } => "RegionTooSmall",
            HeaderError::RegionOverflow { .. } => "RegionOverflow",
            HeaderError::RegionOverlap { .. } => "RegionOverlap",
            HeaderError::RegionBeyondFile { .. } => "RegionBeyondFile",
            HeaderError::BadDataOffset { .. } => "BadDataOffset",
            HeaderError::DataBeyondAddressable { .. } => "DataBeyondAddressable",
            HeaderError::BadJournalEpoch { .. } => "BadJournalEpoch",
            HeaderError::BadTuning { .. } => "BadTuning",
            // HeaderError is non_exhaustive: a variant added later lands here and fails
            // the count below until it is named and given a corpus case.
            _ => "a variant this test does not name",
        })
        .collect();
    variants.sort_unstable();
    variants.dedup();
    assert_eq!(variants.len(), 26);
}

// ---- what readers must accept --------------------------------------------------------

#[test]
fn any_nonzero_version_is_accepted() {
    plain()
        .u32(off::CREATE_VERSION, 7)
        .u32(off::LAST_OPEN_VERSION, u32::MAX)
        .parse()
        .unwrap();
}

#[test]
fn a_larger_header_area_with_unknown_trailing_bytes_is_accepted() {
    let mut image = plain()
        .u32(off::HEADER_SIZE, 16384)
        .u64(off::DATA_OFFSET, 16384)
        .file_len(16384);
    image.bytes.resize(16384, 0xA5);
    image.parse().unwrap();
    // The largest header area.
    let mut image = plain()
        .u32(off::HEADER_SIZE, MIB as u32)
        .u64(off::DATA_OFFSET, MIB)
        .file_len(MIB);
    image.bytes.resize(MIB as usize, 0x5A);
    image.parse().unwrap();
}

#[test]
fn hints_and_runtime_fields_take_any_value() {
    compact()
        .u64(off::JOURNAL_BUF_SIZE, u64::MAX)
        .u64(off::JOURNAL_CLEAN_BUF_PERIOD, u64::MAX)
        .put(off::ADD_STORAGE_CMD, b"builtin:lvextend\0")
        .u64(off::STABLE_JOURNAL_EPOCH, 1 << 63)
        .u32(off::CLEAN_SHUTDOWN, 0)
        .u32(off::CHUNKS_RELOCATED, 1)
        .u64(off::MAX_OUTSTANDING_COPY_ON_READ_DATA, 0)
        .i64(off::PREFETCH_START_DELAY, i64::MIN)
        .parse()
        .unwrap();
}

#[test]
fn disabled_prefetch_allows_zero_slots_and_units() {
    plain()
        .u32(off::NUM_PREFETCH_SLOTS, 0)
        .u64(off::BYTES_PER_PREFETCH, 0)
        .parse()
        .unwrap();
    based()
        .i64(off::PREFETCH_START_DELAY, 0)
        .u32(off::NUM_PREFETCH_SLOTS, 0)
        .parse()
        .unwrap();
}

#[test]
fn zero_maximum_throughput_means_no_cap() {
    plain()
        .u64(off::PREFETCH_MAX_READ_THROUGHPUT, 0)
        .u64(off::PREFETCH_MAX_WRITE_THROUGHPUT, 0)
        .parse()
        .unwrap();
}

#[test]
fn base_formats_and_data_file_formats_that_are_accepted() {
    for format in [&b"\0\0\0\0"[..], b"raw\0", b"fvd\0", b"qed\0"] {
        based().put(off::BASE_IMG_FMT, format).parse().unwrap();
    }
    for format in [&b"\0\0\0\0"[..], b"raw\0"] {
        separate().put(off::DATA_FILE_FMT, format).parse().unwrap();
    }
}

#[test]
fn fully_prefetched_and_zero_init_flags_are_accepted() {
    based()
        .u32(off::BASE_IMG_FULLY_PREFETCHED, 1)
        .u32(off::NEED_ZERO_INIT, 1)
        .parse()
        .unwrap();
}

#[test]
fn virtual_disk_may_grow_past_the_base_without_a_new_bitmap() {
    // The bitmap covers [0, base_img_size) only.
    based()
        .u64(off::VIRTUAL_DISK_SIZE, 4 * GIB)
        .parse()
        .unwrap();
}

#[test]
fn a_separate_data_file_may_start_at_any_page() {
    separate().u64(off::DATA_OFFSET, 4096).parse().unwrap();
}

#[test]
fn region_order_is_free_as_long_as_regions_are_disjoint() {
    // Swap the compact image's table and journal: journal at 8192, table after it.
    compact()
        .u64(off::JOURNAL_OFFSET, 8192)
        .u64(off::TABLE_OFFSET, 8192 + 16 * MIB)
        .parse()
        .unwrap();
}

/// Defends a rule validate.rs does not enforce yet: `bytes_per_prefetch` must be 0 or a
/// multiple of 512, but `is_aligned(unit.max(512), 512)` lets 1..=511 through.
#[test]
fn bytes_per_prefetch_below_a_sector_is_refused() {
    assert_eq!(
        plain().u64(off::BYTES_PER_PREFETCH, 100).parse(),
        Err(HeaderError::BadTuning {
            field: "bytes_per_prefetch",
            value: 100
        })
    );
}
