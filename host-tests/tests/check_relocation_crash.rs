//! `check -r leaks` releasing leaked storage below used storage by moving the used units
//! down into it (FVD physical chunks; QED data clusters and L2 tables), cut at every write,
//! flush and length change the repair makes: every image a power cut can leave behind
//! (nothing pending, everything, each prefix torn, random subsets) checks with no
//! corruption, reads the same guest data, and a repair run on it then releases every leak.

mod relocation_support;

use fvd_core::check::fvd::{FvdCheck, FvdFiles};
use fvd_core::check::{Checker, Repair, RepairMode, Report};
use fvd_host::testing::memstore::{survivors, MemStorage};
use relocation_support::*;

/// Cuts the repair of `image` after every write, flush and length change in turn and
/// checks what each power cut can leave; returns how many cut points there were.
fn sweep(format: Format, image: &MemStorage, size: u64) -> usize {
    let before = guest(image, size);
    let leaks = counts(format, image, SMALL).leaks;
    assert!(leaks > 0, "the image has leaks to release");
    let mut cut = 0;
    loop {
        let mut storage = image.clone();
        let checker = scanner(format, &mut storage, SMALL, Some(RepairMode::Leaks));
        if drive(checker, &mut storage, cut, &mut Vec::new()).is_some() {
            break;
        }
        for (name, survivor) in survivors(&storage, cut as u64) {
            let c = counts(format, &survivor, SMALL);
            assert_eq!(c.corruptions, 0, "cut {cut} ({name}): corruption {c:?}");
            assert!(c.leaks <= leaks + 8, "cut {cut} ({name}): {c:?}");
            assert!(
                guest(&survivor, size) == before,
                "cut {cut} ({name}): the guest data changed"
            );
            let mut again = survivor.clone();
            repair(format, &mut again, SMALL);
            let c = counts(format, &again, SMALL);
            assert_eq!(
                (c.corruptions, c.leaks),
                (0, 0),
                "cut {cut} ({name}): a repair after the cut left {c:?}"
            );
            assert!(
                guest(&again, size) == before,
                "cut {cut} ({name}): the guest data changed in the second repair"
            );
        }
        cut += 1;
    }
    cut
}

#[test]
fn fvd_relocation_cut_at_every_write_flush_and_truncation_leaves_the_guest_data_and_no_corruption()
{
    let image = fvd_image(64, 12, &[1, 4, 5, 9]);
    let size = 64 * K4;
    let cuts = sweep(Format::Fvd, &image, size);
    // Dirty, the flag, three moves of three steps, the flush, truncation, clean.
    assert!(cuts >= 14, "{cuts} cut points");
    let mut storage = image.clone();
    let (lines, report) = repair(Format::Fvd, &mut storage, SMALL);
    assert!(
        lines.contains(&Repair::RelocatedChunks { chunks: 3 }),
        "{lines:?}"
    );
    let Report::Repaired(fixed) = report else {
        panic!("{report:?}")
    };
    // Chunks 1, 4 and 5 filled; chunk 9, above the eight in use, truncated away with them.
    assert_eq!(fixed.leaks_fixed, 4);
    assert_eq!(counts(Format::Fvd, &storage, SMALL).leaks, 0);
    let (_, layout) =
        fvd_core::fvd::parse(&image.image.current, image.image.current.len() as u64).unwrap();
    assert_eq!(
        storage.image.current.len() as u64,
        layout.data_offset + 8 * K4
    );
    assert!(guest(&storage, size) == guest(&image, size));
}

/// Leaks: the data cluster of guest 4 KiB (its L2 entry zeroed), and the L2 table of the
/// second 4 MiB with its two data clusters (its L1 entry zeroed); the L2 tables of the
/// third and fourth 4 MiB and their data lie after them.
fn qed_leaky() -> (MemStorage, u64) {
    let size = 16 << 20;
    let m4 = 4 << 20;
    let writes = [0, K4, m4, m4 + K4, 2 * m4, 3 * m4, 3 * m4 + K4];
    let image = qed_image(size, &writes, |layout, bytes| {
        let l1 = layout.l1_table.offset;
        let l2 = u64_at(bytes, l1);
        vec![l2 + 8, l1 + 8]
    });
    (image, size)
}

#[test]
fn qed_relocation_cut_at_every_write_flush_and_truncation_leaves_the_guest_data_and_no_corruption()
{
    let (image, size) = qed_leaky();
    let cuts = sweep(Format::Qed, &image, size);
    assert!(cuts >= 14, "{cuts} cut points");
    let mut storage = image.clone();
    let (lines, _) = repair(Format::Qed, &mut storage, SMALL);
    assert!(
        lines
            .iter()
            .any(|l| matches!(l, Repair::RelocatedClusters { tables, .. } if *tables > 0)),
        "an L2 table was moved: {lines:?}"
    );
    let c = counts(Format::Qed, &storage, SMALL);
    assert_eq!((c.corruptions, c.leaks, c.dirty), (0, 0, false));
    assert!(guest(&storage, size) == guest(&image, size));
    let before = image.image.current.len() as u64;
    assert_eq!(storage.image.current.len() as u64, before - 5 * K4);
}

#[test]
fn leaks_stay_where_they_are_when_the_data_storage_cannot_be_shortened() {
    // A device: relocating chunks could release nothing, so the repair moves none.
    let mut storage = fvd_image(64, 12, &[1, 4]);
    let bytes = storage.image.current.clone();
    let files = FvdFiles {
        image_len: bytes.len() as u64,
        data_len: None,
    };
    let check = FvdCheck::new(&bytes, files, vec![0u8; SMALL]).unwrap();
    let Some(Report::Fvd(first)) = drive(Checker::Fvd(check), &mut storage, 0, &mut Vec::new())
    else {
        panic!("no summary")
    };
    let plan = fvd_core::check::fvd::plan(&first, RepairMode::Leaks, false);
    let repair = FvdCheck::repair(&bytes, files, vec![0u8; SMALL], plan).unwrap();
    let mut lines = Vec::new();
    drive(Checker::Fvd(repair), &mut storage, usize::MAX, &mut lines).unwrap();
    assert!(
        !lines.iter().any(|l| matches!(
            l,
            Repair::RelocatedChunks { .. } | Repair::ReleasedStorage { .. }
        )),
        "{lines:?}"
    );
    assert_eq!(storage.image.current.len(), bytes.len());
    assert_eq!(counts(Format::Fvd, &storage, SMALL).leaks, 2);
}
