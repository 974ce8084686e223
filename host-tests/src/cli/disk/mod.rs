//! Guest disks for the data commands (`io`, `convert`, `compare`, `map`): an FVD or QED
//! image driven through the engine with its data file and base chain, or a raw file with
//! positioned I/O. A [`Disk`] reads and writes by guest offset, queues concurrent
//! requests, and tells where each run of guest bytes lives ([`Extent`]), following the
//! base chain the way `qemu-img map` follows a backing chain.

mod extent;
mod format;
mod queue;
mod stream;

pub use extent::{push_merged, raw_allocation, Extent, ExtentKind};
pub use format::DiskFormat;
pub use queue::Pending;
pub use stream::{split_runs, Piece, SplitRuns, Stream};

use crate::cli::error::{io_reason, CliError};
use crate::cli::image::open_host_file_as;
use crate::cli::image::{header_reason, name_path, name_text, open_fvd_as};
use crate::cli::qed::open_qed_as;
use crate::host::driver::{Driver, DriverError, DriverOptions};
use crate::host::files::{open_image_with, resolve_relative, FileStorage, Held, ImageOpenError};
use crate::host::gate::OpenGate;
use crate::host::storage::Storage;
use fvd_core::engine::FileId;
use fvd_core::engine::ImageFormat as EngineFormat;
use fvd_core::probe::{probe, PROBE_LEN};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The engine's request granularity.
pub const SECTOR: u64 = 512;

/// Largest piece of a synchronous read or write handed to the engine at once.
const PIECE: u64 = 16 << 20;

/// The base of an FVD image, opened only when an extent needs it.
enum BaseLink {
    /// The image has no base (or names none).
    None,
    /// Not opened yet.
    Closed {
        path: PathBuf,
        format: Option<DiskFormat>,
    },
    /// Open read-only.
    Open(Box<Disk>),
}

enum Backend {
    Fvd {
        driver: Box<Driver<FileStorage>>,
        /// The file holding guest data (the image or its data file).
        data_path: PathBuf,
        base: BaseLink,
    },
    Raw {
        storage: FileStorage,
    },
}

/// An open guest disk.
pub struct Disk {
    path: PathBuf,
    format: DiskFormat,
    size: u64,
    writable: bool,
    /// How the files of its base (opened on first use) are opened.
    gate: OpenGate,
    backend: Backend,
    /// A raw file whose format was probed: writes that would make its first sector probe
    /// as an image are refused (see [`Disk::restrict_first_sector`]).
    restricted: bool,
    /// Reads and writes bypass the host page cache ([`Disk::bypass_page_cache`]).
    direct: bool,
}

fn driver_error(err: DriverError) -> CliError {
    CliError::Image(err.to_string())
}

fn host_error(err: io::Error) -> CliError {
    CliError::Image(io_reason(&err))
}

/// A failure of `files::open_image`, worded like the CLI's own open errors.
pub fn open_error(err: ImageOpenError) -> CliError {
    match err {
        ImageOpenError::Io { path, source } => CliError::Open { path, source },
        ImageOpenError::Header { path, source } => CliError::NotFvd {
            path,
            reason: header_reason(&source),
        },
        ImageOpenError::QedHeader { path, source } => CliError::NotQed {
            path,
            reason: super::qed::qed_header_reason(&source),
        },
        ImageOpenError::Engine { path, source } => {
            CliError::Image(format!("Could not open '{}': {source}", path.display()))
        }
        ImageOpenError::Gate(err) => CliError::from(err),
        other => CliError::Image(other.to_string()),
    }
}

impl Disk {
    /// Opens `path` as `format`, read-write when `writable`. FVD images come with their
    /// data file and base chain.
    pub fn open(path: &Path, format: DiskFormat, writable: bool) -> Result<Disk, CliError> {
        Self::open_with(path, format, writable, None)
    }

