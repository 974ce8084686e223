//! Real files behind the engine: [`FileStorage`] performs commands with positioned I/O,
//! `fdatasync` for flush and `fallocate` for write-zeroes; [`open_image`] opens an FVD or
//! QED image with its data file (FVD only) and its base chain. The image is locked for its
//! use ([`crate::host::lock`]); every file a header names is opened through the open gate
//! ([`crate::host::gate`]: relative names resolve against the directory of the image that names
//! them, and every file of the chain must be a different file). The format is told by the
//! magic. A base that is itself an image keeps its own files ([`Base::Image`]): the driver
//! runs one engine per image of the chain over them, and core's chain serves the base reads.

use crate::host::direct::DirectFile;
use crate::host::driver::{Driver, DriverError, DriverOptions, LayerError};
use crate::host::gate::{self, Access, Chain, GateError, OpenGate, Opened};
use crate::host::lock::{FileLock, Usage};
use crate::host::storage::{write_zeroes_by_writing, Storage};
use fvd_core::chain::{FileKey, MAX_DEPTH};
use fvd_core::engine::FileId;
use fvd_core::fvd::header::name_field;
use fvd_core::fvd::{parse, HeaderError, RawHeader, RAW_HEADER_LEN};
use fvd_core::probe::{probe, Probe, PROBE_LEN};
use fvd_core::qed::QedHeaderError;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Deepest base chain followed (the images of a chain, as core's chain stacks them).
pub const MAX_CHAIN_DEPTH: usize = MAX_DEPTH;

/// Reads `buf.len()` bytes at `offset`, filling zeros past the end of the file.
pub fn read_full_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    read_full_with(|b, at| file.read_at(b, at), offset, buf, None)
}

/// Reads `buf.len()` bytes at `offset` of a file that was `known_len` bytes long when it
/// was opened: zeros past that length, but an error when the file ends before it (it was
/// truncated or replaced under us, and the missing bytes are not zeros).
pub fn read_within(file: &File, offset: u64, buf: &mut [u8], known_len: u64) -> io::Result<()> {
    read_full_with(|b, at| file.read_at(b, at), offset, buf, Some(known_len))
}

/// The read loop behind [`read_full_at`] and [`read_within`]: `read` is one positioned
/// read system call; short reads and interruptions are retried, end of file fills zeros
/// (an error before `known_len`), and any other error is returned.
pub fn read_full_with(
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
    offset: u64,
    buf: &mut [u8],
    known_len: Option<u64>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::other("read offset overflows"))?;
        match read(&mut buf[done..], at) {
            Ok(0) => {
                if let Some(len) = known_len.filter(|&len| at < len) {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file ends at byte {at}, but it was {len} bytes long when                              opened (truncated or replaced meanwhile)"
                        ),
                    ));
                }
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n.min(buf.len() - done),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `len` bytes at `offset` of `file` read as zeros with `fallocate`, punching a hole
/// when `unmap`. Returns false when the file system cannot do it.
pub fn fallocate_zero(file: &File, offset: u64, len: u64, unmap: bool) -> bool {
    fallocate_range(file, offset, len, unmap)
        && (!unmap || grow_to(file, offset.saturating_add(len)))
}

/// [`fallocate_zero`] without making the file cover a hole punched past its end (see
/// [`grow_to`]): the file's length never changes when `unmap`.
pub fn fallocate_range(file: &File, offset: u64, len: u64, unmap: bool) -> bool {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return false;
    };
    let mode = if unmap {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) };
    rc == 0
}

