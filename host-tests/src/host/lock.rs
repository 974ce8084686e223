//! Image locks that QEMU's tools honour, taken the way QEMU's file-posix driver takes them,
//! so `fvd-img`, `qemu-img`, `qemu-io` and QEMU itself exclude each other.
//!
//! QEMU describes what a user of a file does with permission bits ([`Perms`], the
//! `BLK_PERM_*` of include/block/block-common.h) and expresses them as shared OFD byte-range
//! locks (`F_OFD_SETLK`, released when the last descriptor of the open file description
//! closes): for each permission a user holds, byte `100 + bit`; for each permission it
//! refuses to share with others, byte `200 + bit`. Before a user may proceed it tests
//! (`F_OFD_GETLK`, for an exclusive lock) that no other open file description holds
//! `200 + bit` for a permission it wants, nor `100 + bit` for one it refuses to share;
//! locks are applied first and tested second, so two openers racing both see each other.
//! The messages are QEMU's: `Failed to get "write" lock` for the first kind of conflict,
//! `Failed to get shared "write" lock` for the second.
//!
//! What each use takes ([`Usage`]) is what `qemu-io`/`qemu-img` 7.2 to 10 take, measured in
//! /proc/locks: an FVD or QED image (QEMU's format driver over its file) holds consistent
//! read (+ write and resize when writable) and refuses to share write and resize; a raw disk
//! (QEMU's raw driver) refuses nothing; `-U` holds consistent read only.
//!
//! One process counts as one user of a file: all its opens of one file (by device and
//! inode) share one lock description here, which holds the union of their permissions,
//! so the several opens a command makes of one file never conflict with each other. A lock
//! lives as long as its [`FileLock`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// QEMU's block permission bits (`BLK_PERM_*`). QEMU 6.1 and older also had a fifth,
/// GRAPH_MOD (0x10); 7.2 and later have these four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms(0);
    /// `BLK_PERM_CONSISTENT_READ`: reads see a self-consistent disk.
    pub const CONSISTENT_READ: Perms = Perms(0x01);
    /// `BLK_PERM_WRITE`: writes that change the visible contents.
    pub const WRITE: Perms = Perms(0x02);
    /// `BLK_PERM_WRITE_UNCHANGED`: writes that leave the visible contents as they are.
    pub const WRITE_UNCHANGED: Perms = Perms(0x04);
    /// `BLK_PERM_RESIZE`: changing the length.
    pub const RESIZE: Perms = Perms(0x08);
    /// Every permission (`BLK_PERM_ALL`).
    pub const ALL: Perms = Perms(0x0f);

    /// QEMU's names of the bits, in bit order (`bdrv_perm_names`).
    const NAMES: [&'static str; 4] = ["consistent read", "write", "write unchanged", "resize"];

    /// Both sets.
    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// True when every bit of `other` is in `self`.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of [`Perms::ALL`] not in `self`.
    pub const fn complement(self) -> Perms {
        Perms(!self.0 & Self::ALL.0)
    }

    /// The bit numbers set, lowest first.
    fn bits(self) -> impl Iterator<Item = usize> {
        (0..Self::NAMES.len()).filter(move |&i| self.0 & (1 << i) != 0)
    }
}

/// Offset of the byte held for permission bit 0 (`RAW_LOCK_PERM_BASE`).
const PERM_BASE: i64 = 100;
/// Offset of the byte held for refusing to share permission bit 0 (`RAW_LOCK_SHARED_BASE`).
const SHARED_BASE: i64 = 200;

/// What one open of a file does with it: the permissions it takes and those it lets other
/// processes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Permissions taken.
    pub perm: Perms,
    /// Permissions others may hold at the same time.
    pub shared: Perms,
}

impl Usage {
    /// Reading a few bytes to tell the format before the real open: takes and tests
    /// nothing (QEMU probes through the opened file; the real open that follows locks).
    pub const PROBE: Usage = Usage {
        perm: Perms::NONE,
        shared: Perms::ALL,
    };
    /// An FVD or QED image, its data file or a base, read-only: consistent read, and no
    /// other writer or resizer (qemu-img info, qemu-io -r, a backing file).
    pub const READ: Usage = Usage {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::CONSISTENT_READ.union(Perms::WRITE_UNCHANGED),
    };
    /// An FVD or QED image or its data file, read-write: also write and resize, and no
    /// other writer or resizer (qemu-io, qemu-img commit's target).
    pub const WRITE: Usage = Usage {
        perm: Perms::CONSISTENT_READ
            .union(Perms::WRITE)
            .union(Perms::RESIZE),
        shared: Perms::CONSISTENT_READ.union(Perms::WRITE_UNCHANGED),
    };
    /// A raw disk read as it is (qemu-io -r -f raw): sharing everything.
    pub const RAW_READ: Usage = Usage {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::ALL,
    };
    /// A raw disk written as it is (qemu-io -f raw): sharing everything.
    pub const RAW_WRITE: Usage = Usage {
        perm: Perms::CONSISTENT_READ.union(Perms::WRITE),
        shared: Perms::ALL,
    };
    /// `-U` / `--force-share`: consistent read, sharing everything (read-only opens only).
    pub const FORCE_SHARE: Usage = Usage {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::ALL,
    };

