//! The self-test both the host tests and the QEMU firmware run: a FAT volume (the factory
//! image, read-only at the start of a [`RamMedium`]) mounted through the overlay with
//! `embedded-sdmmc`'s `VolumeManager`; files read, written, overwritten, flushed and
//! remounted; power cuts at every medium command of a small FAT workload and at seeded
//! random points of a long one ([`crate::workload`]); factory reset.
//! Each case reports a name and a result; the caller prints them and the tally.

use crate::check::check;
use crate::driver::{create_over, BaseFormat, BaseSpecOf, Geometry, Layout, OverlayDisk};
use crate::factory::{create_factory, open_factory};
use crate::medium::{Extent, Medium, Partition};
use crate::ram::{CutAfter, RamError, RamMedium};
use crate::workload::{self, Rng, FILES, GENERATIONS};
use embedded_sdmmc::{
    Block, BlockCount, BlockDevice, BlockIdx, Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager,
};

/// A file the factory image holds, with its exact content.
#[derive(Clone, Copy, Debug)]
pub struct KnownFile {
    /// 8.3 name.
    pub name: &'static str,
    /// Content.
    pub content: &'static [u8],
}

/// What the self-test needs: the medium (factory image as its read-only prefix), where
/// the partitions are, a file of the base, and memory for the engine and the check.
pub struct Bench<'a, 'r, const CACHE: usize> {
    /// The medium.
    pub medium: &'a RamMedium<'r, CACHE>,
    /// Base = the read-only prefix; overlay after it.
    pub layout: Layout,
    /// A file the base's FAT volume holds.
    pub known: KnownFile,
    /// Engine memory.
    pub memory: &'a mut [u8],
    /// Metadata cache bytes.
    pub cache_bytes: usize,
    /// Check work memory.
    pub check_memory: &'a mut [u8],
}

/// Why a case failed.
pub type Failure = &'static str;

/// Passed and failed cases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
}

impl Tally {
    /// Counts one case.
    pub fn note(&mut self, passed: bool) {
        match passed {
            true => self.passed += 1,
            false => self.failed += 1,
        }
    }
}

/// A fixed clock for FAT timestamps (the firmware has no real-time clock).
pub struct Clock;

impl TimeSource for Clock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 11,
            zero_indexed_day: 3,
            hours: 12,
            minutes: 0,
            seconds: 0,
        }
    }
}

/// A borrowed block device (VolumeManager owns its device; the caller keeps the driver).
pub struct ByRef<'a, D>(pub &'a D);

impl<D: BlockDevice> BlockDevice for ByRef<'_, D> {
    type Error = D::Error;
    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), D::Error> {
        self.0.read(blocks, start)
    }
    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), D::Error> {
        self.0.write(blocks, start)
    }
    fn num_blocks(&self) -> Result<BlockCount, D::Error> {
        self.0.num_blocks()
    }
}

const NEW_NAME: &str = "NEW.TXT";
const LATE_NAME: &str = "LATE.TXT";

/// Bytes of the new file: long enough to span clusters and a copy-on-write block.
fn new_byte(i: usize) -> u8 {
    b"fvd overlay firmware self-test "[i % 31]
}

const NEW_LEN: usize = 5000;
const OVERWRITE: &[u8] = b"overwritten through the overlay\n";

fn write_file<D: BlockDevice>(
    disk: &D,
    name: &str,
    mut byte: impl FnMut(usize) -> u8,
    len: usize,
) -> Result<(), Failure> {
    let manager = VolumeManager::new(ByRef(disk), Clock);
    let volume = manager
        .open_volume(VolumeIdx(0))
        .map_err(|_| "mount failed")?;
    let root = volume.open_root_dir().map_err(|_| "root failed")?;
    let file = root
        .open_file_in_dir(name, Mode::ReadWriteCreateOrTruncate)
        .map_err(|_| "create failed")?;
    let mut chunk = [0u8; 512];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len());
        for (i, b) in chunk.iter_mut().take(n).enumerate() {
            *b = byte(done + i);
        }
        file.write(chunk.get(..n).unwrap_or(&[]))
            .map_err(|_| "file write failed")?;
        done += n;
    }
    file.close().map_err(|_| "file close failed")?;
    root.close().map_err(|_| "dir close failed")?;
    volume.close().map_err(|_| "unmount failed")
}