/// Extends `file` to `end` bytes if it is shorter (a punched hole past the end does not
/// extend the file; a write would have). Looking at the length and setting it are two
/// steps: a host that writes in parallel must keep writes past the end from landing
/// between them, or the file is cut back over them.
pub fn grow_to(file: &File, end: u64) -> bool {
    match file.metadata() {
        Ok(meta) if meta.len() < end => file.set_len(end).is_ok(),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Makes `len` bytes at `offset` of `file` read as zeros: `fallocate` when the file system
/// can, plain writes of zeros otherwise.
pub fn write_zeroes_at(file: &File, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
    if fallocate_zero(file, offset, len, unmap) {
        return Ok(());
    }
    write_zero_bytes_at(file, offset, len)
}

/// Writes `len` zero bytes at `offset` of `file`.
pub fn write_zero_bytes_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    const ZERO_CHUNK: usize = 1 << 20;
    static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A raw file used as a base image.
pub struct RawBase {
    file: File,
    len: u64,
    /// Held while the base is open.
    _lock: FileLock,
}

impl RawBase {
    /// Opens `path`, a file the user named, read-only as a base (locked like one).
    pub fn open(path: &Path) -> Result<Self, GateError> {
        let opened = gate::open_image_file(&mut Chain::default(), path, false, Usage::READ)?;
        Ok(Self::over(opened))
    }

    /// A base over a file the gate has opened.
    fn over(opened: Opened) -> Self {
        RawBase {
            file: opened.file,
            len: opened.len,
            _lock: opened.lock,
        }
    }
}

impl RawBase {
    /// Reads `buf.len()` bytes at `offset`. Past the length it had at open the base reads
    /// as zeros; a base that ends earlier now was truncated or replaced, and its missing
    /// bytes are not zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_within(&self.file, offset, buf, self.len)
    }

    /// Its length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for hosts that read it from other threads.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The base of an image.
pub enum Base {
    /// A raw file, read by the host.
    Raw(RawBase),
    /// An FVD or QED image: its own files, read by its own engine as the layer below in
    /// the chain (never by the host as base data).
    Image {
        /// Its path, for messages.
        path: PathBuf,
        /// Its files (and its own base).
        files: Box<FileStorage>,
    },
    /// A base of `len` bytes that must not be read (a commit reads only what the image
    /// holds itself): a read of it fails.
    Refused {
        /// Its length.
        len: u64,
    },
}

impl Base {
    /// Its length in bytes, when the host reads it (`None` for an image: its size is its
    /// engine's).
    pub fn len(&self) -> Option<u64> {
        match self {
            Base::Raw(raw) => Some(raw.len),
            Base::Refused { len } => Some(*len),
            Base::Image { .. } => None,
        }
    }

    /// True for a base the host reads that has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

/// The identity of an open file in a chain: its device and inode.
pub fn file_key(file: &File) -> io::Result<FileKey> {
    let meta = file.metadata()?;
    Ok(FileKey(
        u128::from(meta.dev()) << 64 | u128::from(meta.ino()),
    ))
}

/// The files of each image of a chain, the image first, and their identities and paths.
pub struct Layers {
    /// Each image's files; only the last may have a base, a raw one.
    pub files: Vec<FileStorage>,
    /// The identity of each image file.
    pub keys: Vec<FileKey>,
    /// The path of each image.
    pub paths: Vec<PathBuf>,
}

/// What an open image holds besides its files: their locks, and the files of its chain.
#[derive(Debug, Default)]
pub struct Held {
    /// Locks on the image and its data file (a base holds its own).
    pub locks: Vec<FileLock>,
    /// Every file of the chain as opened (filled in for the image the user named).
    pub chain: Chain,
}

/// The files of one open image.
pub struct FileStorage {
    /// The image file.
    pub image: File,
    /// The separate data file.
    pub data: Option<File>,
    /// The base image.
    pub base: Option<Base>,
    /// The locks and chain of the files above, held while they are open.
    pub held: Held,
    /// `O_DIRECT` descriptors of the image and its data file (`cache=none`), set by
    /// [`FileStorage::bypass_page_cache`].
    pub direct: Option<DirectFiles>,
    /// Flushes return without syncing (cache mode `unsafe`, `qemu-img convert`'s
    /// default for its output): writes reach the disk whenever the kernel writes them.
    pub unsafe_cache: bool,
}

/// The `O_DIRECT` descriptors of an image's own files.
#[derive(Debug)]
pub struct DirectFiles {
    image: DirectFile,
    data: Option<DirectFile>,
}

impl FileStorage {
    /// Splits the chain of the image at `path` into one storage per image: each base
    /// that is an image becomes the next layer.
    pub fn into_layers(self, path: &Path) -> io::Result<Layers> {
        let mut layers = Layers {
            files: Vec::new(),
            keys: Vec::new(),
            paths: Vec::new(),
        };
        let mut next = Some((self, path.to_path_buf()));
        while let Some((mut storage, path)) = next.take() {
            match storage.base.take() {
                Some(Base::Image { path, files }) => next = Some((*files, path)),
                other => storage.base = other,
            }
            layers.keys.push(file_key(&storage.image)?);
            layers.files.push(storage);
            layers.paths.push(path);
        }
        Ok(layers)
    }

    /// Makes reads and writes of the image and its data file bypass the host page cache
    /// (`O_DIRECT`, QEMU's `cache=none`); a raw base is read as before.
    pub fn bypass_page_cache(&mut self, writable: bool) -> io::Result<()> {
        if self.direct.is_none() {
            self.direct = Some(DirectFiles {
                image: DirectFile::over(&self.image, writable)?,
                data: self
                    .data
                    .as_ref()
                    .map(|f| DirectFile::over(f, writable))
                    .transpose()?,
            });
        }
        Ok(())
    }

    fn direct_file(&self, file: FileId) -> Option<&DirectFile> {
        let direct = self.direct.as_ref()?;
        match file {
            FileId::Image => Some(&direct.image),
            FileId::Data => direct.data.as_ref(),
            FileId::Base => None,
        }
    }

    /// The open file behind `file` (the base is not a file of this image's own).
    pub fn file(&self, file: FileId) -> io::Result<&File> {
        match file {
            FileId::Image => Ok(&self.image),
            FileId::Data => self
                .data
                .as_ref()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no data file")),
            FileId::Base => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the base image is read-only",
            )),
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match file {
            FileId::Base => match self.base.as_ref() {
                Some(Base::Raw(raw)) => raw.read(offset, buf),
                Some(Base::Image { .. }) => Err(image_base_error()),
                Some(Base::Refused { .. }) => Err(io::Error::other(
                    "internal error: a base that must not be read was read",
                )),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no base image")),
            },
            _ => {
                if let Some(direct) = self.direct_file(file) {
                    if direct.read_at(offset, buf)? {
                        return Ok(());
                    }
                }
                read_full_at(self.file(file)?, offset, buf)
            }
        }
    }

    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        if let Some(direct) = self.direct_file(file) {
            if direct.write_at(offset, buf)? {
                return Ok(());
            }
        }
        self.file(file)?.write_all_at(buf, offset)
    }

    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if fallocate_zero(self.file(file)?, offset, len, unmap) {
            return Ok(());
        }
        write_zeroes_by_writing(self, file, offset, len)
    }

    fn flush(&mut self, file: FileId) -> io::Result<()> {
        let file = self.file(file)?;
        if self.unsafe_cache {
            return Ok(());
        }
        file.sync_data()
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.file(file)?.set_len(len)
    }

    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        Ok(match file {
            FileId::Image => Some(self.image.metadata()?.len()),
            FileId::Data => match &self.data {
                Some(f) => Some(f.metadata()?.len()),
                None => None,
            },
            FileId::Base => match &self.base {
                Some(Base::Image { .. }) => return Err(image_base_error()),
                Some(base) => base.len(),
                None => None,
            },
        })
    }

    /// Files go through the page cache: after a failed `fdatasync` the kernel may have
    /// dropped the pages it could not write (Linux marks them clean).
    fn failed_flush_loses_writes(&self) -> bool {
        true
    }
}

