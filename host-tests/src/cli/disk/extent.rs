//! Where guest bytes live: extents (data in a file, zeros, unallocated) merged into
//! runs the way `qemu-img map` prints them, found through the engine's map, through the
//! base chain, or in a raw file's holes (`SEEK_DATA`/`SEEK_HOLE`).

use super::{driver_error, host_error, Backend, BaseLink, Disk, DiskFormat, SECTOR};
use crate::cli::error::CliError;
use crate::host::gate::OpenGate;
use fvd_core::engine::Mapping;
use fvd_core::report::map::{base_step, BaseStep, Below, MapEntry};
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// What holds a run of guest bytes (core's map kinds, named as `map --output json`
/// names them).
pub use fvd_core::report::map::MapKind as ExtentKind;

/// A run of guest bytes with one kind of storage, like one entry of `qemu-img map`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First guest byte.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// What holds them, seen from the top image.
    pub kind: ExtentKind,
    /// 0 for the image itself, 1 for its base, 2 for the base's base...
    pub depth: u32,
    /// They read as zeros (known without reading them: nothing stored, or stored in a
    /// hole of the host file).
    pub zero: bool,
    /// They are stored as data somewhere.
    pub data: bool,
    /// Where in `file` they are, when known.
    pub offset: Option<u64>,
    /// The file holding them, when known.
    pub file: Option<PathBuf>,
}

impl Extent {
    /// First byte after the run.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }

    /// The run as core's map document has it (everything but the file).
    pub fn entry(&self) -> MapEntry {
        MapEntry {
            start: self.start,
            length: self.length,
            kind: self.kind,
            depth: self.depth,
            zero: self.zero,
            data: self.data,
            offset: self.offset,
        }
    }

    /// True when `next` directly follows this run in the same file and core's map rule
    /// ([`MapEntry::joins`]) merges them.
    pub fn joins(&self, next: &Extent) -> bool {
        self.file == next.file && self.entry().joins(&next.entry())
    }

    /// A run core's map rule decided (stored in no file this host names).
    fn from_entry(e: MapEntry) -> Self {
        Extent {
            start: e.start,
            length: e.length,
            kind: e.kind,
            depth: e.depth,
            zero: e.zero,
            data: e.data,
            offset: e.offset,
            file: None,
        }
    }

    fn zeros(start: u64, length: u64, depth: u32) -> Self {
        Extent {
            start,
            length,
            kind: ExtentKind::Zero,
            depth,
            zero: true,
            data: false,
            offset: None,
            file: None,
        }
    }
}

/// Appends `extent` to `list`, merging it into the last entry when it [`Extent::joins`].
pub fn push_merged(list: &mut Vec<Extent>, extent: Extent) {
    match list.last_mut() {
        Some(last) if last.joins(&extent) => last.length += extent.length,
        _ => list.push(extent),
    }
}

/// `lseek` with `SEEK_DATA` or `SEEK_HOLE`.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek only reads its integer arguments; the descriptor is owned by `file`.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

/// Whether the `max` bytes of `file` at `offset` start with data or a hole, and how many
/// bytes the first run covers. File systems that cannot tell report data.
pub fn raw_allocation(file: &File, offset: u64, max: u64) -> (u64, bool) {
    match seek(file, offset, libc::SEEK_DATA) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => (max, false),
        Err(_) => (max, true),
        Ok(data) if data > offset => ((data - offset).min(max), false),
        Ok(_) => match seek(file, offset, libc::SEEK_HOLE) {
            Ok(hole) if hole > offset => ((hole - offset).min(max), true),
            _ => (max, true),
        },
    }
}

