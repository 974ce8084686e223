//! A blocking driver for simple hosts and firmware: the same engine, with each command
//! performed at once on `embedded-io` `Read + Write + Seek` storages (one per file), one
//! guest request at a time. No second implementation of the format lives here: this is
//! only the loop that feeds the engine.

use crate::engine::*;
use embedded_io::{Error as _, ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};

/// A file the image does not have (no data file, no base).
pub struct NoFile;

impl ErrorType for NoFile {
    type Error = ErrorKind;
}

impl Read for NoFile {
    fn read(&mut self, _: &mut [u8]) -> Result<usize, ErrorKind> {
        Err(ErrorKind::NotFound)
    }
}

impl Write for NoFile {
    fn write(&mut self, _: &[u8]) -> Result<usize, ErrorKind> {
        Err(ErrorKind::NotFound)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Err(ErrorKind::NotFound)
    }
}

impl Seek for NoFile {
    fn seek(&mut self, _: SeekFrom) -> Result<u64, ErrorKind> {
        Err(ErrorKind::NotFound)
    }
}

/// What went wrong in a blocking call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockingError {
    /// The image could not be opened.
    Open(OpenError),
    /// The request was refused.
    Submit(SubmitError),
    /// The request failed.
    Request(RequestError),
    /// The engine waited for nothing (a bug); carries requests in flight.
    Stalled,
}

impl core::fmt::Display for BlockingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockingError::Open(e) => write!(f, "{e}"),
            BlockingError::Submit(e) => write!(f, "{e}"),
            BlockingError::Request(e) => write!(f, "{e}"),
            BlockingError::Stalled => write!(f, "engine stalled"),
        }
    }
}

enum Guest<'a> {
    None,
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// An image over blocking storages: `I` the image file, `D` the data file, `B` the base.
pub struct BlockingDisk<M, I, D = NoFile, B = NoFile, const PAGES: usize = 256> {
    engine: Engine<M, PAGES>,
    image: I,
    data: D,
    base: B,
    /// The last storage error, for diagnostics.
    pub last_storage_error: Option<ErrorKind>,
    /// Cursor of the [`Read`] / [`Seek`] view of the virtual disk.
    position: u64,
}

const ZEROS: [u8; 512] = [0; 512];

fn length<F: Seek>(file: &mut F) -> Option<u64> {
    file.seek(SeekFrom::End(0)).ok()
}

fn read_at<F: Read + Seek>(file: &mut F, offset: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.kind())?;
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => {
                rest.fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.kind()),
        }
    }
    Ok(())
}

fn write_at<F: Write + Seek>(file: &mut F, offset: u64, buf: &[u8]) -> Result<(), ErrorKind> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.kind())?;
    file.write_all(buf).map_err(|e| e.kind())
}

fn zero_at<F: Write + Seek>(file: &mut F, offset: u64, len: u64) -> Result<(), ErrorKind> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.kind())?;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(ZEROS.len(), |left| left.min(ZEROS.len()));
        file.write_all(ZEROS.get(..n).unwrap_or(&ZEROS))
            .map_err(|e| e.kind())?;
        left -= n as u64;
    }
    Ok(())
}

/// The `len` bytes of `buffer` a command fills: engine memory, or the buffer of the guest
/// read being served.
fn writable_buffer<'a, M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize>(
    engine: &'a mut Engine<M, PAGES>,
    guest: &'a mut Guest<'_>,
    buffer: Buffer,
    len: usize,
) -> Result<&'a mut [u8], ErrorKind> {
    let bytes = match (buffer, guest) {
        (Buffer::Engine { offset }, _) => engine.memory_mut().get_mut(offset..offset + len),
        (Buffer::Guest { offset, .. }, Guest::Read(buf)) => buf.get_mut(offset..offset + len),
        _ => None,
    };
    bytes.ok_or(ErrorKind::InvalidInput)
}

fn io_error(kind: ErrorKind) -> IoError {
    match kind {
        ErrorKind::OutOfMemory | ErrorKind::WriteZero => IoError::NoSpace,
        ErrorKind::Unsupported => IoError::Unsupported,
        _ => IoError::Failed,
    }
}

