//! A disk read ahead of its writer, for the bulk copies (convert, rebase -b '', prefetch):
//! a thread owns the source disk, asks it where its bytes live first (the engine's map,
//! `SEEK_DATA`/`SEEK_HOLE` on raw files, through the base chain), reports runs that read
//! as zeros without reading them, reads the rest in large pieces and cuts them into runs
//! of all-zero and other blocks (core's [`fvd_core::zeros`] rule). The writing thread
//! only writes, so reading and writing overlap; buffers go back to the reader for reuse.

use super::{driver_error, Backend, Disk, SECTOR};
use crate::cli::error::CliError;
use crate::host::driver::Driver;
use crate::host::files::FileStorage;
use fvd_core::engine::Mapping;
use fvd_core::engine::MAX_DATA_REQUEST;
use fvd_core::zeros::{zero_runs, ZeroRun};
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

/// The first `size` guest bytes of an image split by who serves them: the runs `[start,
/// end)` it reads from its base, and the runs it holds itself (data, zeros, unallocated
/// ranges that hide the base), each list merged. `rebase -b ''` and `prefetch` copy the
/// first; `commit` copies the second.
pub struct SplitRuns {
    /// Served by the base.
    pub base: Vec<(u64, u64)>,
    /// Held by the image itself.
    pub own: Vec<(u64, u64)>,
}

/// Maps `top`'s first `size` bytes into [`SplitRuns`].
pub fn split_runs(top: &mut Driver<FileStorage>, size: u64) -> Result<SplitRuns, CliError> {
    fn push(runs: &mut Vec<(u64, u64)>, at: u64, end: u64) {
        match runs.last_mut() {
            Some(last) if last.1 == at => last.1 = end,
            _ => runs.push((at, end)),
        }
    }
    let mut split = SplitRuns {
        base: Vec::new(),
        own: Vec::new(),
    };
    let mut at = 0;
    while at < size {
        let run = top.map(at, size - at).map_err(driver_error)?;
        if run.len == 0 {
            return Err(CliError::Image(format!(
                "the engine mapped an empty run at offset {at}"
            )));
        }
        let end = at.saturating_add(run.len).min(size);
        match run.mapping {
            Mapping::Base => push(&mut split.base, at, end),
            Mapping::Zero | Mapping::Unallocated | Mapping::Data { .. } => {
                push(&mut split.own, at, end)
            }
            other => {
                return Err(CliError::Image(format!(
                    "the engine mapped offset {at} as {other:?}, which this fvd-img cannot copy"
                )))
            }
        }
        at = end;
    }
    Ok(split)
}

/// Bytes read from the source at once (rounded down to whole blocks).
const PIECE: u64 = 4 << 20;

/// Pieces read ahead of the writer.
const AHEAD: usize = 4;

/// What the reader found, in guest order.
pub enum Piece {
    /// `len` bytes at `offset` read as zeros and were not read (a hole, a zero cluster,
    /// an unallocated run). With zero detection off they are read like any others.
    Zero { offset: u64, len: u64 },
    /// Bytes read at `offset` that hold something other than all-zero blocks (with zero
    /// detection off: every byte read).
    Data { offset: u64, bytes: Vec<u8> },
}

impl Piece {
    /// The guest byte after the piece.
    pub fn end(&self) -> u64 {
        match self {
            Piece::Zero { offset, len } => offset + len,
            Piece::Data { offset, bytes } => offset + bytes.len() as u64,
        }
    }
}

/// A source disk being read on its own thread.
pub struct Stream {
    pieces: Receiver<Result<Piece, CliError>>,
    spare: Sender<Vec<u8>>,
    reader: Option<JoinHandle<Result<Disk, CliError>>>,
}

/// What the reading thread owns.
struct Reader {
    src: Disk,
    block: u64,
    pieces: SyncSender<Result<Piece, CliError>>,
    spare: Receiver<Vec<u8>>,
}

/// The reader stops quietly once the writer is gone (it failed and dropped the stream).
struct Stopped;

impl Reader {
    fn send(&self, piece: Result<Piece, CliError>) -> Result<(), Stopped> {
        self.pieces.send(piece).map_err(|_| Stopped)
    }

    /// A buffer of `len` bytes, recycled when the writer gave one back.
    fn buffer(&self, len: u64) -> Vec<u8> {
        let mut bytes = self.spare.try_recv().unwrap_or_default();
        bytes.resize(len as usize, 0);
        bytes
    }

