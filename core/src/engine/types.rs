//! The engine's vocabulary with its hosts: guest requests in, I/O commands out, their
//! completions back in, and events (request done, image opened or closed) out.

use crate::fvd::HeaderError;
use crate::qed::QedHeaderError;
use core::fmt;

/// Which file a command targets. The host maps each to a file, a device or a remote
/// object; the engine never knows which.
///
/// Exhaustive on purpose, like the other protocol enums ([`FileId`], [`Buffer`], [`Op`],
/// [`Request`]): every host must handle every case, so a new one must fail to compile in
/// each host rather than fail at run time behind a catch-all arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FileId {
    /// The image file (header and metadata, and data unless a data file is named).
    Image,
    /// The separate data file named in the header.
    Data,
    /// The base image, read-only, addressed in its guest bytes. Reads past its end must
    /// fill zeros; when the base is itself an image the host routes reads through it.
    Base,
}

/// Identifies a submitted guest request until its completion event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestId {
    pub(crate) slot: u16,
    pub(crate) generation: u16,
}

impl RequestId {
    /// A small number unique among requests in flight (useful as a host-side index).
    pub fn slot(self) -> usize {
        usize::from(self.slot)
    }
}

/// Identifies an emitted command until the host completes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandId {
    pub(crate) slot: u16,
    pub(crate) generation: u16,
}

/// Memory a command reads from or writes into.
///
/// Exhaustive on purpose, like the other protocol enums ([`FileId`], [`Buffer`], [`Op`],
/// [`Request`]): every host must handle every case, so a new one must fail to compile in
/// each host rather than fail at run time behind a catch-all arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Buffer {
    /// The buffer of guest request `request`, starting `offset` bytes into it. Guest data
    /// never passes through the engine's memory.
    Guest {
        /// The request whose buffer it is.
        request: RequestId,
        /// Byte offset into that buffer.
        offset: usize,
    },
    /// Engine memory (metadata pages, bounce blocks): reach it with
    /// [`super::Engine::memory`] / [`super::Engine::memory_mut`].
    Engine {
        /// Byte offset into the engine's memory.
        offset: usize,
    },
}

/// What a command asks the host to do.
///
/// Exhaustive on purpose, like the other protocol enums ([`FileId`], [`Buffer`], [`Op`],
/// [`Request`]): every host must handle every case, so a new one must fail to compile in
/// each host rather than fail at run time behind a catch-all arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Op {
    /// Read `len` bytes at `offset` of the file into `into`; bytes past the end of the
    /// file read as zeros.
    Read {
        /// File offset.
        offset: u64,
        /// Bytes.
        len: usize,
        /// Destination.
        into: Buffer,
    },
    /// Write `len` bytes from `from` at `offset` of the file (extending it if needed).
    Write {
        /// File offset.
        offset: u64,
        /// Bytes.
        len: usize,
        /// Source.
        from: Buffer,
    },
    /// Make `len` bytes at `offset` read as zeros (punching a hole when `unmap` and the
    /// host can).
    WriteZeroes {
        /// File offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Deallocating is welcome (the guest discarded the range, or a fill found its
        /// base blocks all zero).
        unmap: bool,
    },
    /// Fill `len` bytes of `into` with zeros (no file I/O; complete it at once).
    ZeroBuffer {
        /// Destination.
        into: Buffer,
        /// Bytes.
        len: usize,
    },
    /// Copy `len` bytes from `from` to `into` (no file I/O; complete it at once). Used to
    /// hand base data read for copy-on-read to the guest read that wanted it.
    Copy {
        /// Source.
        from: Buffer,
        /// Destination.
        into: Buffer,
        /// Bytes.
        len: usize,
    },
    /// Make every completed write to the file durable.
    Flush,
    /// Set the file's length to `len` bytes (new bytes read as zeros).
    SetLength {
        /// New length.
        len: u64,
    },
}

/// One I/O command for the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Command {
    /// Pass back to [`super::Engine::complete`].
    pub id: CommandId,
    /// The file it targets (unused by [`Op::ZeroBuffer`]).
    pub file: FileId,
    /// What to do.
    pub op: Op,
}

