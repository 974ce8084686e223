//! Unit tests of the partition table reader: disks built byte by byte in memory.
// Test disks are a few KiB: offsets fit usize.
#![allow(clippy::cast_possible_truncation)]

use super::gpt::{le_guid, CRC32};
use super::*;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

const SECTORS: u64 = 100;
const LINUX: [u8; 16] = le_guid(0x0FC63DAF, 0x8483, 0x4772, 0x8E79, 0x3D69D8477DE4);
const EFI: [u8; 16] = le_guid(0xC12A7328, 0xF81F, 0x11D2, 0xBA4B, 0x00A0C93EC93B);

fn put(disk: &mut [u8], at: u64, bytes: &[u8]) {
    let at = at as usize;
    disk[at..at + bytes.len()].copy_from_slice(bytes);
}

fn mbr_entry(disk: &mut [u8], slot: usize, status: u8, kind: u8, first: u32, sectors: u32) {
    let at = 446 + 16 * slot;
    disk[at] = status;
    disk[at + 4] = kind;
    disk[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
    disk[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
}

/// A GPT header for LBA `me` whose array is at `array`, with both CRCs set.
fn header(me: u64, other: u64, array: u64, count: u32, array_crc: u32) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&me.to_le_bytes());
    h[32..40].copy_from_slice(&other.to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&(SECTORS - 34).to_le_bytes());
    h[56..72].copy_from_slice(&[0x11; 16]);
    h[72..80].copy_from_slice(&array.to_le_bytes());
    h[80..84].copy_from_slice(&count.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    reseal(&mut h);
    h
}

/// Recomputes a header's CRC after an edit.
fn reseal(h: &mut [u8]) {
    h[16..20].fill(0);
    let crc = CRC32.checksum(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// A 100-sector GPT disk with `parts` (type, first, last, name) and both headers.
fn gpt_disk(parts: &[([u8; 16], u64, u64, &str)]) -> Vec<u8> {
    let mut disk = vec![0u8; (SECTORS * SECTOR) as usize];
    mbr_entry(&mut disk, 0, 0, 0xee, 1, (SECTORS - 1) as u32);
    let mut array = vec![0u8; 128 * 128];
    for (i, (kind, first, last, name)) in parts.iter().enumerate() {
        let e = &mut array[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(kind);
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, unit) in name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let crc = CRC32.checksum(&array);
    put(&mut disk, 2 * SECTOR, &array);
    put(&mut disk, (SECTORS - 33) * SECTOR, &array);
    put(&mut disk, SECTOR, &header(1, SECTORS - 1, 2, 128, crc));
    let backup = header(SECTORS - 1, 1, SECTORS - 33, 128, crc);
    put(&mut disk, (SECTORS - 1) * SECTOR, &backup);
    disk
}

/// Runs a scan over an in-memory disk; returns the table and the last bytes read.
fn scan(disk: &[u8]) -> Result<(Table, Vec<u8>), PartitionError> {
    let mut s = Scan::new(disk.len() as u64);
    let mut read = s.first_read().unwrap();
    for _ in 0..8 {
        let bytes = disk[read.offset as usize..read.offset as usize + read.len].to_vec();
        match s.feed(&bytes)? {
            Feed::Read(next) => read = next,
            Feed::Done(table) => return Ok((table, bytes)),
        }
    }
    panic!("the scan did not finish");
}

fn listed(table: &Table, array: &[u8]) -> Vec<Result<GptPartition, PartitionError>> {
    match table {
        Table::Gpt { header, .. } => header.entries(array).unwrap().collect(),
        other => panic!("not a GPT: {other:?}"),
    }
}

#[test]
fn a_disk_without_the_boot_signature_has_no_table() {
    let disk = vec![0u8; 4096];
    assert_eq!(scan(&disk).unwrap().0, Table::None);
    assert_eq!(Scan::new(100).first_read(), None);
}

#[test]
fn mbr_lists_used_primary_entries_and_marks_the_extended_one() {
    let mut disk = vec![0u8; 4096];
    mbr_entry(&mut disk, 0, 0x80, 0x83, 2048, 4096);
    mbr_entry(&mut disk, 2, 0, 0x05, 8192, 1000);
    mbr_entry(&mut disk, 3, 0, 0x82, 0, 0); // a type with no sectors is unused
    disk[440..444].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    let Table::Mbr(mbr) = scan(&disk).unwrap().0 else {
        panic!("not an MBR")
    };
    assert_eq!(mbr.disk_id, 0xdead_beef);
    let parts: Vec<_> = mbr.partitions().copied().collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        (parts[0].index, parts[0].bootable, parts[0].last_lba()),
        (1, true, 6143)
    );
    assert_eq!(parts[0].type_name(), Some("Linux"));
    assert!(!parts[0].is_extended());
    assert_eq!((parts[1].index, parts[1].is_extended()), (3, true));
}

#[test]
fn mbr_entry_at_the_top_of_32_bit_lba_does_not_wrap() {
    let mut disk = vec![0u8; 512];
    mbr_entry(&mut disk, 0, 0, 0x83, u32::MAX, u32::MAX);
    let Table::Mbr(mbr) = scan(&disk).unwrap().0 else {
        panic!("not an MBR")
    };
    let p = mbr.partitions().next().unwrap();
    assert_eq!(p.last_lba(), 2 * u64::from(u32::MAX) - 1);
}

#[test]
fn gpt_lists_used_entries_with_types_guids_and_names() {
    let disk = gpt_disk(&[(EFI, 34, 40, "esp"), (LINUX, 41, 66, "root fs ü")]);
    let (table, array) = scan(&disk).unwrap();
    let Table::Gpt {
        header,
        from_backup,
        ..
    } = table
    else {
        panic!("not a GPT")
    };
    assert!(!from_backup);
    assert_eq!(
        header.disk_guid.to_string(),
        "11111111-1111-1111-1111-111111111111"
    );
    let parts: Vec<_> = listed(&table, &array)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].type_name(), Some("EFI System"));
    assert_eq!(
        parts[0].type_guid.to_string(),
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    );
    assert_eq!(
        (parts[1].index, parts[1].first_lba, parts[1].sectors()),
        (2, 41, 26)
    );
    assert_eq!(parts[1].name().to_string(), "root fs ü");
    assert_eq!(parts[1].type_name(), Some("Linux filesystem"));
}

#[test]
fn a_damaged_primary_gpt_header_falls_back_to_the_backup_at_the_last_lba() {
    let mut disk = gpt_disk(&[(LINUX, 34, 66, "data")]);
    disk[SECTOR as usize + 60] ^= 1; // the disk GUID, under the header CRC
    let (table, array) = scan(&disk).unwrap();
    assert!(matches!(
        table,
        Table::Gpt {
            from_backup: true,
            ..
        }
    ));
    assert_eq!(listed(&table, &array).len(), 1);
}

#[test]
fn both_gpt_headers_damaged_is_the_primary_header_crc_error() {
    let mut disk = gpt_disk(&[(LINUX, 34, 66, "data")]);
    disk[SECTOR as usize + 60] ^= 1;
    disk[((SECTORS - 1) * SECTOR) as usize + 60] ^= 1;
    assert!(matches!(
        scan(&disk),
        Err(PartitionError::HeaderCrc { lba: 1, .. })
    ));
}

#[test]
fn a_damaged_entry_array_is_refused_by_its_crc() {
    let mut disk = gpt_disk(&[(LINUX, 34, 66, "data")]);
    disk[2 * SECTOR as usize + 40] ^= 1;
    assert!(matches!(scan(&disk), Err(PartitionError::ArrayCrc { .. })));
}

/// Rewrites the primary header with `edit`, keeps its CRC right, and parses it.
fn edited(edit: impl Fn(&mut [u8])) -> Result<GptHeader, PartitionError> {
    let disk = gpt_disk(&[]);
    let mut h = disk[SECTOR as usize..2 * SECTOR as usize].to_vec();
    edit(&mut h);
    reseal(&mut h);
    GptHeader::parse(&h, 1, SECTORS)
}

#[test]
fn hostile_gpt_header_fields_get_typed_errors() {
    let count = |n: u32| move |h: &mut [u8]| h[80..84].copy_from_slice(&n.to_le_bytes());
    assert!(matches!(
        edited(count(u32::MAX)),
        Err(PartitionError::ArrayTooLarge { .. })
    ));
    let size = |n: u32| move |h: &mut [u8]| h[84..88].copy_from_slice(&n.to_le_bytes());
    assert_eq!(
        edited(size(100)),
        Err(PartitionError::BadEntrySize { size: 100 })
    );
    assert_eq!(
        edited(size(0)),
        Err(PartitionError::BadEntrySize { size: 0 })
    );
    let array = |lba: u64| move |h: &mut [u8]| h[72..80].copy_from_slice(&lba.to_le_bytes());
    // Over the header itself, over the partitions' area, past the disk, at u64::MAX.
    for lba in [1, 40, SECTORS - 10, u64::MAX] {
        assert!(
            matches!(
                edited(array(lba)),
                Err(PartitionError::ArrayMisplaced { .. })
            ),
            "{lba}"
        );
    }
    let last = |lba: u64| move |h: &mut [u8]| h[48..56].copy_from_slice(&lba.to_le_bytes());
    assert!(matches!(
        edited(last(SECTORS)),
        Err(PartitionError::BadUsableRange { .. })
    ));
    assert!(matches!(
        edited(last(10)),
        Err(PartitionError::BadUsableRange { .. })
    ));
    let me = |lba: u64| move |h: &mut [u8]| h[24..32].copy_from_slice(&lba.to_le_bytes());
    assert_eq!(
        edited(me(5)),
        Err(PartitionError::WrongHeaderLba {
            found: 5,
            expected: 1
        })
    );
    let hsize = |n: u32| move |h: &mut [u8]| h[12..16].copy_from_slice(&n.to_le_bytes());
    assert_eq!(
        edited(hsize(4096)),
        Err(PartitionError::BadHeaderSize { size: 4096 })
    );
    // The messages name the numbers.
    let text = edited(size(100)).unwrap_err().to_string();
    assert!(text.contains("entry size 100"), "{text}");
}

#[test]
fn a_gpt_entry_outside_the_usable_sectors_is_an_error_row_and_the_listing_goes_on() {
    let disk = gpt_disk(&[
        (LINUX, 60, 50, "reversed"),
        (LINUX, 10, 20, "low"),
        (EFI, 34, 40, "ok"),
    ]);
    let (table, array) = scan(&disk).unwrap();
    let rows = listed(&table, &array);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        Err(PartitionError::EntryOutOfRange {
            index: 1,
            first: 60,
            last: 50
        })
    );
    assert!(matches!(
        rows[1],
        Err(PartitionError::EntryOutOfRange { index: 2, .. })
    ));
    assert_eq!(rows[2].as_ref().unwrap().index, 3);
}

