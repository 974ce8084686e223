//! Adaptive whole-image prefetch: after `prefetch_start_delay`, copy every block still in
//! the base into the image through copy-on-read fills (so it inherits their never-clobber
//! rule), `num_prefetch_slots` units of `bytes_per_prefetch` in flight. Read and write
//! throughput are measured over their windows; when the average falls below the minimum
//! (the guest is busy with the same disks) a coin flip decides whether to pause for a
//! random time up to `prefetch_throttle_time`, as in 2011; unlike 2011 the maxima are
//! enforced, and a minimum above half the read cap is lowered to it (a capped prefetch
//! is not a busy guest). When a whole pass finds nothing left, the metadata is committed and the
//! header's `base_img_fully_prefetched` set: the base is never read again. Time comes
//! from the host through [`Engine::handle_timeout`].
//!
//! Every retry is bounded. A pass that copies nothing and has failed fills starts another
//! pass at most [`MAX_FRUITLESS_PASSES`] times in a row; then prefetch gives up
//! ([`PrefetchState::Failed`], with the block that failed first in [`PrefetchFailure`]).
//! The final commit and header update are tried at most [`MAX_FINISH_ATTEMPTS`] times.
//! A bitmap page that cannot be read ends prefetch at once.

use super::fill::{FillFor, FillStart};
use super::meta::Stall;
use super::FvdEngine;
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::fvd::header::{mutable_sectors, RawHeader};
use zerocopy::little_endian::U32;

/// How an open treats whole-image prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PrefetchMode {
    /// As the header says (`prefetch_start_delay` > 0 enables it).
    #[default]
    Header,
    /// Never.
    Off,
    /// Start at once, optionally capping base reads at this many KiB/s.
    Now {
        /// Read cap, KiB/s (`None`: the header's maximum).
        max_read_kib_s: Option<u64>,
    },
}

/// Passes in a row that copied nothing and had failed fills before prefetch gives up.
pub const MAX_FRUITLESS_PASSES: u32 = 3;

/// Failed attempts at the final commit and header update before prefetch gives up.
pub const MAX_FINISH_ATTEMPTS: u32 = 3;

/// Why prefetch gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PrefetchFailure {
    /// Copying blocks kept failing: `passes` passes in a row copied nothing, and `block`
    /// was the first to fail in the last one.
    Copy {
        /// The first block that failed in the last pass.
        block: u64,
        /// Fruitless passes in a row.
        passes: u32,
        /// How its fill failed.
        error: RequestError,
    },
    /// The bitmap page holding `block`'s bit could not be read.
    Bitmap {
        /// The block being looked at.
        block: u64,
        /// How loading the page failed.
        error: RequestError,
    },
    /// Committing the copied blocks or marking the header fully prefetched kept failing.
    Finish {
        /// Failed attempts.
        attempts: u32,
        /// How the last one failed.
        error: IoError,
    },
}

impl PrefetchFailure {
    /// The failure of the storage (or the metadata) behind it.
    pub fn error(&self) -> RequestError {
        match *self {
            PrefetchFailure::Copy { error, .. } | PrefetchFailure::Bitmap { error, .. } => error,
            PrefetchFailure::Finish { error, .. } => RequestError::Io(error),
        }
    }
}

impl core::fmt::Display for PrefetchFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PrefetchFailure::Copy { block, passes, .. } => write!(
                f,
                "copying blocks from the base into the image kept failing ({passes} passes \
                 in a row copied nothing; first failed block: {block})"
            ),
            PrefetchFailure::Bitmap { block, .. } => {
                write!(f, "the bitmap page of block {block} could not be read")
            }
            PrefetchFailure::Finish { attempts, .. } => write!(
                f,
                "marking the image fully prefetched failed {attempts} times"
            ),
        }
    }
}

/// Where prefetch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PrefetchState {
    /// Not enabled (or disabled after an I/O error).
    #[default]
    Off,
    /// Waiting for its start time.
    Waiting,
    /// Copying blocks.
    Running,
    /// Pausing because throughput fell below the minimum.
    Paused,
    /// Everything copied; committing and marking the header.
    Finishing,
    /// The base is fully prefetched.
    Done,
    /// Gave up after persistent errors ([`PrefetchProgress::failure`] says why); the image
    /// keeps working, with the blocks copied so far.
    Failed,
}

/// Progress, for hosts that show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PrefetchProgress {
    /// The state.
    pub state: PrefetchState,
    /// The scan position, in blocks.
    pub cursor: u64,
    /// Blocks in the base.
    pub blocks: u64,
    /// Blocks copied by prefetch in this session.
    pub copied: u64,
    /// Why prefetch gave up (state [`PrefetchState::Failed`]).
    pub failure: Option<PrefetchFailure>,
}

