//! The consistency check of an FVD or QED image (`fvd-img check`), and its repair, as a
//! sans-IO scanner: the same report for the CLI, the browser inspector and the firmware,
//! in memory the caller chooses.
//!
//! The host creates a scanner ([`fvd::FvdCheck`], [`qed::QedCheck`]) from the header
//! bytes, the file lengths and a work memory `M: AsMut<[u8]>`, wraps it in a [`Checker`]
//! and loops on [`Checker::poll`], which says what to do next ([`Step`]):
//!
//! - [`Step::Read`]: fill [`Checker::io_mut`] (exactly `len` bytes; zeros past the end of
//!   the file) from `file` at `offset`, then call [`Checker::complete`];
//! - [`Step::Write`]: write [`Checker::io`] to `file` at `offset`, then `complete`;
//! - [`Step::Flush`]: make the file's writes durable, then `complete`;
//! - [`Step::SetLength`]: set the file's length and make it durable, then `complete`;
//! - [`Step::Finding`], [`Step::Leak`], [`Step::Repaired`]: report it, poll again;
//! - [`Step::Done`]: the numbers ([`Report`]).
//!
//! Findings stream out as they are found: nothing is collected, so memory is bounded by
//! what the caller gives, never by the image or by how much is wrong with it. An I/O error
//! is the host's: it stops polling (the scanner's own errors are format errors, raised when
//! it is created). Writes happen only in a repair, in the crash-safe order the format
//! modules document.

pub(crate) mod memory;
mod relocate;
mod walk;

pub mod fvd;
pub mod qed;

pub use crate::engine::FileId;
use core::fmt;

/// What `-r` repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RepairMode {
    /// Replay the journal of a dirty image and release unused storage.
    Leaks,
    /// Also repair corruptions (their data is lost).
    All,
}

/// What the host does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Read `len` bytes of `file` at `offset` into [`Checker::io_mut`] (zeros past the end
    /// of the file), then [`Checker::complete`].
    Read {
        /// The file.
        file: FileId,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// Write [`Checker::io`] (`len` bytes) to `file` at `offset`, then complete.
    Write {
        /// The file.
        file: FileId,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// Make every write to `file` durable, then complete.
    Flush {
        /// The file.
        file: FileId,
    },
    /// Set the length of `file` to `len` and make it durable, then complete.
    SetLength {
        /// The file.
        file: FileId,
        /// The new length.
        len: u64,
    },
    /// Something is wrong with the image (a corruption in qemu-img's terms).
    Finding(Finding),
    /// Units `[start, end)` are leaked: FVD physical chunks no entry maps below the
    /// frontier, QED clusters nothing references.
    Leak {
        /// First unit.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A repair did this.
    Repaired(Repair),
    /// Finished.
    Done(Report),
}

/// A corruption, of either format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// In an FVD image.
    Fvd(fvd::Problem),
    /// In a QED image.
    Qed(qed::QedProblem),
}

impl Finding {
    /// A stable name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Fvd(p) => p.kind(),
            Finding::Qed(p) => p.kind(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Fvd(p) => p.fmt(f),
            Finding::Qed(p) => p.fmt(f),
        }
    }
}

/// How a repair dealt with a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FixAction {
    /// Unreplayed journal records were replayed.
    Replayed,
    /// A dirty image without a journal: the checked metadata is kept, the image marked
    /// clean.
    KeptMetadata,
    /// A bad journal record was dropped.
    DroppedRecord,
    /// A table entry was unmapped (its data is lost).
    Unmapped,
    /// Stray bitmap bits were cleared.
    ClearedBits,
    /// A QED L1 entry was set to 0 (its guest range is unallocated now).
    ZeroedL1,
    /// A QED L2 entry was set to 0 (its cluster is unallocated now).
    ZeroedL2,
}

/// One thing a repair did, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repair {
    /// The journal of a dirty image is replayed.
    Replaying {
        /// Records applied.
        records: u64,
        /// Valid sectors holding them.
        sectors: u64,
    },
    /// A finding was repaired.
    Fixed {
        /// What was wrong.
        finding: Finding,
        /// What was done.
        action: FixAction,
    },
    /// FVD: data storage past the last mapped chunk was released.
    ReleasedStorage {
        /// The file holding the data storage.
        file: FileId,
        /// Bytes released.
        bytes: u64,
        /// Its length now.
        len: u64,
    },
    /// QED: leaked clusters at the end of the file were truncated away.
    ReleasedClusters {
        /// Clusters released.
        clusters: u64,
        /// The file's length now.
        len: u64,
    },
    /// FVD: used chunks above leaked ones were moved down into them (their entries
    /// rewritten), so that the data storage can be shortened past them.
    RelocatedChunks {
        /// Chunks moved.
        chunks: u64,
    },
    /// QED: data clusters and L2 tables after leaked clusters were moved down into them
    /// (their entries rewritten), so that the file can be shortened past them.
    RelocatedClusters {
        /// Data clusters moved.
        clusters: u64,
        /// L2 tables moved.
        tables: u64,
    },
    /// FVD: the image was marked clean.
    MarkedClean,
    /// QED: the need-check flag was cleared.
    ClearedNeedCheck,
}

