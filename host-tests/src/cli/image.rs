//! Opening existing files for inspection: refusing what cannot hold an image (directories,
//! FIFOs, sockets), locking them for their use, measuring length and host allocation, reading at offsets, and reading
//! an FVD header and validating it with `fvd_core::fvd::parse`.

use super::error::CliError;
use crate::host::gate::{self, open_no_block, Access, Chain, FileKey, Member, OpenGate, Role};
use crate::host::lock::{FileLock, Usage};
use fvd_core::fvd::{parse, HeaderError, ImageLayout, RawHeader, FVD_MAGIC, RAW_HEADER_LEN};
use fvd_core::probe::{Probe, FVD_2011_MAGIC};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// An open file that may hold an image or its data.
#[derive(Debug)]
pub struct HostFile {
    /// The open file (read-only).
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
    /// Bytes the host file system has allocated for it (`st_blocks * 512`).
    pub allocated: u64,
    /// Its lock ([`crate::host::lock`]), held while it lives.
    pub lock: FileLock,
}

/// Opens `path` read-only if it is a regular file or a block device, locked as an image
/// being read ([`Usage::READ`]: another process may read it, not write it).
pub fn open_host_file(path: &Path) -> Result<HostFile, CliError> {
    open_host_file_as(path, Usage::READ)
}

/// [`open_host_file`] with the locks of `usage` ([`Usage::PROBE`]: none).
pub fn open_host_file_as(path: &Path, usage: Usage) -> Result<HostFile, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| CliError::open(path, e))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(CliError::NotAFile {
            path: path.to_path_buf(),
            reason: "Is a directory",
        });
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(CliError::NotAFile {
            path: path.to_path_buf(),
            reason: "not a regular file or block device",
        });
    }
    let mut file = open_no_block(path, false).map_err(|e| CliError::open(path, e))?;
    let lock = FileLock::acquire(&file, path, usage)?;
    let len = if kind.is_file() {
        meta.len()
    } else {
        file.seek(SeekFrom::End(0))
            .map_err(|e| CliError::open(path, e))?
    };
    Ok(HostFile {
        file,
        len,
        allocated: meta.blocks().saturating_mul(512),
        lock,
    })
}

/// A chain holding just `file` as the image the user named at `path`: the files its
/// header names must differ from it.
pub fn chain_of(file: &File, path: &Path) -> Result<Chain, CliError> {
    let meta = file.metadata().map_err(|e| CliError::open(path, e))?;
    let mut chain = Chain::default();
    chain.admit(Member {
        key: FileKey::of(&meta),
        path: path.to_path_buf(),
        role: Role::Image,
    })?;
    Ok(chain)
}

/// Opens the data file named `name` by the FVD image `image` to measure it (length and
/// allocation, no guest data) through `gate`: it must be a regular file other than the
/// image.
pub fn measure_data_file(
    image: &FvdImage,
    name: &Path,
    gate: &OpenGate,
) -> Result<HostFile, CliError> {
    let mut chain = chain_of(&image.host.file, &image.path)?;
    let opened = gate::open_named(gate, &mut chain, &image.path, name, true, Access::Measure)?;
    let meta = opened
        .file
        .metadata()
        .map_err(|e| CliError::open(&opened.path, e))?;
    Ok(HostFile {
        file: opened.file,
        len: opened.len,
        allocated: meta.blocks().saturating_mul(512),
        lock: opened.lock,
    })
}

/// Reads up to `len` bytes at `offset`; fewer only at end of file.
pub fn read_at_most(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, CliError> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let at = offset
            .checked_add(filled as u64)
            .ok_or_else(|| CliError::io("read", path, io::Error::other("offset overflows")))?;
        match file.read_at(&mut buf[filled..], at) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::io("read", path, e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_exact(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), CliError> {
    file.read_exact_at(buf, offset)
        .map_err(|e| CliError::io("read", path, e))
}

/// True when `bytes` begins with the little-endian `magic`.
pub fn has_magic(bytes: &[u8], magic: u32) -> bool {
    bytes.get(..4) == Some(&magic.to_le_bytes()[..])
}

/// Writes `bytes` at the start of the file at `path` (a header, in place) with one
/// positioned write, then syncs. The caller holds the image's lock.
pub fn write_header_bytes(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CliError::open(path, e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| CliError::io("write", path, e))?;
    file.sync_all().map_err(|e| CliError::io("sync", path, e))
}

/// True when `a` and `b` both exist and are the same file (device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// "it is a QED image" (or raw, qcow2...) for a file whose first bytes are another
/// format's than the one it was opened as; `None` when they are that format's, so the
/// header's own error explains.
pub fn what_it_is(bytes: &[u8], opened_as: fvd_core::probe::Probe) -> Option<String> {
    use fvd_core::probe::Probe;
    let seems = fvd_core::probe::probe(bytes);
    let same_format = match seems {
        Probe::Fvd | Probe::Fvd2011 | Probe::DamagedFvd { .. } => opened_as == Probe::Fvd,
        Probe::Qed | Probe::DamagedQed { .. } => opened_as == Probe::Qed,
        _ => false,
    };
    (!same_format).then(|| format!("it is {seems}"))
}

/// A header error worded to follow "'FILE' is not an FVD image: ".
pub fn header_reason(err: &HeaderError) -> String {
    match *err {
        HeaderError::BadMagic {
            found: FVD_2011_MAGIC,
        } => format!("it is {}", Probe::Fvd2011),
        HeaderError::BadMagic { found } => {
            format!("magic is {found:#010x}, expected {FVD_MAGIC:#010x} (\"FVD\\0\")")
        }
        ref other => other.to_string(),
    }
}

/// The bytes of a NUL-terminated header name field, without the NUL.
fn name_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Text of a NUL-terminated header name field, for display (lossy for non-UTF-8 bytes:
/// never use it to find a file).
pub fn name_text(field: &[u8]) -> String {
    String::from_utf8_lossy(name_bytes(field)).into_owned()
}

/// A NUL-terminated header name field as the path it names, byte for byte (names need
/// not be UTF-8, as on the file system).
pub fn name_path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(name_bytes(field)))
}

/// An FVD image whose header passed validation.
pub struct FvdImage {
    /// The path it was opened by.
    pub path: PathBuf,
    /// The open file.
    pub host: HostFile,
    /// Its header.
    pub header: RawHeader,
    /// The validated layout.
    pub layout: ImageLayout,
}

/// Opens `path` (locked as an image being read) and validates its FVD header.
pub fn open_fvd(path: &Path) -> Result<FvdImage, CliError> {
    open_fvd_as(path, Usage::READ)
}

/// [`open_fvd`] with the locks of `usage`.
pub fn open_fvd_as(path: &Path, usage: Usage) -> Result<FvdImage, CliError> {
    let host = open_host_file_as(path, usage)?;
    let bytes = read_at_most(&host.file, path, 0, RAW_HEADER_LEN)?;
    let (header, layout) = parse(&bytes, host.len).map_err(|err| CliError::NotFvd {
        path: path.to_path_buf(),
        reason: match what_it_is(&bytes, fvd_core::probe::Probe::Fvd) {
            Some(what) => format!("{what}; {}", header_reason(&err)),
            None => header_reason(&err),
        },
    })?;
    Ok(FvdImage {
        path: path.to_path_buf(),
        header: header.clone(),
        host,
        layout,
    })
}