#[test]
fn a_protective_mbr_on_a_two_sector_disk_is_listed_as_an_mbr() {
    let mut disk = vec![0u8; 1024];
    mbr_entry(&mut disk, 0, 0, 0xee, 1, 1);
    assert!(matches!(scan(&disk).unwrap().0, Table::Mbr(m) if m.is_protective()));
}

#[test]
fn a_short_array_read_is_an_error_not_a_panic() {
    let disk = gpt_disk(&[]);
    let h = GptHeader::parse(&disk[512..1024], 1, SECTORS).unwrap();
    assert!(matches!(
        h.entries(&[0u8; 100]),
        Err(PartitionError::ShortRead { .. })
    ));
    assert!(GptHeader::parse(&[0u8; 10], 1, SECTORS).is_err());
}

#[test]
fn arbitrary_sectors_give_a_table_or_a_typed_error_never_a_panic() {
    // Random sectors with a boot signature and a protective entry, so the GPT path runs;
    // disk sizes from one sector to 2^64 - 1 bytes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        let size = match round % 4 {
            0 => 512,
            1 => u64::MAX,
            2 => next() % (1 << 40),
            _ => 1 << 20,
        };
        let mut s = Scan::new(size);
        let Some(mut read) = s.first_read() else {
            continue;
        };
        for _ in 0..4 {
            assert!(read.len <= MAX_ARRAY_BYTES as usize && read.len % 512 == 0);
            let mut bytes: Vec<u8> = (0..read.len).map(|_| next() as u8).collect();
            if read.offset == 0 {
                bytes[450] = 0xee;
                bytes[510] = 0x55;
                bytes[511] = 0xaa;
            } else if round % 2 == 0 && bytes.len() >= 512 {
                bytes[..8].copy_from_slice(b"EFI PART");
                bytes[12..16].copy_from_slice(&92u32.to_le_bytes());
                reseal(&mut bytes[..512]);
            }
            match s.feed(&bytes) {
                Ok(Feed::Read(r)) => read = r,
                Ok(Feed::Done(_)) | Err(_) => break,
            }
        }
    }
}