    /// True when this usage neither takes nor refuses anything.
    fn is_empty(self) -> bool {
        self.perm == Perms::NONE && self.shared == Perms::ALL
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds a lock that conflicts with this use.
    #[error(
        "Failed to get {}\"{permission}\" lock. Is another process using the image [{}]?",
        if *.shared { "shared " } else { "" },
        .path.display()
    )]
    Conflict {
        /// The file.
        path: PathBuf,
        /// QEMU's name of the permission ("write", "resize", ...).
        permission: &'static str,
        /// False: another process refuses to share a permission this use takes. True:
        /// another process holds a permission this use refuses to share.
        shared: bool,
    },
    /// The lock calls themselves failed.
    #[error("Failed to lock byte {byte} of '{}': {}", .path.display(), crate::cli::error::io_reason(.source))]
    Io {
        /// The file.
        path: PathBuf,
        /// The byte being locked or tested.
        byte: i64,
        /// The operating system's reason.
        source: io::Error,
    },
}

impl LockError {
    /// The file the lock was for.
    pub fn path(&self) -> &Path {
        match self {
            LockError::Conflict { path, .. } | LockError::Io { path, .. } => path,
        }
    }
}

/// A file's identity: device and inode.
type Key = (u64, u64);

/// This process's locks on one file.
struct Held {
    /// A descriptor of the open file description that holds the locks.
    fd: File,
    /// Users holding each permission bit.
    held: [u32; 4],
    /// Users refusing to share each permission bit.
    refused: [u32; 4],
}

impl Held {
    fn unused(&self) -> bool {
        self.held.iter().chain(&self.refused).all(|&n| n == 0)
    }
}

fn registry() -> MutexGuard<'static, HashMap<Key, Held>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Key, Held>>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open's share of this process's locks on a file; dropping it releases what no other
/// open of the file still needs.
#[derive(Debug)]
pub struct FileLock {
    key: Option<Key>,
    usage: Usage,
}

/// Errors meaning the file system has no OFD locks: the file is used without them, as
/// QEMU's `locking=auto` does.
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte as libc::off_t;
    lock.l_len = 1;
    lock
}

