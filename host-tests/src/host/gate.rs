//! The open gate: the one way the host opens a file that an image header names (its data
//! file, its base at any depth), under a policy the caller supplies ([`OpenGate`]), and the
//! rule that every file of one image's chain is a different file ([`Chain`]).
//!
//! A header is untrusted input: an image from elsewhere may name any path. The gate
//! 1. resolves a relative name against the directory of the image naming it;
//! 2. refuses anything but a regular file (devices, FIFOs, directories, sockets), looking
//!    before opening and checking again on the open descriptor;
//! 3. refuses a data file whose real path (symlinks resolved) lies outside the directory
//!    of the image naming it, unless the caller allows external data files, whenever guest
//!    data would be read or written through it (only measuring its length is allowed);
//! 4. opens read-only unless the caller asks to write (the data file of a writable image,
//!    the base `commit` writes into);
//! 5. checks that the file is none of the files already in the chain (by device and inode,
//!    so symlinks and hard links count as the same file);
//! 6. takes the QEMU-compatible locks of [`crate::host::lock`] for the use.
//!
//! Bases may lie anywhere, like qemu-img's backing files: they are only ever read (except
//! by `commit`, which names the file before it writes it).

use crate::host::lock::{FileLock, LockError, Usage};
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The caller's policy for files an image names, and how every file is shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenGate {
    /// Read and write through a data file that lies outside the directory of the image
    /// naming it (`--allow-external-data-file`).
    pub allow_external_data_file: bool,
    /// Share every permission with other processes (`-U` / `--force-share`); only for
    /// read-only opens.
    pub force_share: bool,
    /// Refuse other writers even of a raw disk (qemu-img convert's source).
    pub no_share: bool,
    /// Share every permission on the files opened read-only (the bases) while the image
    /// itself is written (`qemu-img rebase -U`).
    pub force_share_bases: bool,
}

impl OpenGate {
    /// The lock usage of an FVD or QED image file (or its data file, or a base) opened
    /// for writing or not.
    pub fn image_usage(&self, write: bool) -> Result<Usage, GateError> {
        match (write, self.force_share || self.force_share_bases) {
            (true, _) if self.force_share => Err(GateError::ForceShareWritable),
            (true, _) => Ok(Usage::WRITE),
            (false, true) => Ok(Usage::FORCE_SHARE),
            (false, false) => Ok(Usage::READ),
        }
    }

    /// The lock usage of a raw disk opened for writing or not (QEMU's raw driver shares
    /// everything, except for `no_share`).
    pub fn raw_usage(&self, write: bool) -> Result<Usage, GateError> {
        let share_read = self.force_share || self.force_share_bases;
        match (write, share_read, self.no_share) {
            (true, _, _) if self.force_share => Err(GateError::ForceShareWritable),
            (true, _, false) => Ok(Usage::RAW_WRITE),
            (true, _, true) => Ok(Usage::WRITE),
            (false, true, _) => Ok(Usage::FORCE_SHARE),
            (false, false, false) => Ok(Usage::RAW_READ),
            (false, false, true) => Ok(Usage::READ),
        }
    }
}

/// What the opener does with a named file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only its length and allocation are looked at (`info`, `check`): no guest data.
    Measure,
    /// Guest data is read from it.
    Read,
    /// Guest data is read and written.
    Write,
}

/// What a file is to the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The image the user named.
    Image,
    /// The data file of the image at this path.
    DataFile(PathBuf),
    /// The base of the image at this path.
    Base(PathBuf),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Image => write!(f, "the image"),
            Role::DataFile(of) => write!(f, "the data file of '{}'", of.display()),
            Role::Base(of) => write!(f, "the base of '{}'", of.display()),
        }
    }
}

/// A file's identity: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileKey {
    /// The identity of `meta`'s file.
    pub fn of(meta: &Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One file of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity.
    pub key: FileKey,
    /// The path it was opened by.
    pub path: PathBuf,
    /// What it is to the chain.
    pub role: Role,
}

/// The files of one image's chain so far: the image, its data file, every base and their
/// data files. Every member is a different file.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    members: Vec<Member>,
}

impl Chain {
    /// Adds `member`, refusing a file that is already in the chain.
    pub fn admit(&mut self, member: Member) -> Result<(), GateError> {
        if let Some(first) = self.members.iter().find(|m| m.key == member.key) {
            return Err(GateError::SameFile {
                first: Box::new(first.clone()),
                second: Box::new(member),
            });
        }
        self.members.push(member);
        Ok(())
    }

    /// Every member, in the order they were opened.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member that is file `key`, if any.
    pub fn find(&self, key: FileKey) -> Option<&Member> {
        self.members.iter().find(|m| m.key == key)
    }
}

/// Why the gate refused or failed to open a file.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The file could not be opened or examined.
    #[error("Could not open '{}': {}", .path.display(), crate::cli::error::io_reason(.source))]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The name leads to something that is not a regular file.
    #[error("Could not open '{}' ({role}): it is {kind}, not a regular file", .path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What the header names it as.
        role: Role,
        /// What it is ("a directory", "a block device", ...).
        kind: &'static str,
    },
    /// A data file outside the directory of the image naming it, not allowed.
    #[error(
        "Refusing to use '{}' ({role}): it lies outside the image's directory (as '{}'); \
         if you trust the image, allow it with --allow-external-data-file",
        .name.display(),
        .real.display()
    )]
    External {
        /// The name as the header stores it (its bytes, shown lossily).
        name: PathBuf,
        /// Where it leads.
        real: PathBuf,
        /// What the header names it as.
        role: Role,
    },
    /// Two members of one chain are the same file.
    #[error(
        "'{}' ({}) is the same file as '{}' ({}): the image, its data file and its bases \
         must be different files",
        .second.path.display(),
        .second.role,
        .first.path.display(),
        .first.role
    )]
    SameFile {
        /// The member already in the chain.
        first: Box<Member>,
        /// The member refused.
        second: Box<Member>,
    },
    /// Another process uses the file in a conflicting way.
    #[error("Could not open '{}': {source}", .source.path().display())]
    Locked {
        /// The conflict.
        #[from]
        source: LockError,
    },
    /// `-U` was combined with a writable open.
    #[error("force-share (-U) can only be used with read-only images")]
    ForceShareWritable,
}