/// Throughput over fixed windows with an exponentially weighted average.
#[derive(Clone, Copy, Debug)]
struct Meter {
    window_ms: u64,
    start: u64,
    bytes: u64,
    average: Option<u64>,
    min_bps: u64,
    max_bps: u64,
}

impl Meter {
    fn new(window_ms: u64, min_kib: u64, max_kib: u64) -> Self {
        Meter {
            window_ms: window_ms.max(1),
            start: 0,
            bytes: 0,
            average: None,
            min_bps: min_kib.saturating_mul(1024),
            max_bps: max_kib.saturating_mul(1024),
        }
    }

    /// True when `extra` more bytes in this window would exceed the maximum rate (the
    /// first transfer of a window is always allowed).
    fn would_exceed(&self, extra: u64) -> bool {
        self.max_bps > 0
            && self.bytes > 0
            && (self.bytes + extra).saturating_mul(1000)
                > self.max_bps.saturating_mul(self.window_ms)
    }

    fn deadline(&self) -> u64 {
        self.start.saturating_add(self.window_ms)
    }

    /// Closes the window when it is over; returns true when the average is below the
    /// minimum (only judged for windows in which prefetch was busy).
    fn tick(&mut self, now: u64, busy: bool) -> bool {
        if now < self.deadline() {
            return false;
        }
        let elapsed = (now - self.start).max(1);
        let rate = self.bytes.saturating_mul(1000) / elapsed;
        let slow = busy && {
            // 2011 default weight: 80 % old average, 20 % new window.
            let average = self.average.map_or(rate, |a| (a * 4 + rate) / 5);
            self.average = Some(average);
            average < self.min_bps
        };
        self.start = now;
        self.bytes = 0;
        slow
    }
}

/// Prefetch state of one open image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefetch {
    state: PrefetchState,
    start_at: Option<u64>,
    delay_ms: u64,
    cursor: u64,
    pass_found_work: bool,
    budget: u64,
    in_flight: u64,
    read: Meter,
    write: Meter,
    throttle_ms: u64,
    paused_until: u64,
    rng: u64,
    copied: u64,
    finish_step: u8,
    finish_issued: bool,
    /// The first fill of this pass that failed, with its error.
    pass_failed: Option<(u64, RequestError)>,
    /// Some fill of this pass wrote its block.
    pass_copied: bool,
    /// Passes in a row that copied nothing and had failures.
    fruitless_passes: u32,
    /// A fill failed in the current measurement window: the window says nothing about a
    /// busy guest (a base that fails reads fast and writes nothing).
    window_failed: bool,
    /// Failed attempts to finish.
    finish_failures: u32,
    /// Why prefetch gave up.
    failure: Option<PrefetchFailure>,
}

impl Prefetch {
    pub(crate) const OFF: Prefetch = Prefetch {
        state: PrefetchState::Off,
        start_at: None,
        delay_ms: 0,
        cursor: 0,
        pass_found_work: false,
        budget: 0,
        in_flight: 0,
        read: Meter {
            window_ms: 1,
            start: 0,
            bytes: 0,
            average: None,
            min_bps: 0,
            max_bps: 0,
        },
        write: Meter {
            window_ms: 1,
            start: 0,
            bytes: 0,
            average: None,
            min_bps: 0,
            max_bps: 0,
        },
        throttle_ms: 0,
        paused_until: 0,
        rng: 0x2545_F491_4F6C_DD1D,
        copied: 0,
        finish_step: 0,
        finish_issued: false,
        pass_failed: None,
        pass_copied: false,
        fruitless_passes: 0,
        window_failed: false,
        finish_failures: 0,
        failure: None,
    };

    /// Configures prefetch from the header and the host's choice.
    pub(crate) fn configure(header: &RawHeader, block_size: u64, mode: PrefetchMode) -> Prefetch {
        let delay_s = header.prefetch_start_delay.get();
        let (enabled, delay_ms, read_cap) = match mode {
            PrefetchMode::Off => (false, 0, None),
            PrefetchMode::Header => (
                delay_s > 0,
                (delay_s.max(0) as u64).saturating_mul(1000),
                None,
            ),
            PrefetchMode::Now { max_read_kib_s } => (true, 0, max_read_kib_s),
        };
        let unit = header.bytes_per_prefetch.get().max(block_size);
        let slots = u64::from(header.num_prefetch_slots.get()).max(1);
        let max_read = read_cap.unwrap_or(header.prefetch_max_read_throughput.get());
        // Prefetch cannot read faster than its cap, and it writes what it reads: a
        // minimum above half the cap would take every window for a busy guest and pause.
        let floor = |min_kib: u64| match max_read {
            0 => min_kib,
            cap => min_kib.min(cap / 2),
        };
        Prefetch {
            state: if enabled {
                PrefetchState::Waiting
            } else {
                PrefetchState::Off
            },
            delay_ms,
            budget: unit.saturating_mul(slots),
            read: Meter::new(
                header.prefetch_read_throughput_measure_time.get(),
                floor(header.prefetch_min_read_throughput.get()),
                max_read,
            ),
            write: Meter::new(
                header.prefetch_write_throughput_measure_time.get(),
                floor(header.prefetch_min_write_throughput.get()),
                header.prefetch_max_write_throughput.get(),
            ),
            throttle_ms: header.prefetch_throttle_time.get(),
            ..Prefetch::OFF
        }
    }

