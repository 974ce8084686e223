//! The counts `info` reports beyond the header, gathered sans-IO: [`InfoScan`] says which
//! piece of the image file to read next ([`InfoScan::next_read`], at most [`SCAN_CHUNK`]
//! bytes), the host reads it (zeros past the end of the file) and hands it back
//! ([`InfoScan::complete`]). FVD: set bits of the bitmap, mapped and invalid table
//! entries. QED: the L1 table and every L2 table it names inside the file. Memory: the
//! host's one buffer of [`SCAN_CHUNK`] bytes.

use crate::fvd::bitmap::count_set;
use crate::fvd::table::EntryCounts;
use crate::fvd::ImageLayout;
use crate::qed::table::L2Counts;
use crate::qed::{L1Entry, QedLayout};

/// Most bytes one read asks for (a multiple of 8: whole table entries).
pub const SCAN_CHUNK: usize = 64 << 10;

/// What the scan counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InfoCounts {
    /// FVD: bitmap bits set (blocks whose data is in the image).
    pub blocks_in_image: u64,
    /// FVD: table entries naming a chunk, and corrupt ones.
    pub table: EntryCounts,
    /// QED: L2 tables inside the file.
    pub l2_tables: u64,
    /// QED: data clusters.
    pub data_clusters: u64,
    /// QED: zero clusters.
    pub zero_clusters: u64,
    /// QED: misaligned or out-of-file entries.
    pub qed_invalid: u64,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// FVD bitmap bytes done.
    Bitmap(u64),
    /// FVD table bytes done.
    Table(u64),
    /// QED: the next L1 entry to look at.
    L1(u64),
    /// QED: bytes done of the L2 table at this offset; then L1 from `next`.
    L2 {
        offset: u64,
        done: u64,
        next: u64,
    },
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Fvd(ImageLayout),
    Qed { layout: QedLayout, file_len: u64 },
}

/// A scan of the image file for [`InfoCounts`].
#[derive(Clone, Copy, Debug)]
pub struct InfoScan {
    format: Format,
    phase: Phase,
    counts: InfoCounts,
}

impl InfoScan {
    /// A scan of a validated FVD image.
    /// A fully prefetched image's bitmap is not read: every block is in the image, and the
    /// region may have been punched to zeros (FORMAT.md §7).
    pub fn fvd(layout: &ImageLayout) -> Self {
        let prefetched = layout.base.filter(|_| layout.base_fully_prefetched);
        let mut scan = InfoScan {
            format: Format::Fvd(*layout),
            phase: match prefetched {
                Some(_) => Phase::Table(0),
                None => Phase::Bitmap(0),
            },
            counts: InfoCounts {
                blocks_in_image: prefetched.map_or(0, |b| b.blocks),
                ..InfoCounts::default()
            },
        };
        scan.settle();
        scan
    }

    /// A scan of a validated QED image in a file of `file_len` bytes.
    pub fn qed(layout: &QedLayout, file_len: u64) -> Self {
        InfoScan {
            format: Format::Qed {
                layout: *layout,
                file_len,
            },
            phase: Phase::L1(0),
            counts: InfoCounts::default(),
        }
    }

    /// The next read, `(offset, len)` in the image file, or `None` once done.
    pub fn next_read(&self) -> Option<(u64, usize)> {
        let (start, total, done) = match (self.phase, &self.format) {
            (Phase::Bitmap(done), Format::Fvd(l)) => {
                let base = l.base.as_ref()?;
                (base.bitmap.offset, base.blocks.div_ceil(8), done)
            }
            (Phase::Table(done), Format::Fvd(l)) => {
                let table = l.table.as_ref()?;
                (table.region.offset, table.chunks.saturating_mul(4), done)
            }
            (Phase::L1(next), Format::Qed { layout, .. }) => (
                layout.l1_table.offset,
                layout.table_len,
                next.saturating_mul(8),
            ),
            (Phase::L2 { offset, done, .. }, Format::Qed { layout, .. }) => {
                (offset, layout.table_len, done)
            }
            _ => return None,
        };
        let left = total.checked_sub(done).filter(|&left| left > 0)?;
        let len = usize::try_from(left).unwrap_or(usize::MAX).min(SCAN_CHUNK);
        Some((start.checked_add(done)?, len))
    }

    /// Hands back the bytes of the read [`InfoScan::next_read`] asked for (fewer are
    /// taken as zeros).
    pub fn complete(&mut self, bytes: &[u8]) {
        let Some((_, len)) = self.next_read() else {
            return;
        };
        let bytes = bytes.get(..len).unwrap_or(bytes);
        let n = len as u64;
        match (self.phase, self.format) {
            (Phase::Bitmap(done), Format::Fvd(l)) => {
                let blocks = l.base.map_or(0, |b| b.blocks);
                let bits = blocks
                    .saturating_sub(done.saturating_mul(8))
                    .min(n.saturating_mul(8));
                let set = count_set(bytes, bits);
                self.counts.blocks_in_image = self.counts.blocks_in_image.saturating_add(set);
                self.phase = Phase::Bitmap(done.saturating_add(n));
            }
            (Phase::Table(done), Format::Fvd(_)) => {
                self.counts.table = self.counts.table.plus(EntryCounts::of(bytes));
                self.phase = Phase::Table(done.saturating_add(n));
            }
            (Phase::L1(next), Format::Qed { layout, file_len }) => {
                self.phase = Phase::L1(next.saturating_add(n / 8));
                for i in 0..len / 8 {
                    let entry = bytes.get(i * 8..i * 8 + 8);
                    let raw = entry
                        .and_then(|e| e.try_into().ok())
                        .map_or(0, u64::from_le_bytes);
                    let i = next.saturating_add(i as u64);
                    match layout.decode_l1(raw) {
                        L1Entry::Unallocated => {}
                        L1Entry::Table(offset) if layout.table_in_file(offset, file_len) => {
                            self.counts.l2_tables = self.counts.l2_tables.saturating_add(1);
                            self.phase = Phase::L2 {
                                offset,
                                done: 0,
                                next: i.saturating_add(1),
                            };
                            break;
                        }
                        _ => self.counts.qed_invalid = self.counts.qed_invalid.saturating_add(1),
                    }
                }
            }
            (Phase::L2 { offset, done, next }, Format::Qed { layout, .. }) => {
                let l2 = L2Counts::of(bytes, layout.cluster_size);
                let c = &mut self.counts;
                c.data_clusters = c.data_clusters.saturating_add(l2.data);
                c.zero_clusters = c.zero_clusters.saturating_add(l2.zero);
                c.qed_invalid = c.qed_invalid.saturating_add(l2.invalid);
                let done = done.saturating_add(n);
                self.phase = if done >= layout.table_len {
                    Phase::L1(next)
                } else {
                    Phase::L2 { offset, done, next }
                };
            }
            _ => self.phase = Phase::Done,
        }
        self.settle();
    }

    /// Moves past phases with nothing (left) to read.
    fn settle(&mut self) {
        while self.next_read().is_none() {
            self.phase = match self.phase {
                Phase::Bitmap(_) => Phase::Table(0),
                _ => Phase::Done,
            };
            if matches!(self.phase, Phase::Done) {
                return;
            }
        }
    }

    /// True once nothing is left to read.
    pub fn done(&self) -> bool {
        self.next_read().is_none()
    }

    /// What was counted (complete once [`InfoScan::done`]).
    pub fn counts(&self) -> InfoCounts {
        self.counts
    }
}
