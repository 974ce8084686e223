//! The `fat-logger` workload, on any block device holding a FAT volume: find the last
//! line of `LOG.TXT`, then append numbered lines `N\n`, making each durable (FAT, then the
//! device below) before reporting it. After a power cut the file holds every reported line
//! and maybe a torn tail (an unflushed line, or zeros where the overlay dropped an
//! unflushed block); the logger keeps the longest prefix of lines numbered 1, 2, 3, ...
//! and writes over whatever follows it, so the numbering never has a gap or a duplicate.

use crate::selftest::{ByRef, Clock};
use embedded_sdmmc::{BlockDevice, Mode, VolumeIdx, VolumeManager};

/// The log file.
pub const LOG_NAME: &str = "LOG.TXT";

/// The longest prefix of a byte stream made of lines `1\n2\n3\n...`, fed in chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineScan {
    /// Number of the last whole line of the prefix (0: none).
    pub last: u32,
    /// Bytes of the prefix.
    pub end: u32,
    /// Digits of the line being read.
    value: u32,
    digits: u32,
    /// Bytes seen.
    seen: u32,
    /// A byte broke the sequence: nothing after it counts.
    stopped: bool,
}

impl LineScan {
    /// Feeds the next bytes of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.stopped {
                return;
            }
            self.seen = self.seen.saturating_add(1);
            match b {
                b'0'..=b'9' if self.digits < 9 => {
                    self.value = self.value * 10 + u32::from(b - b'0');
                    self.digits += 1;
                }
                b'\n' if self.digits > 0 && Some(self.value) == self.last.checked_add(1) => {
                    self.last = self.value;
                    self.end = self.seen;
                    self.value = 0;
                    self.digits = 0;
                }
                _ => self.stopped = true,
            }
        }
    }
}

/// What the logger reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// The last line found at mount, and the bytes after it it will write over.
    Found {
        /// Last line number (0: none).
        last: u32,
        /// Bytes of torn tail after it.
        torn: u32,
    },
    /// Line `N` is durable (FAT and device flushed).
    Flushed(u32),
}

/// Why the logger stopped.
pub type LogFailure = &'static str;

/// Mounts the FAT volume of `disk`, finds the last line of `LOG.TXT` and appends `count`
/// lines (or forever with `None`), calling `flush_device` after each line's FAT flush and
/// `report` once each is durable. Returns the last line written.
pub fn run<D: BlockDevice>(
    disk: &D,
    count: Option<u32>,
    mut flush_device: impl FnMut() -> Result<(), LogFailure>,
    mut report: impl FnMut(LogEvent),
) -> Result<u32, LogFailure> {
    let manager = VolumeManager::new(ByRef(disk), Clock);
    let volume = manager
        .open_volume(VolumeIdx(0))
        .map_err(|_| "mount failed")?;
    let root = volume.open_root_dir().map_err(|_| "root failed")?;
    let file = root
        .open_file_in_dir(LOG_NAME, Mode::ReadWriteCreateOrAppend)
        .map_err(|_| "open LOG.TXT failed")?;
    file.seek_from_start(0).map_err(|_| "seek failed")?;
    let mut scan = LineScan::default();
    let mut chunk = [0u8; 512];
    loop {
        let n = file.read(&mut chunk).map_err(|_| "read failed")?;
        if n == 0 {
            break;
        }
        scan.feed(chunk.get(..n).unwrap_or(&[]));
    }
    let torn = file.length().saturating_sub(scan.end);
    report(LogEvent::Found {
        last: scan.last,
        torn,
    });
    file.seek_from_start(scan.end).map_err(|_| "seek failed")?;
    let mut line = scan.last;
    let mut written = 0u32;
    while count.is_none_or(|c| written < c) {
        line = line.checked_add(1).ok_or("line numbers ran out")?;
        let mut text = [0u8; 11];
        let len = decimal(line, &mut text);
        file.write(text.get(..len).unwrap_or(&[]))
            .map_err(|_| "write failed")?;
        file.flush().map_err(|_| "FAT flush failed")?;
        flush_device()?;
        report(LogEvent::Flushed(line));
        written += 1;
    }
    file.close().map_err(|_| "close failed")?;
    root.close().map_err(|_| "dir close failed")?;
    volume.close().map_err(|_| "unmount failed")?;
    Ok(line)
}

/// `n` in decimal followed by a newline; returns the length.
fn decimal(n: u32, out: &mut [u8; 11]) -> usize {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut rest = n;
    loop {
        if let Some(d) = digits.get_mut(len) {
            *d = b'0' + (rest % 10) as u8;
        }
        len += 1;
        rest /= 10;
        if rest == 0 || len == digits.len() {
            break;
        }
    }
    for (to, from) in out.iter_mut().zip(digits.iter().take(len).rev()) {
        *to = *from;
    }
    if let Some(nl) = out.get_mut(len) {
        *nl = b'\n';
    }
    len + 1
}