    pub(crate) fn has_room(&self, bytes: u64) -> bool {
        self.state == PrefetchState::Running
            && self.in_flight + bytes <= self.budget
            && !self.read.would_exceed(bytes)
            && !self.write.would_exceed(bytes)
    }

    /// A fill started: its base read counts against the read rate now, so the cap holds
    /// however fast the host completes.
    pub(crate) fn started(&mut self, bytes: u64) {
        self.in_flight += bytes;
        self.read.bytes += bytes;
        self.pass_found_work = true;
    }

    /// A fill of `block` ended: it wrote the block, or failed with `error` (neither when
    /// it was cancelled or the block became local some other way).
    pub(crate) fn finished(
        &mut self,
        block: u64,
        bytes: u64,
        wrote: bool,
        error: Option<RequestError>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
        if wrote {
            self.write.bytes += bytes;
            self.copied += 1;
            self.pass_copied = true;
        } else if let Some(error) = error {
            self.pass_failed.get_or_insert((block, error));
            self.window_failed = true;
        }
    }

    /// A whole pass ended: true when it was the last fruitless pass allowed (prefetch
    /// has given up).
    fn end_pass(&mut self) -> bool {
        match self.pass_failed.take() {
            Some((block, error)) if !self.pass_copied => {
                self.fruitless_passes += 1;
                if self.fruitless_passes >= MAX_FRUITLESS_PASSES {
                    self.give_up(PrefetchFailure::Copy {
                        block,
                        passes: self.fruitless_passes,
                        error,
                    });
                    return true;
                }
            }
            _ => self.fruitless_passes = 0,
        }
        self.pass_copied = false;
        false
    }

    fn give_up(&mut self, failure: PrefetchFailure) {
        self.state = PrefetchState::Failed;
        self.failure = Some(failure);
    }

    /// An attempt to finish failed with `error`; true when prefetch has given up.
    fn finish_failed(&mut self, error: IoError) -> bool {
        self.finish_failures += 1;
        if self.finish_failures >= MAX_FINISH_ATTEMPTS {
            self.give_up(PrefetchFailure::Finish {
                attempts: self.finish_failures,
                error,
            });
            return true;
        }
        false
    }

    /// The next time prefetch needs to hear about.
    pub(crate) fn deadline(&self) -> Option<u64> {
        match self.state {
            PrefetchState::Waiting => self.start_at.or(Some(0)),
            PrefetchState::Paused => Some(self.paused_until),
            PrefetchState::Running => Some(self.read.deadline().min(self.write.deadline())),
            _ => None,
        }
    }