impl<M, I, D, B, const PAGES: usize> BlockingDisk<M, I, D, B, PAGES>
where
    M: AsRef<[u8]> + AsMut<[u8]>,
    I: Read + Write + Seek,
    D: Read + Write + Seek,
    B: Read + Seek,
{
    /// Opens the image. `data` and `base` may be [`NoFile`] when the image has none.
    pub fn open(
        memory: M,
        mut image: I,
        mut data: D,
        mut base: B,
        writable: bool,
        cache_bytes: usize,
    ) -> Result<Self, BlockingError> {
        let options = OpenOptions {
            writable,
            image_len: length(&mut image).unwrap_or(0),
            data_len: length(&mut data),
            base_available: length(&mut base).is_some(),
            cache_bytes,
            storage_zero_init: false,
            // Raw media: zeroing stale journal sectors would be real writes.
            release_stale_journal: false,
            copy_on_read: None,
            prefetch: PrefetchMode::Off,
        };
        let engine = Engine::open(memory, options);
        let mut disk = BlockingDisk {
            engine,
            image,
            data,
            base,
            last_storage_error: None,
            position: 0,
        };
        loop {
            while let Some(event) = disk.engine.poll_event() {
                match event {
                    Event::Opened => return Ok(disk),
                    Event::OpenFailed(e) => return Err(BlockingError::Open(e)),
                    _ => {}
                }
            }
            let Some(command) = disk.engine.poll_command() else {
                return Err(BlockingError::Stalled);
            };
            disk.perform(command, &mut Guest::None);
        }
    }

    /// The engine (layout, header, statistics).
    pub fn engine(&self) -> &Engine<M, PAGES> {
        &self.engine
    }

    fn perform(&mut self, command: Command, guest: &mut Guest<'_>) {
        let result = self.run(command, guest).map_err(|kind| {
            self.last_storage_error = Some(kind);
            io_error(kind)
        });
        self.engine.complete(command.id, result);
    }

    fn run(&mut self, command: Command, guest: &mut Guest<'_>) -> Result<(), ErrorKind> {
        let file = command.file;
        match command.op {
            Op::Read { offset, len, into } => {
                let target = writable_buffer(&mut self.engine, guest, into, len)?;
                match file {
                    FileId::Image => read_at(&mut self.image, offset, target),
                    FileId::Data => read_at(&mut self.data, offset, target),
                    FileId::Base => read_at(&mut self.base, offset, target),
                }
            }
            Op::Write { offset, len, from } => {
                let source: &[u8] = match (from, &*guest) {
                    (Buffer::Engine { offset }, _) => self
                        .engine
                        .memory()
                        .get(offset..offset + len)
                        .ok_or(ErrorKind::InvalidInput)?,
                    (Buffer::Guest { offset, .. }, Guest::Write(buf)) => buf
                        .get(offset..offset + len)
                        .ok_or(ErrorKind::InvalidInput)?,
                    _ => return Err(ErrorKind::InvalidInput),
                };
                match file {
                    FileId::Image => write_at(&mut self.image, offset, source),
                    FileId::Data => write_at(&mut self.data, offset, source),
                    FileId::Base => Err(ErrorKind::PermissionDenied),
                }
            }
            Op::WriteZeroes { offset, len, .. } => match file {
                FileId::Image => zero_at(&mut self.image, offset, len),
                FileId::Data => zero_at(&mut self.data, offset, len),
                FileId::Base => Err(ErrorKind::PermissionDenied),
            },
            Op::ZeroBuffer { into, len } => {
                writable_buffer(&mut self.engine, guest, into, len)?.fill(0);
                Ok(())
            }
            Op::Copy { from, into, len } => {
                let mut chunk = [0u8; 512];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(chunk.len());
                    let src = match (from, &*guest) {
                        (Buffer::Engine { offset }, _) => {
                            self.engine.memory().get(offset + done..offset + done + n)
                        }
                        (Buffer::Guest { offset, .. }, Guest::Write(buf)) => {
                            buf.get(offset + done..offset + done + n)
                        }
                        (Buffer::Guest { offset, .. }, Guest::Read(buf)) => {
                            buf.get(offset + done..offset + done + n)
                        }
                        _ => None,
                    }
                    .ok_or(ErrorKind::InvalidInput)?;
                    let staged = chunk.get_mut(..n).ok_or(ErrorKind::InvalidInput)?;
                    staged.copy_from_slice(src);
                    let dst = match (into, &mut *guest) {
                        (Buffer::Engine { offset }, _) => self
                            .engine
                            .memory_mut()
                            .get_mut(offset + done..offset + done + n),
                        (Buffer::Guest { offset, .. }, Guest::Read(buf)) => {
                            buf.get_mut(offset + done..offset + done + n)
                        }
                        _ => None,
                    }
                    .ok_or(ErrorKind::InvalidInput)?;
                    dst.copy_from_slice(chunk.get(..n).ok_or(ErrorKind::InvalidInput)?);
                    done += n;
                }
                Ok(())
            }
            Op::Flush => match file {
                FileId::Image => self.image.flush().map_err(|e| e.kind()),
                FileId::Data => self.data.flush().map_err(|e| e.kind()),
                FileId::Base => Ok(()),
            },
            // Growing: write one zero byte at the new end (files extend; a fixed medium
            // fails past its capacity). The engine never shrinks.
            Op::SetLength { len } => {
                let current = match file {
                    FileId::Image => length(&mut self.image),
                    FileId::Data => length(&mut self.data),
                    FileId::Base => None,
                }
                .ok_or(ErrorKind::Unsupported)?;
                if len <= current {
                    return Ok(());
                }
                match file {
                    FileId::Image => write_at(&mut self.image, len - 1, &[0]),
                    _ => write_at(&mut self.data, len - 1, &[0]),
                }
            }
        }
    }

    fn request(&mut self, request: Request, mut guest: Guest<'_>) -> Result<Reply, BlockingError> {
        let id = self.engine.submit(request).map_err(BlockingError::Submit)?;
        loop {
            while let Some(event) = self.engine.poll_event() {
                if let Event::Completed { id: done, result } = event {
                    if done == id {
                        return result.map_err(BlockingError::Request);
                    }
                }
            }
            let Some(command) = self.engine.poll_command() else {
                return Err(BlockingError::Stalled);
            };
            self.perform(command, &mut guest);
        }
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of 512).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockingError> {
        let len = buf.len() as u64;
        self.request(Request::Read { offset, len }, Guest::Read(buf))
            .map(|_| ())
    }

    /// Writes `buf` at `offset` (both multiples of 512).
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockingError> {
        let len = buf.len() as u64;
        self.request(Request::Write { offset, len }, Guest::Write(buf))
            .map(|_| ())
    }

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockingError> {
        self.request(Request::WriteZeroes { offset, len }, Guest::None)
            .map(|_| ())
    }

    /// Discards `len` bytes at `offset` (they read as zeros afterwards).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockingError> {
        self.request(Request::Discard { offset, len }, Guest::None)
            .map(|_| ())
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> Result<(), BlockingError> {
        self.request(Request::Flush, Guest::None).map(|_| ())
    }

    /// Where the run at `offset` lives.
    pub fn map(&mut self, offset: u64, len: u64) -> Result<MapRun, BlockingError> {
        match self.request(Request::Map { offset, len }, Guest::None)? {
            Reply::Mapping(run) => Ok(run),
            Reply::Done => Ok(MapRun {
                offset,
                len: 0,
                mapping: Mapping::Unallocated,
            }),
        }
    }

    /// Closes the image (metadata written back, marked clean); returns the storages and
    /// whether the image was marked clean.
    pub fn close(mut self) -> Result<(I, D, B, bool), BlockingError> {
        self.engine.close();
        loop {
            while let Some(event) = self.engine.poll_event() {
                if let Event::Closed { clean } = event {
                    return Ok((self.image, self.data, self.base, clean));
                }
            }
            let Some(command) = self.engine.poll_command() else {
                return Err(BlockingError::Stalled);
            };
            self.perform(command, &mut Guest::None);
        }
    }
}