/// A guest request. Offsets and lengths are bytes and must be multiples of 512.
///
/// Exhaustive on purpose, like the other protocol enums ([`FileId`], [`Buffer`], [`Op`],
/// [`Request`]): every host must handle every case, so a new one must fail to compile in
/// each host rather than fail at run time behind a catch-all arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Request {
    /// Read into the request's buffer.
    Read {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write from the request's buffer.
    Write {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make the range read as zeros.
    WriteZeroes {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The guest no longer needs the range; it reads as zeros afterwards.
    Discard {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Complete once every write acknowledged before it is durable.
    Flush,
    /// Where does the range starting at `offset` live? Completes with
    /// [`Reply::Mapping`] for the first run (at most `len` bytes).
    Map {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// Where a run of guest bytes lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Mapping {
    /// Still in the base image at the same guest offset.
    Base,
    /// In the data storage: at byte `offset` of `file` ([`FileId::Image`], or
    /// [`FileId::Data`] for an FVD image with a separate data file).
    Data {
        /// The file holding the bytes.
        file: FileId,
        /// Offset in that file.
        offset: u64,
    },
    /// Reads as zeros by a zero marker (a QED zero cluster), whatever a base holds.
    Zero,
    /// Reads as zeros because nothing was ever stored and no base lies below (an
    /// unallocated chunk or cluster); `qemu-img map` calls such runs not present.
    Unallocated,
}

/// A run of guest bytes with one mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MapRun {
    /// First guest byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Where they are.
    pub mapping: Mapping,
}

/// What a successful request returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Reply {
    /// Done.
    Done,
    /// The answer to [`Request::Map`].
    Mapping(MapRun),
}

/// An I/O failure the host reports for a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IoError {
    /// The operation failed (EIO and friends).
    Failed,
    /// The storage is full or cannot grow.
    NoSpace,
    /// The host cannot do this operation (e.g. shrink a raw medium).
    Unsupported,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RequestError {
    /// A command it depended on failed.
    Io(IoError),
    /// Metadata read from the image is corrupt (e.g. a table entry past the storage end).
    Corrupt(Corruption),
    /// The engine stopped serving requests after an unrecoverable metadata failure.
    Failed,
}

/// A structural problem found in metadata while serving requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Corruption {
    /// A table entry has the DIRTY bit or points past the largest possible chunk.
    BadTableEntry {
        /// Virtual chunk.
        chunk: u64,
        /// Raw entry.
        entry: u32,
    },
    /// Two table entries name the same physical chunk (found by a writable open, which
    /// then refuses the image: a write to one guest chunk would change the other).
    SharedChunk {
        /// The second virtual chunk found naming it.
        chunk: u64,
        /// The physical chunk.
        physical: u64,
    },
    /// A journal record names metadata outside its region or contradicts the table.
    BadJournalRecord {
        /// Journal sector index.
        sector: u64,
    },
    /// A QED L1 entry is misaligned, the zero marker, or points outside the file.
    BadL1Entry {
        /// L1 index.
        index: u64,
        /// Raw entry.
        entry: u64,
    },
    /// A QED L2 entry is misaligned or points outside the file.
    BadL2Entry {
        /// Guest offset of the cluster it maps.
        offset: u64,
        /// Raw entry.
        entry: u64,
    },
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoError::Failed => "I/O error",
            IoError::NoSpace => "no space left on the storage",
            IoError::Unsupported => "operation not supported by the storage",
        })
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Io(e) => write!(f, "{e}"),
            RequestError::Corrupt(Corruption::BadTableEntry { chunk, entry }) => {
                write!(f, "corrupt table entry {entry:#010x} for chunk {chunk}")
            }
            RequestError::Corrupt(Corruption::SharedChunk { chunk, physical }) => write!(
                f,
                "physical chunk {physical} is mapped by chunk {chunk} and by another chunk (run 'check -r all')"
            ),
            RequestError::Corrupt(Corruption::BadJournalRecord { sector }) => {
                write!(f, "corrupt journal record in sector {sector}")
            }
            RequestError::Corrupt(Corruption::BadL1Entry { index, entry }) => {
                write!(f, "corrupt L1 table entry {index}: {entry:#x}")
            }
            RequestError::Corrupt(Corruption::BadL2Entry { offset, entry }) => {
                write!(
                    f,
                    "corrupt L2 table entry {entry:#x} for the cluster at guest offset {offset}"
                )
            }
            RequestError::Failed => write!(f, "image failed after an earlier metadata error"),
        }
    }
}

