//! The long FAT workload the self-test cuts at random points: a few files of fixed length
//! overwritten in place generation after generation, the overlay flushed after each file,
//! so that after any cut every 512-byte block of a file is either the last flushed
//! generation or (only in the file being written) the next one. Also the seeded PRNG that
//! picks the cut points, so a failing seed replays.

use crate::selftest::{ByRef, Clock, Failure};
use embedded_sdmmc::{BlockDevice, Mode, VolumeIdx, VolumeManager};

/// The files of the workload.
pub const FILES: [&str; 4] = ["GEN0.BIN", "GEN1.BIN", "GEN2.BIN", "GEN3.BIN"];
/// Bytes of each file: three blocks and a bit, so a file spans clusters.
pub const FILE_LEN: usize = 1600;
/// Generations written after the first.
pub const GENERATIONS: u32 = 6;

/// xorshift64*: cut points and cut outcomes from one printed seed.
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }
}

/// Byte `i` of generation `generation` of file `file`: every block differs between
/// generations and between files.
pub fn byte(file: usize, generation: u32, i: usize) -> u8 {
    let mix = (generation as usize)
        .wrapping_mul(73)
        .wrapping_add(file.wrapping_mul(29))
        .wrapping_add(i / 512);
    (mix as u8) ^ ((i % 512) as u8).rotate_left(3)
}

fn with_root<D: BlockDevice, R>(
    disk: &D,
    f: impl FnOnce(&embedded_sdmmc::Directory<'_, ByRef<'_, D>, Clock, 4, 4, 1>) -> Result<R, Failure>,
) -> Result<R, Failure> {
    let manager = VolumeManager::new(ByRef(disk), Clock);
    let volume = manager
        .open_volume(VolumeIdx(0))
        .map_err(|_| "mount failed")?;
    let root = volume.open_root_dir().map_err(|_| "root failed")?;
    let result = f(&root)?;
    root.close().map_err(|_| "dir close failed")?;
    volume.close().map_err(|_| "unmount failed")?;
    Ok(result)
}

/// Writes generation `generation` of file `file` in place (created when `generation` is 0).
pub fn write_generation<D: BlockDevice>(
    disk: &D,
    file: usize,
    generation: u32,
) -> Result<(), Failure> {
    let name = FILES.get(file).ok_or("no such file")?;
    let mode = match generation {
        0 => Mode::ReadWriteCreateOrTruncate,
        _ => Mode::ReadWriteAppend,
    };
    with_root(disk, |root| {
        let handle = root
            .open_file_in_dir(*name, mode)
            .map_err(|_| "open failed")?;
        handle.seek_from_start(0).map_err(|_| "seek failed")?;
        let mut chunk = [0u8; 512];
        let mut done = 0;
        while done < FILE_LEN {
            let n = (FILE_LEN - done).min(chunk.len());
            for (i, b) in chunk.iter_mut().take(n).enumerate() {
                *b = byte(file, generation, done + i);
            }
            handle
                .write(chunk.get(..n).unwrap_or(&[]))
                .map_err(|_| "file write failed")?;
            done += n;
        }
        handle.close().map_err(|_| "file close failed")
    })
}

/// Checks every file after a cut: each block is generation `durable[file]`, or, in the
/// file `in_flight` only, the next generation.
pub fn verify<D: BlockDevice>(
    disk: &D,
    durable: &[u32; FILES.len()],
    in_flight: Option<usize>,
) -> Result<(), Failure> {
    with_root(disk, |root| {
        for (file, name) in FILES.iter().enumerate() {
            let old = durable.get(file).copied().ok_or("no such file")?;
            let handle = root
                .open_file_in_dir(*name, Mode::ReadOnly)
                .map_err(|_| "a flushed file is missing")?;
            if handle.length() as usize != FILE_LEN {
                return Err("a flushed file changed length");
            }
            let mut chunk = [0u8; 512];
            let mut done = 0;
            while done < FILE_LEN {
                let n = handle.read(&mut chunk).map_err(|_| "file read failed")?;
                if n == 0 {
                    return Err("file ended early");
                }
                let got = chunk.get(..n).unwrap_or(&[]);
                let is = |generation: u32| {
                    got.iter()
                        .enumerate()
                        .all(|(i, b)| *b == byte(file, generation, done + i))
                };
                let new_ok = in_flight == Some(file) && is(old + 1);
                if !is(old) && !new_ok {
                    return Err(match in_flight == Some(file) {
                        true => "a block of the file in flight is neither old nor new",
                        false => "a block of a flushed file changed",
                    });
                }
                done += n;
            }
            handle.close().map_err(|_| "file close failed")?;
        }
        Ok(())
    })
}