    /// [`Disk::open`] with a copy-on-read override for an FVD image (`None`: the header's
    /// default; raw files ignore it).
    pub fn open_with(
        path: &Path,
        format: DiskFormat,
        writable: bool,
        copy_on_read: Option<bool>,
    ) -> Result<Disk, CliError> {
        Self::open_gated(path, format, writable, copy_on_read, OpenGate::default())
    }

    /// [`Disk::open_with`] with the files the image's headers name (at any depth) opened
    /// through `gate`, which also says how the files are shared with other processes.
    pub fn open_gated(
        path: &Path,
        format: DiskFormat,
        writable: bool,
        copy_on_read: Option<bool>,
        gate: OpenGate,
    ) -> Result<Disk, CliError> {
        match format {
            DiskFormat::Raw => {
                let host = open_host_file_as(path, gate.raw_usage(writable)?)?;
                let file = if writable {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map_err(|e| CliError::open(path, e))?
                } else {
                    host.file
                };
                Ok(Disk {
                    path: path.to_path_buf(),
                    format,
                    size: host.len,
                    writable,
                    gate,
                    backend: Backend::Raw {
                        storage: FileStorage {
                            image: file,
                            data: None,
                            base: None,
                            held: Held {
                                locks: vec![host.lock],
                                ..Held::default()
                            },
                            direct: None,
                            unsafe_cache: false,
                        },
                    },
                    restricted: false,
                    direct: false,
                })
            }
            DiskFormat::Fvd => {
                let image = open_fvd_as(path, gate.image_usage(writable)?)?;
                let data_path = if image.layout.separate_data_file {
                    resolve_relative(path, name_path(&image.header.data_file))
                } else {
                    path.to_path_buf()
                };
                let base_name = name_path(&image.header.base_img);
                let base = if image.layout.base.is_some() && !base_name.as_os_str().is_empty() {
                    BaseLink::Closed {
                        path: resolve_relative(path, &base_name),
                        format: DiskFormat::parse(&name_text(&image.header.base_img_fmt)).ok(),
                    }
                } else {
                    BaseLink::None
                };
                drop(image);
                let options = DriverOptions {
                    writable,
                    copy_on_read,
                    ..DriverOptions::default()
                };
                let driver = open_image_with(path, options, &gate).map_err(open_error)?;
                Ok(Self::from_driver(
                    path, driver, data_path, base, writable, gate,
                ))
            }
            DiskFormat::Qed => {
                // The header tells the size and the backing file; the engine (which probes
                // the magic itself) does the rest, exactly as for FVD.
                let image = open_qed_as(path, gate.image_usage(writable)?)?;
                let size = image.layout.image_size;
                let base = match image.backing_path() {
                    Some(name) => BaseLink::Closed {
                        path: resolve_relative(path, &name),
                        format: image.backing_format().map(|_| DiskFormat::Raw),
                    },
                    None => BaseLink::None,
                };
                drop(image);
                let options = DriverOptions {
                    writable,
                    copy_on_read,
                    ..DriverOptions::default()
                };
                let driver = open_image_with(path, options, &gate).map_err(open_error)?;
                let mut disk =
                    Self::from_driver(path, driver, path.to_path_buf(), base, writable, gate);
                disk.size = size;
                Ok(disk)
            }
        }
    }

    fn from_driver(
        path: &Path,
        driver: Driver<FileStorage>,
        data_path: PathBuf,
        base: BaseLink,
        writable: bool,
        gate: OpenGate,
    ) -> Disk {
        let size = driver.engine().virtual_size().unwrap_or(0);
        let format = match driver.engine().format() {
            Some(EngineFormat::Qed) => DiskFormat::Qed,
            _ => DiskFormat::Fvd,
        };
        Disk {
            path: path.to_path_buf(),
            format,
            size,
            writable,
            gate,
            backend: Backend::Fvd {
                driver: Box::new(driver),
                data_path,
                base: BaseLink::None,
            },
            restricted: false,
            direct: false,
        }
        .with_base(base)
    }

    fn with_base(mut self, link: BaseLink) -> Self {
        if let Backend::Fvd { base, .. } = &mut self.backend {
            *base = link;
        }
        self
    }