/// A file opened through the gate, with its lock.
#[derive(Debug)]
pub struct Opened {
    /// The open file (readable; writable when asked for).
    pub file: File,
    /// The path it was opened by.
    pub path: PathBuf,
    /// Its identity.
    pub key: FileKey,
    /// Its length in bytes.
    pub len: u64,
    /// Its locks, held while this lives.
    pub lock: FileLock,
}

/// Resolves a name stored in an image header against the directory of `image`.
pub fn resolve(image: &Path, name: impl AsRef<Path>) -> PathBuf {
    let name = name.as_ref();
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(name)
    }
}

/// The directory `image` lives in (`.` for a bare name).
fn directory_of(image: &Path) -> &Path {
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// What a non-regular file is, for messages.
fn kind_of(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` without blocking on FIFOs or taking a terminal, then makes the descriptor
/// blocking again (regular files never block anyway).
pub fn open_no_block(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // SAFETY: F_GETFL/F_SETFL only read and set the descriptor's status flags; the
    // descriptor is owned by `file`.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Opens file `name`, which the header of the image at `image` names as its data file
/// (`data`) or its base (`!data`), for `access`, under `gate`, and admits it to `chain`.
pub fn open_named(
    gate: &OpenGate,
    chain: &mut Chain,
    image: &Path,
    name: &Path,
    data: bool,
    access: Access,
) -> Result<Opened, GateError> {
    let role = if data {
        Role::DataFile(image.to_path_buf())
    } else {
        Role::Base(image.to_path_buf())
    };
    let path = resolve(image, name);
    let io_err = |source| GateError::Io {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(GateError::NotAFile {
            path,
            role,
            kind: kind_of(&meta),
        });
    }
    if data && access != Access::Measure && !gate.allow_external_data_file {
        let real = std::fs::canonicalize(&path).map_err(io_err)?;
        let dir = std::fs::canonicalize(directory_of(image)).map_err(io_err)?;
        if !real.starts_with(&dir) {
            return Err(GateError::External {
                name: name.to_path_buf(),
                real,
                role,
            });
        }
    }
    let write = access == Access::Write;
    let usage = gate.image_usage(write)?;
    let file = open_no_block(&path, write).map_err(io_err)?;
    let opened_meta = file.metadata().map_err(io_err)?;
    if !opened_meta.is_file() || FileKey::of(&opened_meta) != FileKey::of(&meta) {
        // Replaced between the look and the open.
        return Err(GateError::NotAFile {
            path,
            role,
            kind: kind_of(&opened_meta),
        });
    }
    let key = FileKey::of(&opened_meta);
    chain.admit(Member {
        key,
        path: path.clone(),
        role,
    })?;
    let lock = FileLock::acquire(&file, &path, usage)?;
    Ok(Opened {
        file,
        len: opened_meta.len(),
        path,
        key,
        lock,
    })
}

/// Opens the image file the user named at `path` (a regular file or a block device) with
/// `usage`, and admits it to `chain` as [`Role::Image`].
pub fn open_image_file(
    chain: &mut Chain,
    path: &Path,
    write: bool,
    usage: Usage,
) -> Result<Opened, GateError> {
    let io_err = |source| GateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_no_block(path, write).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(io_err(io::Error::from(io::ErrorKind::IsADirectory)));
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(GateError::NotAFile {
            path: path.to_path_buf(),
            role: Role::Image,
            kind: kind_of(&meta),
        });
    }
    let key = FileKey::of(&meta);
    chain.admit(Member {
        key,
        path: path.to_path_buf(),
        role: Role::Image,
    })?;
    let lock = FileLock::acquire(&file, path, usage)?;
    let len = if kind.is_file() {
        meta.len()
    } else {
        use std::io::Seek;
        (&file).seek(io::SeekFrom::End(0)).map_err(io_err)?
    };
    Ok(Opened {
        file,
        path: path.to_path_buf(),
        key,
        len,
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_against_the_naming_image() {
        assert_eq!(
            resolve(Path::new("/v/img.fvd"), "d.raw"),
            Path::new("/v/d.raw")
        );
        assert_eq!(resolve(Path::new("img.fvd"), "d.raw"), Path::new("d.raw"));
        assert_eq!(resolve(Path::new("/v/img.fvd"), "/x"), Path::new("/x"));
    }

    #[test]
    fn force_share_is_for_read_only_opens() {
        let gate = OpenGate {
            force_share: true,
            ..OpenGate::default()
        };
        assert!(gate.image_usage(true).is_err());
        assert!(gate.raw_usage(true).is_err());
        assert_eq!(gate.image_usage(false).unwrap(), Usage::FORCE_SHARE);
    }

    #[test]
    fn force_share_of_bases_leaves_the_written_image_locked() {
        let gate = OpenGate {
            force_share_bases: true,
            ..OpenGate::default()
        };
        assert_eq!(gate.image_usage(true).unwrap(), Usage::WRITE);
        assert_eq!(gate.raw_usage(true).unwrap(), Usage::RAW_WRITE);
        assert_eq!(gate.image_usage(false).unwrap(), Usage::FORCE_SHARE);
        assert_eq!(gate.raw_usage(false).unwrap(), Usage::FORCE_SHARE);
    }
}