impl Disk {
    /// The first run of guest bytes at `offset`, at most `max` bytes long (and never
    /// empty when `max` is not). Past the end of the disk everything reads as zeros.
    pub fn extent(&mut self, offset: u64, max: u64) -> Result<Extent, CliError> {
        if offset >= self.size {
            return Ok(Extent::zeros(offset, max, 0));
        }
        let max = max.min(self.size - offset);
        let size = self.size;
        match &mut self.backend {
            Backend::Raw { storage } => {
                let (length, data) = raw_allocation(&storage.image, offset, max);
                Ok(Extent {
                    start: offset,
                    length,
                    kind: if data {
                        ExtentKind::Local
                    } else {
                        ExtentKind::Zero
                    },
                    depth: 0,
                    zero: !data,
                    data,
                    offset: Some(offset),
                    file: Some(self.path.clone()),
                })
            }
            Backend::Fvd {
                driver,
                data_path,
                base,
            } => {
                let lo = offset / SECTOR * SECTOR;
                let hi = ((offset + max).div_ceil(SECTOR) * SECTOR).min(size);
                let run = driver.map(lo, hi - lo).map_err(driver_error)?;
                if run.len == 0 || lo + run.len <= offset {
                    return Err(CliError::Image(format!(
                        "the engine mapped an empty run at offset {lo}"
                    )));
                }
                let length = (lo + run.len - offset).min(max);
                match run.mapping {
                    Mapping::Data {
                        file: held_in,
                        offset: at,
                    } => {
                        // Stored FVD data may sit in a hole of the host file (never
                        // written): it reads as zeros, which convert and compare need not
                        // read. An allocated QED cluster is data as a whole, as `qemu-img
                        // map` shows it (QEMU does not look into the host file for QED).
                        let stored = at + (offset - lo);
                        let file = driver.storage.file(held_in).map_err(host_error)?;
                        let (length, written) = if self.format == DiskFormat::Qed {
                            (length, true)
                        } else {
                            raw_allocation(file, stored, length)
                        };
                        Ok(Extent {
                            start: offset,
                            length,
                            kind: ExtentKind::Local,
                            depth: 0,
                            zero: !written,
                            data: true,
                            offset: Some(stored),
                            file: Some(data_path.clone()),
                        })
                    }
                    Mapping::Zero => Ok(Extent::zeros(offset, length, 0)),
                    Mapping::Unallocated => Ok(Extent {
                        kind: ExtentKind::Unallocated,
                        ..Extent::zeros(offset, length, 0)
                    }),
                    Mapping::Base => {
                        // A raw base is opened as a disk too, whose holes lseek finds.
                        let gate = self.gate;
                        let direct = self.direct;
                        let disk = Self::base_disk(base, gate, direct)?;
                        let below = match &disk {
                            Some(disk) => Below::Mappable { size: disk.size() },
                            None => Below::Unknown,
                        };
                        match (base_step(offset, length, below), disk) {
                            (BaseStep::Descend { len }, Some(disk)) => {
                                let below = disk.extent(offset, len)?;
                                Ok(Extent {
                                    kind: ExtentKind::Base,
                                    depth: below.depth + 1,
                                    ..below
                                })
                            }
                            (BaseStep::Entry(entry), _) => Ok(Extent::from_entry(entry)),
                            (BaseStep::Descend { .. }, None) => Err(CliError::Image(format!(
                                "the base of '{}' is not open",
                                self.path.display()
                            ))),
                        }
                    }
                    other => Err(CliError::Image(format!(
                        "the engine mapped offset {lo} as {other:?}, which this fvd-img cannot show"
                    ))),
                }
            }
        }
    }

    /// The base disk of an FVD image, opened read-only on first use.
    fn base_disk(
        link: &mut BaseLink,
        gate: OpenGate,
        direct: bool,
    ) -> Result<Option<&mut Disk>, CliError> {
        if let BaseLink::Closed { path, format } = link {
            let format = match format {
                Some(format) => *format,
                None => DiskFormat::probe(path)?,
            };
            let mut disk = Disk::open_gated(path, format, false, None, gate)?;
            if direct {
                disk.bypass_page_cache()?;
            }
            *link = BaseLink::Open(Box::new(disk));
        }
        Ok(match link {
            BaseLink::Open(disk) => Some(disk),
            _ => None,
        })
    }
}