/// The numbers every check reports under qemu-img's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckCounts {
    /// End of the last used chunk or cluster.
    pub image_end_offset: u64,
    /// Clusters (or chunks, or blocks) of the virtual disk.
    pub total_clusters: u64,
    /// Of those, the allocated ones.
    pub allocated_clusters: u64,
    /// Of those, the ones not stored right after their predecessor.
    pub fragmented_clusters: u64,
    /// Corruptions found.
    pub corruptions: u64,
    /// Leaked clusters (or chunks) found.
    pub leaks: u64,
    /// The image was not closed cleanly.
    pub dirty: bool,
}

/// Why a repair writes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RepairRefusal {
    /// `-r leaks` of an image with corruptions (`-r all` repairs both).
    CorruptionsNeedAll,
    /// The journal epoch (the header's, or the highest an intact sector holds) leaves no
    /// room to move it on: any header a repair wrote would be refused by validation.
    EpochExhausted {
        /// The header's epoch.
        epoch: u64,
    },
}

impl fmt::Display for RepairRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairRefusal::CorruptionsNeedAll => write!(
                f,
                "Leaks were not repaired because the image has errors; -r all repairs both"
            ),
            RepairRefusal::EpochExhausted { epoch } => write!(
                f,
                "Nothing was repaired: stable_journal_epoch {epoch} leaves no room to move \
                 the journal epoch on"
            ),
        }
    }
}

/// What a repair changed, in qemu-img's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairCounts {
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaked clusters released.
    pub leaks_fixed: u64,
}

/// What a finished scanner reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// An FVD check.
    Fvd(fvd::FvdSummary),
    /// A QED check.
    Qed(qed::QedSummary),
    /// A repair.
    Repaired(RepairCounts),
}

/// Why a scanner cannot be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckError {
    /// The FVD header is invalid.
    Header(crate::fvd::HeaderError),
    /// The QED header is invalid.
    QedHeader(crate::qed::QedHeaderError),
    /// The image names a separate data file and no length was given for it, or the
    /// other way round.
    DataFileMismatch,
    /// The work memory is too small.
    MemoryTooSmall {
        /// Bytes given.
        given: usize,
        /// Bytes needed at least.
        needed: usize,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Header(e) => e.fmt(f),
            CheckError::QedHeader(e) => e.fmt(f),
            CheckError::DataFileMismatch => {
                write!(f, "the data file given does not match the header")
            }
            CheckError::MemoryTooSmall { given, needed } => write!(
                f,
                "the check needs at least {needed} bytes of work memory ({given} given)"
            ),
        }
    }
}

/// A scanner of either format, driven the same way.
// Both scanners are a few KiB of state held by value (no allocation in core); boxing the
// larger one is not an option here.
#[allow(clippy::large_enum_variant)]
#[non_exhaustive]
pub enum Checker<M> {
    /// An FVD image.
    Fvd(fvd::FvdCheck<M>),
    /// A QED image.
    Qed(qed::QedCheck<M>),
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> Checker<M> {
    fn core(&self) -> &Core<M> {
        match self {
            Checker::Fvd(c) => &c.core,
            Checker::Qed(c) => &c.core,
        }
    }

    fn core_mut(&mut self) -> &mut Core<M> {
        match self {
            Checker::Fvd(c) => &mut c.core,
            Checker::Qed(c) => &mut c.core,
        }
    }

    /// What to do next (the same I/O step again until it is completed).
    pub fn poll(&mut self) -> Step {
        loop {
            if let Some(step) = self.core_mut().pending() {
                return step;
            }
            let step = match self {
                Checker::Fvd(c) => c.step(),
                Checker::Qed(c) => c.step(),
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// The I/O step last returned by [`Checker::poll`] is done.
    pub fn complete(&mut self) {
        self.core_mut().complete();
    }

    /// The bytes of the pending write (empty otherwise).
    pub fn io(&self) -> &[u8] {
        self.core().io()
    }

    /// The buffer of the pending read (empty otherwise).
    pub fn io_mut(&mut self) -> &mut [u8] {
        self.core_mut().io_mut()
    }
}

/// The pending I/O of a scanner: the step and the work memory it reads into or writes
/// from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingIo {
    pub(crate) step: Step,
    pub(crate) area: memory::Area,
    pub(crate) done: bool,
}

impl PendingIo {
    pub(crate) fn new(step: Step, area: memory::Area) -> Self {
        PendingIo {
            step,
            area,
            done: false,
        }
    }
}

/// The shared part of every scanner: its memory and pending I/O.
pub(crate) struct Core<M> {
    pub(crate) mem: M,
    pub(crate) io: Option<PendingIo>,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> Core<M> {
    /// The pending step while it is not completed; clears a completed one.
    pub(crate) fn pending(&mut self) -> Option<Step> {
        match self.io {
            Some(io) if !io.done => Some(io.step),
            _ => {
                self.io = None;
                None
            }
        }
    }

    pub(crate) fn start(&mut self, step: Step, area: memory::Area) -> Step {
        self.io = Some(PendingIo::new(step, area));
        step
    }

    pub(crate) fn complete(&mut self) {
        if let Some(io) = self.io.as_mut() {
            io.done = true;
        }
    }

    pub(crate) fn io(&self) -> &[u8] {
        match self.io {
            Some(io) if !io.done => io.area.bytes(self.mem.as_ref()),
            _ => &[],
        }
    }

    pub(crate) fn io_mut(&mut self) -> &mut [u8] {
        match self.io {
            Some(io) if !io.done => io.area.bytes_mut(self.mem.as_mut()),
            _ => &mut [],
        }
    }
}