/// A base image's files used as if they were raw data: an internal error, since the
/// driver runs them as a layer of their own.
fn image_base_error() -> io::Error {
    io::Error::other("internal error: a base image's files were read as raw data")
}

/// Why an image could not be opened from a path.
#[derive(Debug, thiserror::Error)]
pub enum ImageOpenError {
    /// A file could not be opened.
    #[error("Could not open '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The header is not a valid FVD header.
    #[error("'{path}' is not a valid FVD image: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// Why.
        source: HeaderError,
    },
    /// The header is not a valid QED header.
    #[error("'{path}' is not a valid QED image: {source}")]
    QedHeader {
        /// The file.
        path: PathBuf,
        /// Why.
        source: QedHeaderError,
    },
    /// The base chain is deeper than [`MAX_CHAIN_DEPTH`].
    #[error("backing chain of '{0}' is too deep (more than {MAX_CHAIN_DEPTH} images) or loops")]
    ChainTooDeep(PathBuf),
    /// The engine refused the image.
    #[error("Could not open '{path}': {source}")]
    Engine {
        /// The file.
        path: PathBuf,
        /// Why.
        source: DriverError,
    },
    /// A base looks like an image that cannot be opened (damaged magic, 2011 format).
    #[error("'{}' seems to be {seems}; it is not read as raw data (name its format, -F raw, to force that)", .path.display())]
    LookAlike {
        /// The file.
        path: PathBuf,
        /// What it seems to be.
        seems: Probe,
    },
    /// The open gate refused a file (a file named by a header, the same file twice in a
    /// chain, a lock held by another process).
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// Resolves a name stored in an image header (bytes, not necessarily UTF-8) against the
/// directory of `image`.
pub fn resolve_relative(image: &Path, name: impl AsRef<OsStr>) -> PathBuf {
    gate::resolve(image, Path::new(name.as_ref()))
}

