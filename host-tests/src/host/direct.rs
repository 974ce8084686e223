//! `cache=none` as QEMU means it: reads and writes that bypass the host page cache
//! (`O_DIRECT`). An open file gains a second descriptor opened with `O_DIRECT`
//! ([`DirectFile::over`]); requests whose offset and length are multiples of the file's
//! direct-I/O alignment go through it, from a buffer aligned in memory (a bounce buffer
//! when the caller's is not). Anything else — a request that is not aligned, or one the
//! file system refuses with `EINVAL` — takes the ordinary descriptor, as QEMU's
//! read-modify-write padding would reach the same bytes; Linux keeps the two coherent
//! (a direct read writes back dirty cached pages of its range first, a direct write drops
//! them).
//!
//! The locks stay on the ordinary descriptor, which stays open beside this one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

/// Memory alignment of direct-I/O buffers: a page, which every Linux file system accepts.
const BUFFER_ALIGN: usize = 4096;

/// The `O_DIRECT` descriptor of an open file and the alignment its requests need.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    /// Offsets and lengths must be multiples of this (512 or 4096).
    align: u64,
}

impl DirectFile {
    /// Opens `file` again with `O_DIRECT` (through `/proc/self/fd`, so it is the same
    /// file even if its name has changed), for writing when `writable`. Fails with a
    /// message that names the cause when the file system does not support `O_DIRECT`.
    pub fn over(file: &File, writable: bool) -> io::Result<DirectFile> {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_DIRECT)
            .open(&link)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the file system does not support O_DIRECT (cache mode 'none' or \
                     'directsync'); use -t writeback or -t writethrough",
                ),
                _ => e,
            })?;
        let align = probe_alignment(&direct);
        Ok(DirectFile {
            file: direct,
            align,
        })
    }

    /// The alignment of offsets and lengths for direct requests.
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn takes(&self, offset: u64, len: usize) -> bool {
        len > 0 && offset % self.align == 0 && (len as u64) % self.align == 0
    }

    /// Reads `buf.len()` bytes at `offset` directly when aligned; returns `false` when the
    /// request must take the ordinary descriptor. Bytes past the end of the file read as
    /// zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if !self.takes(offset, buf.len()) {
            return Ok(false);
        }
        let result = if is_aligned(buf) {
            read_all(&self.file, offset, buf)
        } else {
            let mut bounce = AlignedBuf::new(buf.len());
            let r = read_all(&self.file, offset, bounce.as_mut_slice());
            if r.is_ok() {
                buf.copy_from_slice(bounce.as_slice());
            }
            r
        };
        refused_as_false(result)
    }

    /// Writes `buf` at `offset` directly when aligned; returns `false` when the request
    /// must take the ordinary descriptor.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<bool> {
        if !self.takes(offset, buf.len()) {
            return Ok(false);
        }
        let result = if is_aligned(buf) {
            self.file.write_all_at(buf, offset)
        } else {
            let mut bounce = AlignedBuf::new(buf.len());
            bounce.as_mut_slice().copy_from_slice(buf);
            self.file.write_all_at(bounce.as_slice(), offset)
        };
        refused_as_false(result)
    }
}

/// `EINVAL` from a direct request means this request cannot be direct (an alignment the
/// probe did not see): the caller repeats it through the page cache.
fn refused_as_false(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads until `buf` is full or the file ends (zeros after).
fn read_all(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            // A direct read comes back short only at the end of the file (and the next
            // offset may not be aligned any more): the rest reads as zeros.
            Ok(n) if n < buf.len() - done => {
                done += n;
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The smallest of 512 and 4096 that a direct read at offset 0 accepts (QEMU probes the
/// same way); 4096 when neither answers, which every file system takes.
fn probe_alignment(file: &File) -> u64 {
    let mut buf = AlignedBuf::new(BUFFER_ALIGN);
    for size in [512usize, 4096] {
        match file.read_at(&mut buf.as_mut_slice()[..size], 0) {
            Ok(_) => return size as u64,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(_) => break,
        }
    }
    BUFFER_ALIGN as u64
}

fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize) % BUFFER_ALIGN == 0
}

/// A heap buffer whose first byte is page-aligned (over-allocated, then sliced).
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let bytes = vec![0u8; len + BUFFER_ALIGN];
        let misalign = (bytes.as_ptr() as usize) % BUFFER_ALIGN;
        let start = (BUFFER_ALIGN - misalign) % BUFFER_ALIGN;
        AlignedBuf { bytes, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_of(file: &File) -> i32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
            .expect("fdinfo");
        let line = info
            .lines()
            .find(|l| l.starts_with("flags:"))
            .expect("flags");
        i32::from_str_radix(line.trim_start_matches("flags:").trim(), 8).expect("octal")
    }

    #[test]
    fn direct_descriptor_bypasses_the_page_cache_and_reads_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let direct = match DirectFile::over(&file, true) {
            Ok(d) => d,
            // A scratch file system without O_DIRECT (tmpfs on an old kernel): nothing to test.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return,
            Err(e) => panic!("{e}"),
        };
        assert_ne!(flags_of(&direct.file) & libc::O_DIRECT, 0);
        assert_eq!(flags_of(&file) & libc::O_DIRECT, 0);
        // An unaligned caller buffer goes through a bounce buffer.
        let data: Vec<u8> = (0..8193u32).map(|i| (i % 251) as u8).collect();
        assert!(direct.write_at(4096, &data[1..8193]).unwrap());
        // Unaligned requests are left to the ordinary descriptor.
        assert!(!direct.write_at(100, &data[..10]).unwrap());
        let mut back = vec![0u8; 8192];
        assert!(direct.read_at(4096, &mut back).unwrap());
        assert_eq!(back, &data[1..8193]);
        let mut cached = vec![0u8; 8192];
        file.read_at(&mut cached, 4096).unwrap();
        assert_eq!(cached, back);
        // Past the end reads zeros.
        let mut tail = vec![1u8; 8192];
        assert!(direct.read_at(8192, &mut tail).unwrap());
        assert_eq!(&tail[..4096], &data[4097..8193]);
        assert!(tail[4096..].iter().all(|&b| b == 0));
    }
}