    /// A new FVD or QED image (the engine probes the magic) without a base, opened
    /// read-write over already open files (`convert` fills staged files before renaming
    /// them into place). `path` names the image in messages; `data_path` is the file
    /// holding guest data.
    pub fn image_over(
        path: &Path,
        storage: FileStorage,
        data_path: PathBuf,
    ) -> Result<Disk, CliError> {
        let options = DriverOptions {
            writable: true,
            ..DriverOptions::default()
        };
        let driver = Driver::open(storage, options)
            .map_err(|e| CliError::Image(format!("Could not open '{}': {e}", path.display())))?;
        Ok(Self::from_driver(
            path,
            driver,
            data_path,
            BaseLink::None,
            true,
            OpenGate::default(),
        ))
    }

    /// A raw disk of `size` bytes over an open, writable `file`.
    pub fn raw_over(path: &Path, file: File, size: u64) -> Disk {
        Disk {
            path: path.to_path_buf(),
            format: DiskFormat::Raw,
            size,
            writable: true,
            gate: OpenGate::default(),
            backend: Backend::Raw {
                storage: FileStorage {
                    image: file,
                    data: None,
                    base: None,
                    held: Held::default(),
                    direct: None,
                    unsafe_cache: false,
                },
            },
            restricted: false,
            direct: false,
        }
    }

    /// Restricts writes to the first sector of a raw file whose format was probed, as
    /// QEMU does: a write that would make the file probe as an image (FVD, QED, or a
    /// look-alike of either) fails with "Operation not permitted". Other formats ignore it.
    pub fn restrict_first_sector(&mut self) {
        self.restricted = self.format == DiskFormat::Raw;
    }

    /// Refuses `data` at `offset` when it would turn the first bytes of a restricted raw
    /// file into something that probes as an image.
    fn check_first_sector(&mut self, offset: u64, data: &[u8]) -> Result<(), CliError> {
        let probe_len = PROBE_LEN as u64;
        if !self.restricted || offset >= probe_len || data.is_empty() {
            return Ok(());
        }
        let Backend::Raw { storage } = &mut self.backend else {
            return Ok(());
        };
        let mut first = vec![0u8; PROBE_LEN];
        storage
            .read_at(FileId::Image, 0, &mut first)
            .map_err(host_error)?;
        let at = offset as usize;
        let n = data.len().min(PROBE_LEN - at);
        first[at..at + n].copy_from_slice(&data[..n]);
        if probe(&first).is_raw() {
            Ok(())
        } else {
            Err(host_error(io::Error::from_raw_os_error(libc::EPERM)))
        }
    }