/// The file a header name field names, byte for byte (`None` when empty).
fn name_of(field: &[u8]) -> Option<&Path> {
    name_field(field)
        .filter(|n| !n.is_empty())
        .map(|n| Path::new(OsStr::from_bytes(n)))
}

/// How one open walks a chain: the caller's gate and the files met so far.
struct Walk<'a> {
    gate: &'a OpenGate,
    chain: Chain,
}

/// Opens the base named by an FVD image's header. A fully prefetched image never reads its
/// base, which need not exist any more (FORMAT.md §7): it is not opened.
fn open_base(
    walk: &mut Walk<'_>,
    image: &Path,
    header: &RawHeader,
    options: &DriverOptions,
    depth: usize,
) -> Result<Option<Base>, ImageOpenError> {
    let Some(name) = name_of(&header.base_img) else {
        return Ok(None);
    };
    if header.base_img_fully_prefetched.get() == 1 {
        return Ok(None);
    }
    let format = name_field(&header.base_img_fmt).unwrap_or_default();
    open_base_named(walk, image, name, format, options, depth).map(Some)
}

/// Opens base `name` of `image` read-only through the gate: a raw file, or (by `format` —
/// `fvd`, `qed`, `raw` — or, when that is empty or unknown, by magic) an FVD or QED image,
/// recursively.
fn open_base_named(
    walk: &mut Walk<'_>,
    image: &Path,
    name: &Path,
    format: &[u8],
    options: &DriverOptions,
    depth: usize,
) -> Result<Base, ImageOpenError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(ImageOpenError::ChainTooDeep(image.to_path_buf()));
    }
    let opened = gate::open_named(walk.gate, &mut walk.chain, image, name, false, Access::Read)?;
    let engine_image = match format {
        b"fvd" | b"qed" => true,
        b"raw" => false,
        _ => {
            let mut first = [0u8; PROBE_LEN];
            read_full_at(&opened.file, 0, &mut first).map_err(|source| ImageOpenError::Io {
                path: opened.path.clone(),
                source,
            })?;
            match probe(&first) {
                Probe::Fvd | Probe::Qed => true,
                Probe::Raw => false,
                // A damaged or 2011 image is never read as raw data under an overlay.
                seems => {
                    return Err(ImageOpenError::LookAlike {
                        path: opened.path.clone(),
                        seems,
                    })
                }
            }
        }
    };
    if engine_image {
        // The image is layer `depth + 1` of the chain.
        if depth + 1 >= MAX_CHAIN_DEPTH {
            return Err(ImageOpenError::ChainTooDeep(image.to_path_buf()));
        }
        let base_options = DriverOptions {
            writable: false,
            ..*options
        };
        let path = opened.path.clone();
        let files = open_files(walk, opened, &base_options, depth + 1)?;
        Ok(Base::Image {
            path,
            files: Box::new(files),
        })
    } else {
        Ok(Base::Raw(RawBase::over(opened)))
    }
}