    /// Reads `[at, end)` (within one piece) and sends its runs of all-zero blocks as
    /// zeros and the rest as data; bytes past the end of the source read as zeros.
    fn read(&mut self, at: u64, end: u64) -> Result<(), Stopped> {
        let mut bytes = self.buffer(end - at);
        let stored = self.src.size().saturating_sub(at).min(end - at) as usize;
        if stored > 0 {
            let read = if stored == bytes.len() {
                self.src.read_vec(at, bytes)
            } else {
                bytes[stored..].fill(0);
                self.src.read(at, &mut bytes[..stored]).map(|()| bytes)
            };
            bytes = match read {
                Ok(bytes) => bytes,
                Err(e) => {
                    let what = format!(
                        "error while reading '{}' at offset {at}",
                        self.src.path().display()
                    );
                    return self.send(Err(super::context(e, what))).and(Err(Stopped));
                }
            };
        } else {
            bytes.fill(0);
        }
        let runs: Vec<ZeroRun> = zero_runs(at, &bytes, self.block).collect();
        if let [only] = runs[..] {
            return self.send(Ok(if only.zero {
                Piece::Zero {
                    offset: at,
                    len: end - at,
                }
            } else {
                Piece::Data { offset: at, bytes }
            }));
        }
        for run in runs {
            let piece = if run.zero {
                Piece::Zero {
                    offset: run.start,
                    len: run.end - run.start,
                }
            } else {
                let mut part = self.spare.try_recv().unwrap_or_default();
                part.clear();
                part.extend_from_slice(&bytes[(run.start - at) as usize..(run.end - at) as usize]);
                Piece::Data {
                    offset: run.start,
                    bytes: part,
                }
            };
            self.send(Ok(piece))?;
        }
        Ok(())
    }

    /// Reads `[at, end)` in pieces that end on multiples of the piece size.
    fn read_span(&mut self, mut at: u64, end: u64) -> Result<(), Stopped> {
        let piece = match PIECE.checked_div(self.block) {
            Some(blocks) => blocks.max(1) * self.block,
            None => PIECE,
        };
        while at < end {
            let to = end.min((at / piece + 1) * piece);
            self.read(at, to)?;
            at = to;
        }
        Ok(())
    }

    /// Streams the guest ranges `[start, end)` of `ranges`, in order.
    fn run(&mut self, ranges: &[(u64, u64)]) -> Result<(), Stopped> {
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let extent = match self.src.extent(at, end - at) {
                    Ok(extent) => extent,
                    Err(e) => {
                        let what = format!(
                            "error while mapping '{}' at offset {at}",
                            self.src.path().display()
                        );
                        return self.send(Err(super::context(e, what))).and(Err(Stopped));
                    }
                };
                let extent_end = extent.end().min(end).max(at + 1);
                if !extent.zero || self.block == 0 {
                    self.read_span(at, extent_end)?;
                    at = extent_end;
                    continue;
                }
                // Zeros are reported in whole blocks; the partial blocks at either end are
                // read (the end of the range counts as a block boundary).
                let lo = at.div_ceil(self.block) * self.block;
                let hi = if extent_end == end {
                    end
                } else {
                    extent_end / self.block * self.block
                };
                if lo >= hi {
                    self.read_span(at, extent_end)?;
                    at = extent_end;
                    continue;
                }
                self.read_span(at, lo)?;
                self.send(Ok(Piece::Zero {
                    offset: lo,
                    len: hi - lo,
                }))?;
                at = hi;
            }
        }
        Ok(())
    }
}

impl Stream {
    /// Starts reading `ranges` (sorted guest ranges) of `src`, judging zeros in blocks of
    /// `block` bytes (0: no zero detection, everything is read and reported as data).
    pub fn start(src: Disk, ranges: Vec<(u64, u64)>, block: u64) -> Stream {
        let (piece_tx, pieces) = mpsc::sync_channel(AHEAD);
        let (spare, spare_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = Reader {
                src,
                block,
                pieces: piece_tx,
                spare: spare_rx,
            };
            let _ = reader.run(&ranges);
            Ok(reader.src)
        });
        Stream {
            pieces,
            spare,
            reader: Some(reader),
        }
    }

    /// The next piece, or `None` once the ranges are done.
    pub fn next_piece(&mut self) -> Option<Result<Piece, CliError>> {
        self.pieces.recv().ok()
    }

    /// Hands a piece's buffer back for the reader to fill again.
    pub fn recycle(&self, bytes: Vec<u8>) {
        let _ = self.spare.send(bytes);
    }

    /// Takes the next piece and hands it to `each`, which returns the data buffer (if
    /// any) for reuse; `None` once the ranges are done.
    pub fn for_each(
        &mut self,
        mut each: impl FnMut(Piece) -> Result<Option<Vec<u8>>, CliError>,
    ) -> Result<(), CliError> {
        while let Some(piece) = self.next_piece() {
            if let Some(bytes) = each(piece?)? {
                self.recycle(bytes);
            }
        }
        Ok(())
    }

    /// Waits for the reader and returns the source disk.
    pub fn finish(mut self) -> Result<Disk, CliError> {
        // Dropping the receiving ends stops a reader that is still going.
        let reader = self.reader.take();
        drop(self);
        match reader.map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(CliError::Image(
                "internal error: the reading thread failed".into(),
            )),
        }
    }
}

