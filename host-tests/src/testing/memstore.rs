//! In-memory image files with a volatile write cache: writes land in a cache until the
//! file is flushed, and a simulated power cut keeps any subset of the unflushed writes,
//! possibly torn at 512-byte granularity. The storage behind the model and crash tests.

use crate::host::storage::Storage;
use fvd_core::engine::FileId;
use std::io;

/// One pending (unflushed) change to a file.
#[derive(Clone, Debug)]
pub enum PendingWrite {
    /// Bytes written at an offset.
    Data {
        /// Offset.
        offset: u64,
        /// Bytes.
        bytes: Vec<u8>,
    },
    /// A length change.
    SetLen(u64),
}

/// One file: its durable content and the writes since its last flush.
#[derive(Clone, Debug, Default)]
pub struct MemFile {
    /// What survives a power cut for sure.
    pub durable: Vec<u8>,
    /// What readers see now.
    pub current: Vec<u8>,
    /// Writes since the last flush, oldest first.
    pub pending: Vec<PendingWrite>,
}

impl MemFile {
    /// A file holding `bytes`, all durable.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemFile {
            durable: bytes.clone(),
            current: bytes,
            pending: Vec::new(),
        }
    }

    fn apply(content: &mut Vec<u8>, write: &PendingWrite) {
        match write {
            PendingWrite::Data { offset, bytes } => {
                let end = *offset as usize + bytes.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*offset as usize..end].copy_from_slice(bytes);
            }
            PendingWrite::SetLen(len) => content.resize(*len as usize, 0),
        }
    }

    /// The content after a power cut in which `keep(i, sector)` decides, for pending
    /// write `i`, whether each of its 512-byte sectors reached the medium.
    pub fn after_cut(&self, mut keep: impl FnMut(usize, usize) -> bool) -> Vec<u8> {
        let mut content = self.durable.clone();
        for (i, write) in self.pending.iter().enumerate() {
            match write {
                PendingWrite::Data { offset, bytes } => {
                    for (sector, piece) in bytes.chunks(512).enumerate() {
                        if keep(i, sector) {
                            let piece = PendingWrite::Data {
                                offset: offset + sector as u64 * 512,
                                bytes: piece.to_vec(),
                            };
                            Self::apply(&mut content, &piece);
                        }
                    }
                }
                PendingWrite::SetLen(_) => {
                    if keep(i, 0) {
                        Self::apply(&mut content, write);
                    }
                }
            }
        }
        content
    }
}

/// The files of one image in memory. `base` is raw.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// The image file.
    pub image: MemFile,
    /// The separate data file, if any.
    pub data: Option<MemFile>,
    /// The raw base image, if any.
    pub base: Option<MemFile>,
    /// Commands executed (for crash sweeps: "stop after N").
    pub writes: usize,
}

impl MemStorage {
    fn file(&mut self, file: FileId) -> io::Result<&mut MemFile> {
        let found = match file {
            FileId::Image => Some(&mut self.image),
            FileId::Data => self.data.as_mut(),
            FileId::Base => self.base.as_mut(),
        };
        found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {file:?} file")))
    }

    fn push(&mut self, file: FileId, write: PendingWrite) -> io::Result<()> {
        if file == FileId::Base {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the base image is read-only",
            ));
        }
        self.writes += 1;
        let f = self.file(file)?;
        MemFile::apply(&mut f.current, &write);
        f.pending.push(write);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.file(file)?;
        buf.fill(0);
        let start = (offset as usize).min(f.current.len());
        let end = (offset as usize + buf.len()).min(f.current.len());
        buf[..end - start].copy_from_slice(&f.current[start..end]);
        Ok(())
    }

    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.push(
            file,
            PendingWrite::Data {
                offset,
                bytes: buf.to_vec(),
            },
        )
    }

    fn write_zeroes(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        _unmap: bool,
    ) -> io::Result<()> {
        self.push(
            file,
            PendingWrite::Data {
                offset,
                bytes: vec![0; len as usize],
            },
        )
    }

    fn flush(&mut self, file: FileId) -> io::Result<()> {
        let f = self.file(file)?;
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.push(file, PendingWrite::SetLen(len))
    }

    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        Ok(match file {
            FileId::Image => Some(self.image.current.len() as u64),
            FileId::Data => self.data.as_ref().map(|f| f.current.len() as u64),
            FileId::Base => self.base.as_ref().map(|f| f.current.len() as u64),
        })
    }
}

/// The storages a power cut can leave behind.
pub fn survivors(storage: &MemStorage, seed: u64) -> Vec<(String, MemStorage)> {
    let mut out = Vec::new();
    let with = |image: Vec<u8>, data: Option<Vec<u8>>| MemStorage {
        image: MemFile::new(image),
        data: data.map(MemFile::new),
        base: storage.base.clone(),
        writes: 0,
    };
    let data_none = storage.data.as_ref().map(|d| d.after_cut(|_, _| false));
    let data_all = storage.data.as_ref().map(|d| d.after_cut(|_, _| true));
    out.push((
        "nothing pending survived".into(),
        with(storage.image.after_cut(|_, _| false), data_none.clone()),
    ));
    out.push((
        "everything pending survived".into(),
        with(storage.image.after_cut(|_, _| true), data_all.clone()),
    ));
    let pending = storage.image.pending.len();
    // Every prefix for short pending lists; evenly spaced prefixes for long ones.
    let stride = pending.div_ceil(10).max(1);
    for prefix in (0..pending).step_by(stride) {
        for torn in [0usize, 1] {
            let image = storage
                .image
                .after_cut(|i, sector| i < prefix || (i == prefix && sector < torn));
            out.push((
                format!("image prefix {prefix} torn at sector {torn}, data all"),
                with(image.clone(), data_all.clone()),
            ));
            if storage.data.is_some() {
                out.push((
                    format!("image prefix {prefix} torn at sector {torn}, data none"),
                    with(image, data_none.clone()),
                ));
            }
        }
    }
    let mut rng = seed | 1;
    let mut coin = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 2 == 0
    };
    for n in 0..4 {
        let image = storage.image.after_cut(|_, _| coin());
        let data = storage.data.as_ref().map(|d| d.after_cut(|_, _| coin()));
        out.push((format!("random subset {n}"), with(image, data)));
    }
    out
}