    /// Makes every later read and write of the disk's files bypass the host page cache
    /// (`O_DIRECT`), as QEMU's `cache=none` and `cache=directsync` do: the image, its data
    /// file and the images below it (a base opened later inherits it).
    pub fn bypass_page_cache(&mut self) -> Result<(), CliError> {
        self.direct = true;
        let writable = self.writable;
        let path = self.path.clone();
        let fail = |e: io::Error| CliError::io("open", &path, e);
        match &mut self.backend {
            Backend::Raw { storage } => storage.bypass_page_cache(writable).map_err(fail),
            Backend::Fvd { driver, base, .. } => {
                let mut layer_writable = writable;
                for storage in driver.layers_mut() {
                    storage.bypass_page_cache(layer_writable).map_err(fail)?;
                    layer_writable = false;
                }
                if let BaseLink::Open(disk) = base {
                    disk.bypass_page_cache()?;
                }
                Ok(())
            }
        }
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its format.
    pub fn format(&self) -> DiskFormat {
        self.format
    }

    /// Guest size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), CliError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(CliError::Image(
                "request extends past the end of the disk".into(),
            )),
        }
    }

    fn check_writable(&self) -> Result<(), CliError> {
        if self.writable {
            Ok(())
        } else {
            Err(CliError::Image("image is opened read-only".into()))
        }
    }

    /// Checks that `len` bytes at `offset` can be read.
    pub fn check_read(&self, offset: u64, len: u64) -> Result<(), CliError> {
        self.check_range(offset, len)
    }

    /// Checks that `len` bytes at `offset` can be written.
    pub fn check_write(&self, offset: u64, len: u64) -> Result<(), CliError> {
        self.check_writable()?;
        self.check_range(offset, len)
    }

    /// Reads `buf.len()` guest bytes at `offset` (any alignment).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), CliError> {
        self.check_range(offset, buf.len() as u64)?;
        match &mut self.backend {
            Backend::Raw { storage } => storage
                .read_at(FileId::Image, offset, buf)
                .map_err(host_error),
            Backend::Fvd { driver, .. } => {
                let end = offset + buf.len() as u64;
                let mut at = offset;
                while at < end {
                    let lo = at / SECTOR * SECTOR;
                    let hi = (end.div_ceil(SECTOR) * SECTOR).min(lo + PIECE);
                    let data = driver.read(lo, (hi - lo) as usize).map_err(driver_error)?;
                    let to = hi.min(end);
                    buf[(at - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&data[(at - lo) as usize..(to - lo) as usize]);
                    at = to;
                }
                Ok(())
            }
        }
    }

    /// Writes `data` at guest `offset` (any alignment: an image's partial first and last
    /// sectors are read, merged and written whole, as QEMU does).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), CliError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        self.check_first_sector(offset, data)?;
        if let Backend::Raw { storage } = &mut self.backend {
            return storage
                .write_at(FileId::Image, offset, data)
                .map_err(host_error);
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let mut at = offset;
        // A partial first sector (which may also be the last).
        if at % SECTOR != 0 || (end - at) < SECTOR {
            let lo = at / SECTOR * SECTOR;
            let to = end.min(lo + SECTOR);
            self.merge_sector(lo, at, &data[..(to - offset) as usize])?;
            at = to;
        }
        let whole_end = end / SECTOR * SECTOR;
        if whole_end > at {
            let piece = &data[(at - offset) as usize..(whole_end - offset) as usize];
            self.write_sectors(at, piece)?;
            at = whole_end;
        }
        if at < end {
            self.merge_sector(at, at, &data[(at - offset) as usize..])?;
        }
        Ok(())
    }

    /// Writes whole sectors of an image (`offset` and `data.len()` multiples of 512).
    fn write_sectors(&mut self, offset: u64, data: &[u8]) -> Result<(), CliError> {
        match &mut self.backend {
            Backend::Raw { storage } => storage
                .write_at(FileId::Image, offset, data)
                .map_err(host_error),
            Backend::Fvd { driver, .. } => {
                for (i, piece) in data.chunks(PIECE as usize).enumerate() {
                    driver
                        .write(offset + i as u64 * PIECE, piece)
                        .map_err(driver_error)?;
                }
                Ok(())
            }
        }
    }

    /// Read-modify-write of the sector at `sector`: `bytes` replace its bytes from `at`.
    fn merge_sector(&mut self, sector: u64, at: u64, bytes: &[u8]) -> Result<(), CliError> {
        let mut whole = [0u8; SECTOR as usize];
        self.read(sector, &mut whole)?;
        let from = (at - sector) as usize;
        whole[from..from + bytes.len()].copy_from_slice(bytes);
        self.write_sectors(sector, &whole)
    }

    /// Makes `len` guest bytes at `offset` read as zeros; `discard` lets the storage be
    /// released (a discard request, a punched hole). An image's partial first and last
    /// sectors are zeroed by read-modify-write.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, discard: bool) -> Result<(), CliError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let end = offset + len;
        let (mut lo, mut hi) = (offset, end);
        if self.format.is_image() && len > 0 {
            lo = offset.div_ceil(SECTOR) * SECTOR;
            hi = end / SECTOR * SECTOR;
            if lo >= hi {
                // Within one or two partial sectors: plain zero data.
                return self.write(offset, &vec![0u8; len as usize]);
            }
            if offset < lo {
                self.write(offset, &vec![0u8; (lo - offset) as usize])?;
            }
            if hi < end {
                self.write(hi, &vec![0u8; (end - hi) as usize])?;
            }
        }
        let len = hi - lo;
        match &mut self.backend {
            Backend::Raw { storage } => storage
                .write_zeroes(FileId::Image, lo, len, discard)
                .map_err(host_error),
            Backend::Fvd { driver, .. } if discard => driver.discard(lo, len).map_err(driver_error),
            Backend::Fvd { driver, .. } => driver.write_zeroes(lo, len).map_err(driver_error),
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> Result<(), CliError> {
        match &mut self.backend {
            Backend::Raw { storage } => storage.flush(FileId::Image).map_err(host_error),
            Backend::Fvd { driver, .. } => driver.flush().map_err(driver_error),
        }
    }

    /// Closes the disk: an FVD image writes back its metadata and is marked clean; a
    /// writable raw file is synced.
    pub fn close(self) -> Result<(), CliError> {
        match self.backend {
            Backend::Raw { mut storage } => {
                if self.writable {
                    storage.flush(FileId::Image).map_err(host_error)?;
                }
                Ok(())
            }
            Backend::Fvd { driver, base, .. } => {
                if let BaseLink::Open(disk) = base {
                    let _ = disk.close();
                }
                let (_, clean) = driver.close().map_err(driver_error)?;
                if self.writable && !clean {
                    return Err(CliError::Image(format!(
                        "'{}' could not be marked clean; it will be repaired from its journal \
                         when opened next",
                        self.path.display()
                    )));
                }
                Ok(())
            }
        }
    }
}