impl Disk {
    /// Reads `buffer.len()` guest bytes at `offset` into `buffer` without copying them
    /// (sector-aligned requests of an image go to the engine in the buffer itself).
    pub fn read_vec(&mut self, offset: u64, mut buffer: Vec<u8>) -> Result<Vec<u8>, CliError> {
        let len = buffer.len() as u64;
        self.check_range(offset, len)?;
        match &mut self.backend {
            Backend::Fvd { driver, .. }
                if offset % SECTOR == 0 && len % SECTOR == 0 && len <= MAX_DATA_REQUEST =>
            {
                driver.read_into(offset, buffer).map_err(driver_error)
            }
            _ => {
                self.read(offset, &mut buffer)?;
                Ok(buffer)
            }
        }
    }

    /// Writes `buffer` at guest `offset` without copying it and hands it back.
    pub fn write_vec(&mut self, offset: u64, buffer: Vec<u8>) -> Result<Vec<u8>, CliError> {
        let len = buffer.len() as u64;
        self.check_write(offset, len)?;
        self.check_first_sector(offset, &buffer)?;
        match &mut self.backend {
            Backend::Fvd { driver, .. }
                if offset % SECTOR == 0 && len % SECTOR == 0 && len <= MAX_DATA_REQUEST =>
            {
                driver.write_from(offset, buffer).map_err(driver_error)
            }
            _ => {
                self.write(offset, &buffer)?;
                Ok(buffer)
            }
        }
    }
}

impl Disk {
    /// Starts writing the dirty pages of the files holding guest data back to the disk
    /// without waiting for them, so the flush at the end finds little left to do while
    /// the copy keeps the page cache busy meanwhile. Best effort: errors show at the flush.
    pub fn start_writeback(&mut self) {
        let unsafe_cache = match &self.backend {
            Backend::Raw { storage } => storage.unsafe_cache,
            Backend::Fvd { driver, .. } => driver.storage.unsafe_cache,
        };
        if unsafe_cache {
            return;
        }
        let files: Vec<&std::fs::File> = match &self.backend {
            Backend::Raw { storage } => vec![&storage.image],
            Backend::Fvd { driver, .. } => {
                [&Some(&driver.storage.image), &driver.storage.data.as_ref()]
                    .into_iter()
                    .filter_map(|f| *f)
                    .collect()
            }
        };
        for file in files {
            // SAFETY: sync_file_range only reads its integer arguments; the descriptor is
            // owned by `file`.
            unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }
}

impl Disk {
    /// Lets flushes return without syncing (`-t unsafe`), or makes them sync again.
    pub fn set_unsafe_cache(&mut self, on: bool) {
        match &mut self.backend {
            Backend::Raw { storage } => storage.unsafe_cache = on,
            Backend::Fvd { driver, .. } => driver.storage.unsafe_cache = on,
        }
    }
}

impl Disk {
    /// An FVD or QED image already opened read-only as `driver` (without a base: bulk
    /// copies that read only what the image holds itself), for a [`Stream`]. `path`
    /// names it in messages; `data_path` is the file holding guest data.
    pub fn over_driver(
        path: &std::path::Path,
        driver: crate::host::driver::Driver<crate::host::files::FileStorage>,
        data_path: std::path::PathBuf,
    ) -> Disk {
        Disk::from_driver(
            path,
            driver,
            data_path,
            super::BaseLink::None,
            false,
            crate::host::gate::OpenGate::default(),
        )
    }

    /// The driver of an image made by [`Disk::over_driver`], back for closing.
    pub fn into_driver(
        self,
    ) -> Option<crate::host::driver::Driver<crate::host::files::FileStorage>> {
        match self.backend {
            Backend::Fvd { driver, .. } => Some(*driver),
            Backend::Raw { .. } => None,
        }
    }
}