/// Takes (`F_RDLCK`) or releases (`F_UNLCK`) this description's shared lock on `byte`.
fn set(fd: &File, byte: i64, kind: libc::c_int) -> io::Result<()> {
    let lock = flock(kind, byte);
    loop {
        // SAFETY: F_OFD_SETLK reads the `flock` we pass; the descriptor is owned by `fd`.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// True when another open file description holds a lock on `byte`.
fn taken_by_others(fd: &File, byte: i64) -> io::Result<bool> {
    let mut lock = flock(libc::F_WRLCK, byte);
    // SAFETY: F_OFD_GETLK fills in the `flock` we pass; the descriptor is owned by `fd`.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// The lock bytes `usage` needs: (byte, is a permission byte, bit).
fn bytes_of(usage: Usage) -> impl Iterator<Item = (i64, bool, usize)> {
    let held = usage.perm.bits().map(|i| (PERM_BASE + i as i64, true, i));
    let refused = usage
        .shared
        .complement()
        .bits()
        .map(|i| (SHARED_BASE + i as i64, false, i));
    held.chain(refused)
}

/// The first conflict between `usage` and the locks other processes hold on `fd`.
fn conflict(fd: &File, path: &Path, usage: Usage) -> Result<(), LockError> {
    let io_err = |byte, source| LockError::Io {
        path: path.to_path_buf(),
        byte,
        source,
    };
    for i in usage.perm.bits() {
        let byte = SHARED_BASE + i as i64;
        if taken_by_others(fd, byte).map_err(|e| io_err(byte, e))? {
            return Err(LockError::Conflict {
                path: path.to_path_buf(),
                permission: Perms::NAMES[i],
                shared: false,
            });
        }
    }
    for i in usage.shared.complement().bits() {
        let byte = PERM_BASE + i as i64;
        if taken_by_others(fd, byte).map_err(|e| io_err(byte, e))? {
            return Err(LockError::Conflict {
                path: path.to_path_buf(),
                permission: Perms::NAMES[i],
                shared: true,
            });
        }
    }
    Ok(())
}

impl FileLock {
    /// A lock that holds nothing (files that are new, or not shared with anyone).
    pub fn none() -> FileLock {
        FileLock {
            key: None,
            usage: Usage::PROBE,
        }
    }

    /// Takes this process's locks for `usage` of `file` (opened for reading; `path` names
    /// it in messages) and checks that no other process conflicts. On a file system without
    /// OFD locks nothing is locked.
    pub fn acquire(file: &File, path: &Path, usage: Usage) -> Result<FileLock, LockError> {
        if usage.is_empty() {
            return Ok(FileLock::none());
        }
        let io_err = |byte, source| LockError::Io {
            path: path.to_path_buf(),
            byte,
            source,
        };
        let meta = file.metadata().map_err(|e| io_err(PERM_BASE, e))?;
        let key = (meta.dev(), meta.ino());
        let mut registry = registry();
        let entry = match registry.entry(key) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => slot.insert(Held {
                fd: file.try_clone().map_err(|e| io_err(PERM_BASE, e))?,
                held: [0; 4],
                refused: [0; 4],
            }),
        };
        // Apply first, then test: two processes opening at once both see each other.
        let mut added = Vec::new();
        let mut failure = None;
        for (byte, is_perm, bit) in bytes_of(usage) {
            let count = if is_perm {
                entry.held[bit]
            } else {
                entry.refused[bit]
            };
            if count > 0 {
                continue;
            }
            match set(&entry.fd, byte, libc::F_RDLCK) {
                Ok(()) => added.push(byte),
                Err(e) if unsupported(&e) && added.is_empty() => {
                    if entry.unused() {
                        registry.remove(&key);
                    }
                    return Ok(FileLock::none());
                }
                Err(e) => {
                    failure = Some(io_err(byte, e));
                    break;
                }
            }
        }
        let outcome = match failure {
            Some(err) => Err(err),
            None => conflict(&entry.fd, path, usage),
        };
        if let Err(err) = outcome {
            for byte in added {
                let _ = set(&entry.fd, byte, libc::F_UNLCK);
            }
            if entry.unused() {
                registry.remove(&key);
            }
            return Err(err);
        }
        for (_, is_perm, bit) in bytes_of(usage) {
            if is_perm {
                entry.held[bit] += 1;
            } else {
                entry.refused[bit] += 1;
            }
        }
        Ok(FileLock {
            key: Some(key),
            usage,
        })
    }

    /// The usage this lock was taken for ([`Usage::PROBE`] when it holds nothing).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// True when this lock holds something.
    pub fn is_held(&self) -> bool {
        self.key.is_some()
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut registry = registry();
        let Some(entry) = registry.get_mut(&key) else {
            return;
        };
        for (byte, is_perm, bit) in bytes_of(self.usage) {
            let count = if is_perm {
                &mut entry.held[bit]
            } else {
                &mut entry.refused[bit]
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                let _ = set(&entry.fd, byte, libc::F_UNLCK);
            }
        }
        if entry.unused() {
            // Closing the last descriptor releases anything left.
            registry.remove(&key);
        }
    }
}

/// What other processes hold on a file, as far as locks tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OthersHold {
    /// Permissions some other process holds.
    pub perm: Perms,
    /// Permissions some other process refuses to share.
    pub refused: Perms,
}

/// The locks other open file descriptions hold on `file` (for diagnostics and tests).
pub fn others_hold(file: &File) -> io::Result<OthersHold> {
    let mut perm = Perms::NONE;
    let mut refused = Perms::NONE;
    for i in Perms::ALL.bits() {
        let bit = Perms(1 << i);
        if taken_by_others(file, PERM_BASE + i as i64)? {
            perm = perm.union(bit);
        }
        if taken_by_others(file, SHARED_BASE + i as i64)? {
            refused = refused.union(bit);
        }
    }
    Ok(OthersHold { perm, refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages_name_the_bytes_qemu_locks() {
        let bytes = |usage| bytes_of(usage).map(|(b, _, _)| b).collect::<Vec<_>>();
        assert_eq!(bytes(Usage::WRITE), [100, 101, 103, 201, 203]);
        assert_eq!(bytes(Usage::READ), [100, 201, 203]);
        assert_eq!(bytes(Usage::RAW_WRITE), [100, 101]);
        assert_eq!(bytes(Usage::FORCE_SHARE), [100]);
        assert!(bytes(Usage::PROBE).is_empty());
    }

    #[test]
    fn one_process_holds_the_union_of_its_opens_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let a = File::open(&path).unwrap();
        let b = File::open(&path).unwrap();
        let observer = File::open(&path).unwrap();
        let read = FileLock::acquire(&a, &path, Usage::READ).unwrap();
        // A writable open in the same process does not conflict with its own reader.
        let write = FileLock::acquire(&b, &path, Usage::WRITE).unwrap();
        let seen = others_hold(&observer).unwrap();
        assert_eq!(seen.perm, Usage::WRITE.perm);
        assert_eq!(seen.refused, Perms::WRITE.union(Perms::RESIZE));
        drop(write);
        assert_eq!(others_hold(&observer).unwrap().perm, Perms::CONSISTENT_READ);
        drop(read);
        let seen = others_hold(&observer).unwrap();
        assert_eq!((seen.perm, seen.refused), (Perms::NONE, Perms::NONE));
    }
}