    fn coin(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Time moved to `now`: start, end a pause, close measurement windows.
    pub(crate) fn on_time(&mut self, now: u64) {
        match self.state {
            PrefetchState::Waiting => {
                let start = *self
                    .start_at
                    .get_or_insert(now.saturating_add(self.delay_ms));
                if now >= start {
                    self.state = PrefetchState::Running;
                    self.rng ^= now;
                    self.read.start = now;
                    self.write.start = now;
                }
            }
            PrefetchState::Paused if now >= self.paused_until => {
                self.state = PrefetchState::Running;
                self.read = Meter {
                    start: now,
                    bytes: 0,
                    average: None,
                    ..self.read
                };
                self.write = Meter {
                    start: now,
                    bytes: 0,
                    average: None,
                    ..self.write
                };
            }
            PrefetchState::Running => {
                // Failed fills are not a busy guest: their window is not judged (the
                // failures themselves end prefetch after bounded passes).
                let busy = (self.in_flight > 0 || self.read.bytes > 0) && !self.window_failed;
                if now >= self.read.deadline().min(self.write.deadline()) {
                    self.window_failed = false;
                }
                let slow = self.read.tick(now, busy) | self.write.tick(now, busy);
                if slow {
                    if self.coin() % 2 == 0 && self.throttle_ms > 0 {
                        self.paused_until = now + 1 + self.coin() % self.throttle_ms;
                        self.state = PrefetchState::Paused;
                    } else {
                        self.read.average = None;
                        self.write.average = None;
                    }
                }
            }
            _ => {}
        }
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Prefetch progress.
    pub fn prefetch_progress(&self) -> PrefetchProgress {
        PrefetchProgress {
            state: self.prefetch.state,
            cursor: self.prefetch.cursor,
            blocks: self.layout.and_then(|l| l.base).map_or(0, |b| b.blocks),
            copied: self.prefetch.copied,
            failure: self.prefetch.failure,
        }
    }

    /// Advances prefetch; true when something changed.
    pub(crate) fn step_prefetch(&mut self) -> bool {
        match self.prefetch.state {
            PrefetchState::Running => self.prefetch_blocks(),
            PrefetchState::Finishing => self.finish_prefetch(),
            _ => false,
        }
    }

    fn prefetch_blocks(&mut self) -> bool {
        let (Some(layout), Some(base)) = (self.layout, self.live_base()) else {
            self.prefetch.state = PrefetchState::Done;
            return true;
        };
        let bs = layout.block_size;
        let mut moved = false;
        // Bounded work per step: the pump calls again while something moves.
        for _ in 0..4096 {
            let block = self.prefetch.cursor;
            if block >= base.blocks {
                if self.prefetch.in_flight > 0 {
                    return moved;
                }
                if self.prefetch.end_pass() {
                    return true;
                }
                if self.prefetch.pass_found_work {
                    // Verify with another pass: fills may have been cancelled or failed.
                    self.prefetch.cursor = 0;
                    self.prefetch.pass_found_work = false;
                } else {
                    self.prefetch.state = PrefetchState::Finishing;
                    self.prefetch.finish_step = 0;
                }
                return true;
            }
            if !self.prefetch.has_room(bs) {
                return moved;
            }
            let page = match self.page(Self::bitmap_key(block)) {
                Ok(page) => page,
                Err(Stall::Wait) => return moved,
                Err(stall) => {
                    // As in 2011: an error ends prefetch for the session.
                    let error = match stall {
                        Stall::Corrupt(c) => RequestError::Corrupt(c),
                        Stall::Io(e) => RequestError::Io(e),
                        Stall::Wait => RequestError::Failed,
                    };
                    self.prefetch
                        .give_up(PrefetchFailure::Bitmap { block, error });
                    return true;
                }
            };
            if self.bit(page, block) {
                self.prefetch.cursor += 1;
                moved = true;
                continue;
            }
            match self.start_fill(FillFor::Prefetch, block * bs, bs) {
                FillStart::Started(_) => {}
                // A write is making the block local; check again on the next pass.
                FillStart::Busy | FillStart::Filling => self.prefetch.pass_found_work = true,
                FillStart::NoRoom => return moved,
            }
            self.prefetch.cursor += 1;
            moved = true;
        }
        moved
    }

    /// Commit every copied block, then set `base_img_fully_prefetched` (durably).
    fn finish_prefetch(&mut self) -> bool {
        if self.prefetch.finish_issued {
            return false;
        }
        match self.prefetch.finish_step {
            0 => {
                if self.prefetch.in_flight > 0 || self.commit.in_window() {
                    return false;
                }
                self.start_commit(super::commit::Purpose::Flush);
                self.prefetch.finish_step = 1;
                true
            }
            1 => {
                if self.commit.in_window() {
                    return false;
                }
                if let Some(error) = self.commit.last_failure.take() {
                    // The commit failed: try again, a bounded number of times.
                    self.prefetch.finish_step = 0;
                    self.prefetch.finish_failed(error);
                    return true;
                }
                if self
                    .cache
                    .any_unjournaled_of(crate::engine::cache::Meta::Bitmap)
                    || self
                        .cache
                        .any_unjournaled_of(crate::engine::cache::Meta::Table)
                {
                    self.prefetch.finish_step = 0;
                    return true;
                }
                let header = self.header_mut();
                header.base_img_fully_prefetched = U32::new(1);
                let at = mutable_sectors::RELOCATION_AND_PREFETCH * 512;
                let op = Op::Write {
                    offset: at as u64,
                    len: 512,
                    from: Buffer::Engine { offset: at },
                };
                if self.commands.emit(Owner::Prefetch, FileId::Image, op) {
                    self.prefetch.finish_issued = true;
                    return true;
                }
                false
            }
            2 => {
                if self
                    .commands
                    .emit(Owner::Prefetch, FileId::Image, Op::Flush)
                {
                    self.prefetch.finish_issued = true;
                    return true;
                }
                false
            }
            _ => {
                if let Some(layout) = self.layout.as_mut() {
                    layout.base_fully_prefetched = true;
                }
                self.copy_on_read = false;
                self.prefetch.state = PrefetchState::Done;
                true
            }
        }
    }

    pub(crate) fn prefetch_done(&mut self, result: Result<(), IoError>) {
        self.prefetch.finish_issued = false;
        match result {
            Ok(()) => self.prefetch.finish_step += 1,
            Err(error) => {
                self.prefetch.finish_step = 1;
                self.prefetch.finish_failed(error);
            }
        }
    }
}