/// Why a request was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SubmitError {
    /// Every request slot is in use: complete some commands and try again.
    Busy,
    /// Offset or length not a multiple of 512, or a zero-length data request.
    Unaligned,
    /// The range ends past the virtual disk.
    OutOfRange,
    /// A read or write longer than [`super::MAX_DATA_REQUEST`]: split it.
    TooLarge,
    /// A write to an image opened read-only.
    ReadOnly,
    /// The image is not open (still opening, failed, closing or closed).
    NotOpen,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            SubmitError::Busy => "too many requests in flight",
            SubmitError::Unaligned => "offset and length must be multiples of 512",
            SubmitError::OutOfRange => "request extends past the end of the disk",
            SubmitError::TooLarge => "request too large: split it",
            SubmitError::ReadOnly => "image is opened read-only",
            SubmitError::NotOpen => "image is not open",
        };
        f.write_str(text)
    }
}

/// Why an image could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OpenError {
    /// The header is invalid.
    Header(HeaderError),
    /// The QED header is invalid.
    QedHeader(QedHeaderError),
    /// The engine's memory is too small for this image.
    MemoryTooSmall {
        /// Bytes given.
        given: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The image names a data file but the host gave no length for it (or the reverse).
    DataFileMismatch,
    /// The image needs its base image but the host opened none.
    BaseMissing,
    /// The image is dirty and has no journal: it cannot be opened for writing safely.
    DirtyWithoutJournal,
    /// The journal epoch leaves no room for a writer to move it on at open and close: the
    /// header's `stable_journal_epoch` is above
    /// [`crate::fvd::journal::MAX_WRITABLE_EPOCH`], or the journal holds an intact
    /// sector whose epoch is (the new epoch must pass it). The image can only be opened
    /// read-only.
    EpochExhausted {
        /// The header's epoch, or the sector's.
        epoch: u64,
    },
    /// A command failed while opening.
    Io(IoError),
    /// Metadata is corrupt.
    Corrupt(Corruption),
    /// The image is of a format whose engine this build leaves out (fvd-core without its
    /// `qed-engine` feature, as a firmware that serves only FVD builds it).
    FormatNotBuilt(super::ImageFormat),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Header(e) => write!(f, "{e}"),
            OpenError::QedHeader(e) => write!(f, "{e}"),
            OpenError::MemoryTooSmall { given, needed } => {
                write!(
                    f,
                    "engine memory too small: {given} bytes given, {needed} needed"
                )
            }
            OpenError::DataFileMismatch => write!(
                f,
                "data file expected by the image and opened by the host differ"
            ),
            OpenError::BaseMissing => {
                write!(f, "the image needs its base image, which is not open")
            }
            OpenError::DirtyWithoutJournal => {
                write!(
                    f,
                    "image was not closed cleanly and has no journal to repair it"
                )
            }
            OpenError::EpochExhausted { epoch } => write!(
                f,
                "journal epoch {epoch} leaves no room to move the epoch on (a writer needs \
                 it at most 2^63 - 2): the image can only be opened read-only"
            ),
            OpenError::Io(e) => write!(f, "{e} while opening the image"),
            OpenError::Corrupt(c) => write!(f, "{}", RequestError::Corrupt(*c)),
            OpenError::FormatNotBuilt(format) => write!(
                f,
                "this build has no {} engine (fvd-core's qed-engine feature is off)",
                format.name()
            ),
        }
    }
}

/// Something the host should know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The image is open; requests may be submitted.
    Opened,
    /// The image could not be opened; the engine is done.
    OpenFailed(OpenError),
    /// A request finished; its buffer is the host's again.
    Completed {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<Reply, RequestError>,
    },
    /// [`super::Engine::close`] finished: metadata written back, image marked clean (when
    /// `clean` is true; false when a failure left it dirty for the journal to repair).
    Closed {
        /// The image was marked clean.
        clean: bool,
    },
}

impl core::error::Error for RequestError {}
impl core::error::Error for SubmitError {}
impl core::error::Error for OpenError {}