/// The backing file of the QED image at `path` (raw when the header says so, otherwise
/// probed), whose first bytes are `bytes`. A QED image has no data file.
fn open_qed_base(
    walk: &mut Walk<'_>,
    path: &Path,
    image: &File,
    bytes: &[u8],
    file_len: u64,
    options: &DriverOptions,
    depth: usize,
) -> Result<Option<Base>, ImageOpenError> {
    let (_, layout) =
        fvd_core::qed::parse(bytes, file_len).map_err(|source| ImageOpenError::QedHeader {
            path: path.to_path_buf(),
            source,
        })?;
    let Some(backing) = layout.backing else {
        return Ok(None);
    };
    // Validation placed the name inside the header area, inside the file, at most 4095
    // bytes after byte 64: read the file up to its end.
    let end = usize::try_from(backing.name.end()).unwrap_or(usize::MAX);
    let mut area = vec![0u8; end];
    read_full_at(image, 0, &mut area).map_err(|source| ImageOpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = layout.backing_name(&area).unwrap_or_default();
    let format: &[u8] = if backing.raw { b"raw" } else { b"" };
    open_base_named(
        walk,
        path,
        Path::new(OsStr::from_bytes(name)),
        format,
        options,
        depth,
    )
    .map(Some)
}

/// Opens the FVD or QED image at `path` with its data file and base chain, with the
/// default [`OpenGate`] (no external data file, nothing force-shared).
pub fn open_image(
    path: &Path,
    options: DriverOptions,
) -> Result<Driver<FileStorage>, ImageOpenError> {
    open_image_with(path, options, &OpenGate::default())
}

/// Opens the FVD or QED image at `path` with its data file and base chain; every file
/// its headers name goes through `gate`.
pub fn open_image_with(
    path: &Path,
    options: DriverOptions,
    gate: &OpenGate,
) -> Result<Driver<FileStorage>, ImageOpenError> {
    let storage = open_storage_with(path, options, gate)?;
    open_driver(storage, path, options)
}

/// Starts the driver on the chain of the image at `path` whose files are `storage`: one
/// engine per image, run by core's chain.
pub fn open_driver(
    storage: FileStorage,
    path: &Path,
    options: DriverOptions,
) -> Result<Driver<FileStorage>, ImageOpenError> {
    let layers = storage
        .into_layers(path)
        .map_err(|source| ImageOpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let Layers { files, keys, paths } = layers;
    Driver::open_chain(files, &keys, options, None).map_err(|LayerError { layer, error }| {
        ImageOpenError::Engine {
            path: paths
                .get(layer)
                .map_or_else(|| path.to_path_buf(), Clone::clone),
            source: error,
        }
    })
}

/// Opens the files of the FVD or QED image at `path` (image, data file, base chain) without
/// starting an engine on them: for hosts that run the engine themselves.
pub fn open_storage(path: &Path, options: DriverOptions) -> Result<FileStorage, ImageOpenError> {
    open_storage_with(path, options, &OpenGate::default())
}

/// [`open_storage`] with every file the headers name going through `gate`.
pub fn open_storage_with(
    path: &Path,
    options: DriverOptions,
    gate: &OpenGate,
) -> Result<FileStorage, ImageOpenError> {
    let mut walk = Walk {
        gate,
        chain: Chain::default(),
    };
    let usage = gate.image_usage(options.writable)?;
    let image = gate::open_image_file(&mut walk.chain, path, options.writable, usage)?;
    let mut storage = open_files(&mut walk, image, &options, 0)?;
    storage.held.chain = walk.chain;
    Ok(storage)
}

/// Opens, through `gate`, the FVD or QED image `opened` already is (a base `commit` writes
/// into, opened with [`gate::open_named`]) with its data file and base chain, `chain`
/// holding the files it must differ from.
pub fn open_opened_image(
    opened: Opened,
    options: DriverOptions,
    gate: &OpenGate,
    chain: Chain,
) -> Result<Driver<FileStorage>, ImageOpenError> {
    let path = opened.path.clone();
    let mut walk = Walk { gate, chain };
    let mut storage = open_files(&mut walk, opened, &options, 0)?;
    storage.held.chain = walk.chain;
    open_driver(storage, &path, options)
}

/// The files of the image `opened` (at chain depth `depth`): its header says which data
/// file and base to open.
fn open_files(
    walk: &mut Walk<'_>,
    opened: Opened,
    options: &DriverOptions,
    depth: usize,
) -> Result<FileStorage, ImageOpenError> {
    let Opened {
        file: image,
        path,
        len,
        lock,
        ..
    } = opened;
    let path = path.as_path();
    let mut bytes = vec![0u8; RAW_HEADER_LEN];
    read_full_at(&image, 0, &mut bytes).map_err(|source| ImageOpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut locks = vec![lock];
    if fvd_core::qed::probe(&bytes) {
        let base = open_qed_base(walk, path, &image, &bytes, len, options, depth)?;
        return Ok(FileStorage {
            image,
            data: None,
            base,
            held: Held {
                locks,
                chain: Chain::default(),
            },
            direct: None,
            unsafe_cache: false,
        });
    }
    let (header, _) = parse(&bytes, len).map_err(|source| ImageOpenError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    let data = match name_of(&header.data_file) {
        Some(name) => {
            let access = if options.writable {
                Access::Write
            } else {
                Access::Read
            };
            let opened = gate::open_named(walk.gate, &mut walk.chain, path, name, true, access)?;
            locks.push(opened.lock);
            Some(opened.file)
        }
        None => None,
    };
    let base = open_base(walk, path, header, options, depth)?;
    Ok(FileStorage {
        image,
        data,
        base,
        held: Held {
            locks,
            chain: Chain::default(),
        },
        direct: None,
        unsafe_cache: false,
    })
}
