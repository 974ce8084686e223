//! The partition table inside a virtual disk: an MBR's four primary entries (an extended
//! entry is marked, its logical partitions are not walked) or a GPT (protective MBR, the
//! header at LBA 1 with its CRC-32, the backup header at the last LBA when the primary is
//! damaged, and the entry array with its CRC-32). Sans-IO: [`Scan`] says which sectors of
//! the virtual disk to read and decodes them; the host reads them through its engine and
//! keeps the entry array's bytes to list the partitions ([`GptHeader::entries`]).
//! Logical sectors are 512 bytes (what every virtual disk here presents). The on-disk
//! shapes live in [`mbr`] and [`gpt`], the reasons a table is refused in [`error`].

// Every byte here comes from a guest's disk: arithmetic is checked, casts are fallible and
// slices are taken with `get`.

pub mod error;
pub mod gpt;
pub mod mbr;

pub use error::PartitionError;
pub use gpt::{
    gpt_type_name, GptEntries, GptHeader, GptName, GptPartition, Guid, GPT_SIGNATURE,
    MAX_ENTRY_SIZE,
};
pub use mbr::{mbr_type_name, Mbr, MbrPartition, PROTECTIVE_TYPE};

/// Bytes per logical sector.
pub const SECTOR: u64 = 512;
/// Largest GPT entry array read (count × entry size), so a hostile header cannot make a
/// host read or hold more.
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// A read of the virtual disk the scan needs: whole sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAt {
    /// First byte.
    pub offset: u64,
    /// Bytes (a multiple of [`SECTOR`], at most [`MAX_ARRAY_BYTES`]).
    pub len: usize,
}

/// What the disk's partition table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// No MBR boot signature: no partition table.
    None,
    /// An MBR (not a protective one).
    Mbr(Mbr),
    /// A GPT; its entries are in the bytes of the last read
    /// ([`GptHeader::entries`]), whose CRC has been checked.
    Gpt {
        /// The protective MBR.
        mbr: Mbr,
        /// The header used.
        header: GptHeader,
        /// The primary header was damaged and the backup at the last LBA was used.
        from_backup: bool,
    },
}

/// What the scan wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Read these bytes of the virtual disk and [`Scan::feed`] them.
    Read(ReadAt),
    /// The table is known.
    Done(Table),
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Mbr,
    Primary(Mbr),
    Backup(Mbr, PartitionError),
    Array(Mbr, GptHeader, bool),
    Done,
}

/// Finds and decodes the partition table of a virtual disk of a given size, one read at a
/// time: start with [`Scan::first_read`], feed each read's bytes to [`Scan::feed`].
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    disk_sectors: u64,
    stage: Stage,
}

impl Scan {
    /// A scan of a virtual disk of `disk_size` bytes.
    pub fn new(disk_size: u64) -> Scan {
        Scan {
            disk_sectors: disk_size / SECTOR,
            stage: Stage::Mbr,
        }
    }

    /// The first read (sector 0), or `None` when the disk is smaller than one sector.
    pub fn first_read(&self) -> Option<ReadAt> {
        (self.disk_sectors > 0).then_some(ReadAt {
            offset: 0,
            len: 512,
        })
    }

    /// Takes the bytes of the read asked for last and says what comes next.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Feed, PartitionError> {
        let sector = |n: u64| ReadAt {
            offset: n.saturating_mul(SECTOR),
            len: 512,
        };
        let last = self.disk_sectors.saturating_sub(1);
        let (stage, feed) = match self.stage {
            Stage::Mbr => match Mbr::parse(bytes) {
                None => (Stage::Done, Ok(Feed::Done(Table::None))),
                Some(mbr) if mbr.is_protective() && self.disk_sectors > 2 => {
                    (Stage::Primary(mbr), Ok(Feed::Read(sector(1))))
                }
                Some(mbr) => (Stage::Done, Ok(Feed::Done(Table::Mbr(mbr)))),
            },
            Stage::Primary(mbr) => match GptHeader::parse(bytes, 1, self.disk_sectors) {
                Ok(h) => (Stage::Array(mbr, h, false), Ok(Feed::Read(h.array_read()))),
                Err(e) => (Stage::Backup(mbr, e), Ok(Feed::Read(sector(last)))),
            },
            Stage::Backup(mbr, primary) => match GptHeader::parse(bytes, last, self.disk_sectors) {
                Ok(h) => (Stage::Array(mbr, h, true), Ok(Feed::Read(h.array_read()))),
                Err(_) => (Stage::Done, Err(primary)),
            },
            Stage::Array(mbr, header, from_backup) => (
                Stage::Done,
                header.entries(bytes).map(|_| {
                    Feed::Done(Table::Gpt {
                        mbr,
                        header,
                        from_backup,
                    })
                }),
            ),
            Stage::Done => (Stage::Done, Ok(Feed::Done(Table::None))),
        };
        self.stage = stage;
        feed
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