/// Reads `name` and compares it with `expect(i)` for `len` bytes.
fn file_is<D: BlockDevice>(
    disk: &D,
    name: &str,
    expect: impl Fn(usize) -> u8,
    len: usize,
) -> Result<(), Failure> {
    let manager = VolumeManager::new(ByRef(disk), Clock);
    let volume = manager
        .open_volume(VolumeIdx(0))
        .map_err(|_| "mount failed")?;
    let root = volume.open_root_dir().map_err(|_| "root failed")?;
    let file = root
        .open_file_in_dir(name, Mode::ReadOnly)
        .map_err(|_| "open failed")?;
    if file.length() as usize != len {
        return Err("file length differs");
    }
    let mut chunk = [0u8; 512];
    let mut done = 0;
    while done < len {
        let n = file.read(&mut chunk).map_err(|_| "file read failed")?;
        if n == 0 {
            return Err("file ended early");
        }
        for (i, b) in chunk.iter().take(n).enumerate() {
            if *b != expect(done + i) {
                return Err("file content differs");
            }
        }
        done += n;
    }
    file.close().map_err(|_| "file close failed")?;
    root.close().map_err(|_| "dir close failed")?;
    volume.close().map_err(|_| "unmount failed")
}

impl<const CACHE: usize> Bench<'_, '_, CACHE> {
    fn open<'s, D: Medium>(&'s mut self, medium: &'s D) -> Result<OverlayDisk<'s, 's, D>, Failure> {
        OverlayDisk::open_or_create(
            medium,
            self.layout,
            Geometry::default(),
            self.memory,
            self.cache_bytes,
        )
        .map_err(|_| "overlay open failed")
    }

    fn check_clean(&mut self) -> Result<(), Failure> {
        let outcome =
            check(self.medium, self.layout, self.check_memory).map_err(|_| "check failed")?;
        if outcome.summary.counts.corruptions != 0 {
            return Err("core check found corruptions");
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Failure> {
        crate::driver::create(self.medium, self.layout, Geometry::default())
            .map_err(|_| "factory reset failed")
    }

    /// The base file reads through a new overlay.
    fn base_file_reads_through_the_overlay(&mut self) -> Result<(), Failure> {
        self.reset()?;
        let medium = self.medium;
        let known = self.known;
        let disk = self.open(medium)?;
        file_is(
            &disk,
            known.name,
            |i| known.content.get(i).copied().unwrap_or(0),
            known.content.len(),
        )
    }

    /// New and overwritten files survive a flush, a power cut and a remount.
    fn flushed_files_survive_a_cut_and_remount(&mut self) -> Result<(), Failure> {
        self.reset()?;
        let medium = self.medium;
        let known = self.known;
        {
            let disk = self.open(medium)?;
            write_file(&disk, NEW_NAME, new_byte, NEW_LEN)?;
            write_file(
                &disk,
                known.name,
                |i| OVERWRITE.get(i).copied().unwrap_or(0),
                OVERWRITE.len(),
            )?;
            disk.flush().map_err(|_| "flush failed")?;
            write_file(&disk, LATE_NAME, new_byte, 700)?;
        }
        medium
            .power_cut(0x9e37_79b9_7f4a_7c15)
            .map_err(|_| "cut failed")?;
        self.check_clean()?;
        let disk = self.open(medium)?;
        file_is(&disk, NEW_NAME, new_byte, NEW_LEN)?;
        file_is(
            &disk,
            known.name,
            |i| OVERWRITE.get(i).copied().unwrap_or(0),
            OVERWRITE.len(),
        )?;
        disk.close().map_err(|_| "close failed")?;
        self.check_clean()
    }

    /// A FAT workload cut at every medium command: a file whose write and flush
    /// completed before the cut is intact after reopen, the volume mounts, core's check
    /// finds no corruption. Returns the number of cut points tried.
    fn cut_at_every_command(&mut self) -> Result<u32, Failure> {
        let medium = self.medium;
        let mut budget = 0u64;
        loop {
            self.reset()?;
            medium.flush().map_err(|_| "flush failed")?;
            let dying = CutAfter::new(medium, budget);
            let mut flushed = false;
            let finished = (|| -> Result<(), ()> {
                let disk = self.open(&dying).map_err(|_| ())?;
                write_file(&disk, NEW_NAME, new_byte, 1500).map_err(|_| ())?;
                disk.flush().map_err(|_| ())?;
                flushed = true;
                write_file(&disk, LATE_NAME, new_byte, 600).map_err(|_| ())?;
                Ok(())
            })()
            .is_ok();
            medium
                .power_cut(budget.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1)
                .map_err(|_| "cut failed")?;
            self.check_clean()?;
            let known = self.known;
            let disk = self.open(medium)?;
            if flushed {
                file_is(&disk, NEW_NAME, new_byte, 1500)?;
            } else {
                // The volume still mounts (the base's own file reads).
                file_is(
                    &disk,
                    known.name,
                    |i| known.content.get(i).copied().unwrap_or(0),
                    known.content.len(),
                )?;
            }
            // The driver goes unclosed (as after a cut): the next round resets the overlay.
            if finished {
                return u32::try_from(budget).map_err(|_| "too many cut points");
            }
            budget += 1;
        }
    }

    /// The long workload cut at `rounds` random command counts drawn from `rng` (each cut
    /// keeping or dropping every unflushed block at random): the core check finds no
    /// corruption, every file holds its last flushed generation, and the file in flight
    /// holds, block by block, the old generation or the new one.
    fn cut_at_random_points_of_a_long_workload(
        &mut self,
        rng: &mut Rng,
        rounds: u32,
    ) -> Result<(), Failure> {
        let medium = self.medium;
        let mut total = None;
        for _ in 0..=rounds {
            self.reset()?;
            {
                let disk = self.open(medium)?;
                for file in 0..FILES.len() {
                    workload::write_generation(&disk, file, 0)?;
                }
                disk.flush().map_err(|_| "flush failed")?;
            }
            medium.flush().map_err(|_| "flush failed")?;
            // Round 0 measures the workload (no cut); the others cut it at random.
            let budget = match total {
                None => u64::MAX,
                Some(total) => rng.below(total),
            };
            let dying = CutAfter::new(medium, budget);
            let mut durable = [0u32; FILES.len()];
            let mut in_flight = None;
            let finished = (|| -> Result<(), ()> {
                let disk = self.open(&dying).map_err(|_| ())?;
                for generation in 1..=GENERATIONS {
                    for (file, done) in durable.iter_mut().enumerate() {
                        in_flight = Some(file);
                        workload::write_generation(&disk, file, generation).map_err(|_| ())?;
                        disk.flush().map_err(|_| ())?;
                        *done = generation;
                        in_flight = None;
                    }
                }
                Ok(())
            })()
            .is_ok();
            if total.is_none() {
                if !finished {
                    return Err("the long workload failed without a cut");
                }
                total = Some(u64::MAX - dying.left());
                continue;
            }
            medium.power_cut(rng.next_u64()).map_err(|_| "cut failed")?;
            self.check_clean()?;
            let disk = self.open(medium)?;
            workload::verify(&disk, &durable, in_flight)?;
        }
        Ok(())
    }

    /// The factory image as an FVD image: the raw FAT copied into a compact FVD image in
    /// the first `FACTORY_BLOCKS` of the writable blocks, an overlay after it whose base
    /// is that image (opened read-only by a second engine). The base file reads through
    /// both layers, a new file survives a close and reopen, core's check finds both images
    /// clean, and a factory reset brings back the raw FAT block for block.
    fn factory_image_as_fvd_under_the_overlay(&mut self) -> Result<(), Failure> {
        const FACTORY_BLOCKS: u32 = 512;
        let medium = self.medium;
        let known = self.known;
        let raw = self.layout.base;
        let factory = Extent {
            first: self.layout.overlay.first,
            blocks: FACTORY_BLOCKS,
        };
        let overlay = Extent {
            first: factory.end().ok_or("layout")?,
            blocks: self
                .layout
                .overlay
                .blocks
                .checked_sub(FACTORY_BLOCKS)
                .ok_or("layout")?,
        };
        let spec = BaseSpecOf {
            len: raw.len(),
            format: BaseFormat::Fvd,
        };
        let geometry = Geometry::default();
        create_factory(medium, factory, raw.len(), geometry)
            .map_err(|_| "factory create failed")?;
        {
            let mut image = open_factory(medium, factory, self.check_memory, 8 << 10, true)
                .map_err(|_| "factory open failed")?;
            let mut block = [Block::new()];
            for index in 0..raw.blocks {
                medium
                    .read(&mut block, BlockIdx(raw.first + index))
                    .map_err(|_: RamError| "raw read failed")?;
                if block[0].contents.iter().any(|b| *b != 0) {
                    image
                        .write(u64::from(index) * 512, &block[0].contents)
                        .map_err(|_| "factory fill failed (partition too small?)")?;
                }
            }
            if !image.close().map_err(|_| "factory close failed")?.3 {
                return Err("the factory image was not closed clean");
            }
        }
        create_over(medium, overlay, spec, geometry).map_err(|_| "overlay create failed")?;
        let hello = |i: usize| known.content.get(i).copied().unwrap_or(0);
        for round in 0..2 {
            let base = open_factory(medium, factory, self.check_memory, 8 << 10, false)
                .map_err(|_| "factory open failed")?;
            let disk =
                OverlayDisk::open_over(medium, overlay, base, spec, self.memory, self.cache_bytes)
                    .map_err(|_| "overlay open failed")?;
            file_is(&disk, known.name, hello, known.content.len())?;
            if round == 0 {
                write_file(&disk, NEW_NAME, new_byte, NEW_LEN)?;
                disk.flush().map_err(|_| "flush failed")?;
                disk.close().map_err(|_| "close failed")?;
            } else {
                file_is(&disk, NEW_NAME, new_byte, NEW_LEN)?;
                disk.factory_reset(geometry)
                    .map_err(|_| "factory reset failed")?;
            }
        }
        for extent in [factory, overlay] {
            let outcome = check(
                medium,
                Layout {
                    base: raw,
                    overlay: extent,
                },
                self.check_memory,
            )
            .map_err(|_| "check failed")?;
            if !outcome.is_clean() {
                return Err("core check of the factory image or its overlay is not clean");
            }
        }
        {
            let base = open_factory(medium, factory, self.check_memory, 8 << 10, false)
                .map_err(|_| "factory open failed")?;
            let disk =
                OverlayDisk::open_over(medium, overlay, base, spec, self.memory, self.cache_bytes)
                    .map_err(|_| "overlay open failed")?;
            let (mut seen, mut want) = ([Block::new()], [Block::new()]);
            for index in 0..raw.blocks {
                disk.read(&mut seen, BlockIdx(index))
                    .map_err(|_| "read failed")?;
                medium
                    .read(&mut want, BlockIdx(raw.first + index))
                    .map_err(|_: RamError| "raw read failed")?;
                if seen[0].contents != want[0].contents {
                    return Err("after reset a block differs from the factory FAT");
                }
            }
        }
        // The next case starts from the usual overlay again.
        self.reset()
    }

    /// After writes and a reset, every block of the virtual disk is the base's.
    fn factory_reset_restores_the_base(&mut self) -> Result<(), Failure> {
        let medium = self.medium;
        {
            let disk = self.open(medium)?;
            write_file(&disk, NEW_NAME, new_byte, NEW_LEN)?;
            disk.flush().map_err(|_| "flush failed")?;
            disk.factory_reset(Geometry::default())
                .map_err(|_| "factory reset failed")?;
        }
        let layout = self.layout;
        let disk = self.open(medium)?;
        let mut seen = [Block::new()];
        let mut base = [Block::new()];
        for index in 0..layout.base.blocks {
            disk.read(&mut seen, BlockIdx(index))
                .map_err(|_| "read failed")?;
            medium
                .read(&mut base, BlockIdx(layout.base.first + index))
                .map_err(|_: RamError| "base read failed")?;
            if seen[0].contents != base[0].contents {
                return Err("a block differs from the base after reset");
            }
        }
        Ok(())
    }

    /// Runs every case, calling `report(name, result)` for each; returns the tally. `seed`
    /// picks the random cut points (the caller prints it, so a failure replays).
    pub fn run(
        &mut self,
        seed: u64,
        mut report: impl FnMut(&'static str, Result<(), Failure>),
    ) -> Tally {
        let mut tally = Tally::default();
        let mut note = |name, result: Result<(), Failure>, tally: &mut Tally| {
            match result {
                Ok(()) => tally.passed += 1,
                Err(_) => tally.failed += 1,
            }
            report(name, result);
        };
        let r = self.base_file_reads_through_the_overlay();
        note("base_file_reads_through_the_overlay", r, &mut tally);
        let r = self.flushed_files_survive_a_cut_and_remount();
        note("flushed_files_survive_a_cut_and_remount", r, &mut tally);
        let r = self.cut_at_every_command().and_then(|points| {
            if points > 10 {
                Ok(())
            } else {
                Err("the workload stopped too early")
            }
        });
        note(
            "power_cut_at_every_command_of_a_fat_workload",
            r,
            &mut tally,
        );
        let r = self.cut_at_random_points_of_a_long_workload(&mut Rng::new(seed), 12);
        note(
            "power_cuts_at_random_points_of_a_long_workload",
            r,
            &mut tally,
        );
        let r = self.factory_image_as_fvd_under_the_overlay();
        note("factory_image_as_fvd_under_the_overlay", r, &mut tally);
        let r = self.factory_reset_restores_the_base();
        note("factory_reset_restores_the_base", r, &mut tally);
        tally
    }
}

/// A file written through a new overlay in `overlay` of `medium` over the raw base
/// `base_extent` of another medium `base` (a factory image kept as its own file): written,
/// flushed and closed, then read back through a second open. What stays on `medium` is an
/// FVD image whose header names the base `base.img`.
#[allow(clippy::too_many_arguments)]
pub fn write_through_overlay_over<D: Medium, B: Medium>(
    medium: &D,
    overlay: Extent,
    base: &B,
    base_extent: Extent,
    memory: &mut [u8],
    cache_bytes: usize,
    name: &str,
    content: &[u8],
) -> Result<(), Failure> {
    let spec = BaseSpecOf {
        len: base_extent.len(),
        format: BaseFormat::Raw,
    };
    let byte = |i: usize| content.get(i).copied().unwrap_or(0);
    {
        let disk = OverlayDisk::open_or_create_over(
            medium,
            overlay,
            Partition::new(base, base_extent),
            spec,
            Geometry::default(),
            &mut *memory,
            cache_bytes,
        )
        .map_err(|_| "overlay create failed")?;
        write_file(&disk, name, byte, content.len())?;
        disk.flush().map_err(|_| "flush failed")?;
        if !disk.close().map_err(|_| "close failed")? {
            return Err("the overlay was not marked clean");
        }
    }
    let disk = OverlayDisk::open_over(
        medium,
        overlay,
        Partition::new(base, base_extent),
        spec,
        memory,
        cache_bytes,
    )
    .map_err(|_| "overlay reopen failed")?;
    file_is(&disk, name, byte, content.len())?;
    disk.close().map_err(|_| "close failed")?;
    Ok(())
}