/// `err` with `what` (e.g. "error while reading 'a.fvd' at offset 0") in front.
pub fn context(err: CliError, what: impl std::fmt::Display) -> CliError {
    match err {
        CliError::Output(_) | CliError::Exit(_) => err,
        other => CliError::Image(format!("{what}: {other}")),
    }
}

pub use fvd_core::zeros::is_zero;

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(start: u64, length: u64, kind: ExtentKind, offset: Option<u64>) -> Extent {
        Extent {
            start,
            length,
            kind,
            depth: u32::from(kind == ExtentKind::Base),
            zero: kind == ExtentKind::Zero,
            data: kind != ExtentKind::Zero,
            offset,
            file: None,
        }
    }

    #[test]
    fn runs_merge_only_when_contiguous_and_alike() {
        let mut list = Vec::new();
        push_merged(&mut list, extent(0, 512, ExtentKind::Local, Some(8192)));
        push_merged(&mut list, extent(512, 512, ExtentKind::Local, Some(8704)));
        push_merged(&mut list, extent(1024, 512, ExtentKind::Local, Some(20000)));
        push_merged(&mut list, extent(1536, 512, ExtentKind::Zero, None));
        push_merged(&mut list, extent(2048, 512, ExtentKind::Zero, None));
        push_merged(&mut list, extent(2560, 512, ExtentKind::Base, None));
        let summary: Vec<(u64, u64)> = list.iter().map(|e| (e.start, e.length)).collect();
        assert_eq!(summary, [(0, 1024), (1024, 512), (1536, 1024), (2560, 512)]);
    }

    #[test]
    fn formats_parse_and_zero_detection() {
        assert_eq!(DiskFormat::parse("raw").unwrap(), DiskFormat::Raw);
        assert_eq!(DiskFormat::parse("fvd").unwrap(), DiskFormat::Fvd);
        assert_eq!(DiskFormat::parse("qed").unwrap(), DiskFormat::Qed);
        assert!(DiskFormat::parse("qcow2").is_err());
        assert!(is_zero(&[0; 1000]));
        let mut bytes = vec![0u8; 1001];
        bytes[1000] = 1;
        assert!(!is_zero(&bytes));
        bytes[1000] = 0;
        bytes[3] = 1;
        assert!(!is_zero(&bytes));
    }
}