/// The virtual disk as a byte stream (any offset, any length; past its end reads
/// nothing), so that a `BlockingDisk` is itself the base of another: an image over an
/// image over a raw medium, any depth, with every layer's format logic in its engine.
impl<M, I, D, B, const PAGES: usize> ErrorType for BlockingDisk<M, I, D, B, PAGES> {
    type Error = ErrorKind;
}

impl<M, I, D, B, const PAGES: usize> Seek for BlockingDisk<M, I, D, B, PAGES>
where
    M: AsRef<[u8]> + AsMut<[u8]>,
{
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, ErrorKind> {
        let size = self.engine.virtual_size().unwrap_or(0);
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or(ErrorKind::InvalidInput)?;
        Ok(self.position)
    }
}

impl<M, I, D, B, const PAGES: usize> Read for BlockingDisk<M, I, D, B, PAGES>
where
    M: AsRef<[u8]> + AsMut<[u8]>,
    I: Read + Write + Seek,
    D: Read + Write + Seek,
    B: Read + Seek,
{
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        const SECTOR_LEN: usize = 512;
        const SECTOR: u64 = SECTOR_LEN as u64;
        let size = self.engine.virtual_size().unwrap_or(0);
        let want = (buf.len() as u64).min(size.saturating_sub(self.position));
        if want == 0 {
            return Ok(0);
        }
        let at = self.position;
        let into_sector = at % SECTOR;
        let n = if into_sector != 0 || want < SECTOR {
            // A partial sector: through a bounce sector.
            let mut sector = [0u8; SECTOR_LEN];
            self.read(at - into_sector, &mut sector)
                .map_err(|_| ErrorKind::Other)?;
            let n = usize::try_from((SECTOR - into_sector).min(want))
                .map_err(|_| ErrorKind::InvalidInput)?;
            let from = into_sector as usize;
            buf.get_mut(..n)
                .ok_or(ErrorKind::InvalidInput)?
                .copy_from_slice(sector.get(from..from + n).ok_or(ErrorKind::InvalidInput)?);
            n
        } else {
            // Whole sectors straight into the caller's buffer (at most the engine's
            // largest request at a time).
            let len = (want / SECTOR * SECTOR).min(MAX_DATA_REQUEST) as usize;
            let target = buf.get_mut(..len).ok_or(ErrorKind::InvalidInput)?;
            BlockingDisk::read(self, at, target).map_err(|_| ErrorKind::Other)?;
            len
        };
        self.position = at + n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test images are a few KiB
mod tests {
    use super::*;
    use crate::fvd::create::{metadata_len, plan, BaseSpec, CreateOptions};
    use std::vec;
    use std::vec::Vec;

    /// A growable in-memory file with a cursor.
    struct MemFile {
        bytes: Vec<u8>,
        at: usize,
    }

    impl ErrorType for MemFile {
        type Error = ErrorKind;
    }
    impl Read for MemFile {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            let n = buf.len().min(self.bytes.len().saturating_sub(self.at));
            if n == 0 {
                return Ok(0);
            }
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    impl Write for MemFile {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            if self.bytes.len() < self.at + buf.len() {
                self.bytes.resize(self.at + buf.len(), 0);
            }
            self.bytes[self.at..self.at + buf.len()].copy_from_slice(buf);
            self.at += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }
    impl Seek for MemFile {
        fn seek(&mut self, pos: SeekFrom) -> Result<u64, ErrorKind> {
            self.at = match pos {
                SeekFrom::Start(n) => n as usize,
                SeekFrom::End(n) => (self.bytes.len() as i64 + n) as usize,
                SeekFrom::Current(n) => (self.at as i64 + n) as usize,
            };
            Ok(self.at as u64)
        }
    }

    fn new_image(options: &CreateOptions) -> MemFile {
        let header = plan(options).unwrap();
        let mut bytes = vec![0u8; metadata_len(&header) as usize];
        crate::fvd::create::initial_bytes_at(&header, 0, &mut bytes);
        MemFile { bytes, at: 0 }
    }

    #[test]
    fn a_blocking_disk_is_the_base_of_another_at_any_depth() {
        // raw -> FVD (writes 0xB0 at 64 KiB) -> FVD over it, read-only below.
        let raw: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let below = CreateOptions {
            virtual_size: 256 * 1024,
            block_size: Some(4096),
            base: Some(BaseSpec {
                name: b"raw",
                format: b"raw",
                size: raw.len() as u64,
            }),
            ..Default::default()
        };
        let raw_file = MemFile {
            bytes: raw.clone(),
            at: 0,
        };
        let mut disk: BlockingDisk<_, _, NoFile, _> = BlockingDisk::open(
            vec![0u8; 64 * 1024],
            new_image(&below),
            NoFile,
            raw_file,
            true,
            4096,
        )
        .unwrap();
        disk.write(64 * 1024, &[0xB0; 4096]).unwrap();
        let (image, _, raw_file, clean) = disk.close().unwrap();
        assert!(clean);
        let middle: BlockingDisk<_, _, NoFile, _> =
            BlockingDisk::open(vec![0u8; 64 * 1024], image, NoFile, raw_file, false, 4096).unwrap();
        let top_options = CreateOptions {
            virtual_size: 512 * 1024,
            block_size: Some(4096),
            base: Some(BaseSpec {
                name: b"middle",
                format: b"fvd",
                size: 256 * 1024,
            }),
            ..Default::default()
        };
        let mut top: BlockingDisk<_, _, NoFile, _> = BlockingDisk::open(
            vec![0u8; 64 * 1024],
            new_image(&top_options),
            NoFile,
            middle,
            true,
            4096,
        )
        .unwrap();
        // A partial block copies its head and tail from two layers down.
        top.write(65 * 1024, &[0x42; 512]).unwrap();
        let mut got = vec![0u8; 512 * 1024];
        top.read(0, &mut got).unwrap();
        let mut want = raw.clone();
        want[64 * 1024..68 * 1024].fill(0xB0);
        want[65 * 1024..65 * 1024 + 512].fill(0x42);
        want.resize(512 * 1024, 0);
        assert!(got == want, "the stacked disk differs");
        // The byte-stream view reads any offset and length.
        let (_, _, mut middle, _) = top.close().unwrap();
        middle.seek(SeekFrom::Start(64 * 1024 - 3)).unwrap();
        let mut odd = [0u8; 7];
        let mut done = 0;
        while done < odd.len() {
            done += Read::read(&mut middle, &mut odd[done..]).unwrap();
        }
        assert_eq!(odd[..3], raw[64 * 1024 - 3..64 * 1024]);
        assert_eq!(odd[3..], [0xB0; 4]);
    }

    #[test]
    fn blocking_disk_copies_on_write_and_survives_reopen() {
        let base: Vec<u8> = (0..256 * 1024).map(|i| (i / 512) as u8).collect();
        let options = CreateOptions {
            virtual_size: 512 * 1024,
            compact_image: true,
            chunk_size: Some(16384),
            block_size: Some(4096),
            journal_size: Some(8192),
            base: Some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: base.len() as u64,
            }),
            ..Default::default()
        };
        let memory = vec![0u8; 64 * 1024];
        let image = new_image(&options);
        let base_file = MemFile {
            bytes: base.clone(),
            at: 0,
        };
        let mut disk: BlockingDisk<_, _, NoFile, _> =
            BlockingDisk::open(memory, image, NoFile, base_file, true, 4096).unwrap();
        disk.write(1024, &[0xee; 1024]).unwrap();
        disk.discard(8192, 4096).unwrap();
        disk.flush().unwrap();
        let mut buf = vec![0u8; 16384];
        disk.read(0, &mut buf).unwrap();
        let mut expected = base[..16384].to_vec();
        expected[1024..2048].fill(0xee);
        expected[8192..12288].fill(0);
        assert_eq!(buf, expected);
        let (image, _, base_file, clean) = disk.close().unwrap();
        assert!(clean);
        let mut disk: BlockingDisk<_, _, NoFile, _> =
            BlockingDisk::open(vec![0u8; 64 * 1024], image, NoFile, base_file, false, 4096)
                .unwrap();
        let mut again = vec![0u8; 16384];
        disk.read(0, &mut again).unwrap();
        assert_eq!(again, expected);
        assert_eq!(
            disk.write(0, &[0; 512]),
            Err(BlockingError::Submit(SubmitError::ReadOnly))
        );
    }

    /// A build without the QED engine (the firmware's) names what it cannot open.
    #[test]
    #[cfg(not(feature = "qed-engine"))]
    fn a_build_without_the_qed_engine_refuses_qed_images_by_name() {
        use crate::engine::{ImageFormat, OpenError};
        use crate::qed::{plan as qed_plan, QedCreateOptions};
        let plan = qed_plan(&QedCreateOptions {
            size: 256 * 1024,
            cluster_size: 4096,
            table_size: 1,
            backing: None,
        })
        .unwrap();
        let mut bytes = vec![0u8; plan.file_len as usize];
        plan.write_header_area(&mut bytes).unwrap();
        let image = MemFile { bytes, at: 0 };
        let opened: Result<BlockingDisk<_, _, NoFile, NoFile>, _> =
            BlockingDisk::open(vec![0u8; 64 * 1024], image, NoFile, NoFile, false, 4096);
        let Err(BlockingError::Open(error)) = opened else {
            panic!("a QED image opened without the QED engine");
        };
        assert_eq!(error, OpenError::FormatNotBuilt(ImageFormat::Qed));
        assert!(std::format!("{error}").contains("no qed engine"), "{error}");
    }

    #[test]
    #[cfg(feature = "qed-engine")]
    fn blocking_disk_serves_qed_images_too() {
        use crate::qed::{plan as qed_plan, QedBacking, QedCreateOptions};
        let base: Vec<u8> = (0..64 * 1024).map(|i| (i / 512) as u8 ^ 0x33).collect();
        let plan = qed_plan(&QedCreateOptions {
            size: 256 * 1024,
            cluster_size: 4096,
            table_size: 1,
            backing: Some(QedBacking {
                name: b"base",
                format: b"raw",
            }),
        })
        .unwrap();
        let mut bytes = vec![0u8; plan.file_len as usize];
        plan.write_header_area(&mut bytes).unwrap();
        let image = MemFile { bytes, at: 0 };
        let base_file = MemFile {
            bytes: base.clone(),
            at: 0,
        };
        let mut disk: BlockingDisk<_, _, NoFile, _> =
            BlockingDisk::open(vec![0u8; 64 * 1024], image, NoFile, base_file, true, 4096).unwrap();
        assert_eq!(
            disk.engine().format(),
            Some(crate::engine::ImageFormat::Qed)
        );
        disk.write(1024, &[0xee; 1024]).unwrap();
        disk.write_zeroes(8192, 8192).unwrap();
        disk.write(9216, &[0x11; 512]).unwrap();
        disk.flush().unwrap();
        let mut expected = base[..32768].to_vec();
        expected[1024..2048].fill(0xee);
        expected[8192..16384].fill(0);
        expected[9216..9728].fill(0x11);
        let mut buf = vec![0u8; 32768];
        disk.read(0, &mut buf).unwrap();
        assert_eq!(buf, expected);
        let (image, _, base_file, clean) = disk.close().unwrap();
        assert!(clean);
        let mut disk: BlockingDisk<_, _, NoFile, _> =
            BlockingDisk::open(vec![0u8; 64 * 1024], image, NoFile, base_file, false, 4096)
                .unwrap();
        let mut again = vec![0u8; 32768];
        disk.read(0, &mut again).unwrap();
        assert_eq!(again, expected);
    }
}
