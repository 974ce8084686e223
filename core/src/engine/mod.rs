//! The sans-IO engine: the host submits guest requests, polls I/O commands, performs them
//! on its files and reports their completions; the engine answers with events. It owns
//! request ordering, copy-on-write, chunk allocation, the metadata cache and the journal.
//! It never blocks, never allocates and never reads a clock.
//!
//! Memory layout (engine memory, handed over by the host):
//! `[header 8 KiB][journal scratch 4 KiB][metadata cache][bounce slots]`.

mod any;
mod bounce;
mod cache;
mod commit;
mod fill;
mod guest;
mod meta;
mod open;
mod overlay;
mod prefetch;
mod protocol;
pub(crate) mod qed;
mod requests;
mod sizing;
mod slots;
mod types;

pub use any::{Engine, EngineInfo, ImageFormat, Layout};
pub use cache::PAGE_BYTES;
pub use prefetch::{
    PrefetchFailure, PrefetchMode, PrefetchProgress, PrefetchState, MAX_FINISH_ATTEMPTS,
    MAX_FRUITLESS_PASSES,
};
pub use qed::QUIET_MS;
pub use sizing::{memory_needed, SIZING_LEN};
pub use types::*;

use crate::format::ImageLayout;
use bounce::BouncePool;
use cache::PageCache;
use commit::CommitState;
use open::Lifecycle;
use requests::RequestSlot;
use slots::{CommandSlots, EventQueue};
use zerocopy::FromBytes;

/// Requests in flight at once.
pub const MAX_REQUESTS: usize = 64;
/// Commands in flight (or waiting to be polled) at once.
pub const MAX_COMMANDS: usize = 128;
/// Largest read or write request, bytes (buffers stay addressable on 32-bit hosts).
pub const MAX_DATA_REQUEST: u64 = 1 << 30;
/// Bytes of engine memory holding the header.
pub const HEADER_AREA: usize = 8192;
/// Bytes of engine memory used to build and read journal sectors.
pub const SCRATCH_AREA: usize = 4096;
/// Smallest metadata cache accepted, bytes.
pub const MIN_CACHE: usize = 4 * PAGE_BYTES;
/// Free physical-chunk ranges remembered for reuse.
pub const MAX_FREE_RANGES: usize = 32;

/// Counters a host can read to see what the engine did (for benchmarks and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Guest write-like requests accepted (write, write-zeroes, discard).
    pub guest_writes: u64,
    /// Guest flush requests accepted.
    pub guest_flushes: u64,
    /// Journal sectors written.
    pub journal_sectors: u64,
    /// Journal write commands.
    pub journal_writes: u64,
    /// Commits run (flushes, evictions, close).
    pub commits: u64,
    /// Journal recycles (epoch moves while open).
    pub recycles: u64,
    /// Metadata pages read.
    pub page_loads: u64,
    /// Metadata pages written back to their regions.
    pub page_write_backs: u64,
    /// Copy-on-write base reads.
    pub cow_reads: u64,
    /// Physical chunks allocated (reused ones included).
    pub chunks_allocated: u64,
    /// Copy-on-read fills started.
    pub cor_fills: u64,
    /// Copy-on-read fills that wrote their block into the image.
    pub cor_fills_done: u64,
    /// Copy-on-read fills dropped because a guest write reached the block first.
    pub cor_fills_cancelled: u64,
    /// Blocks copied in by whole-image prefetch.
    pub prefetched_blocks: u64,
}

/// How the host opens an image.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Open for writing (otherwise every write request is refused).
    pub writable: bool,
    /// Length of the image file.
    pub image_len: u64,
    /// Length of the separate data file, when the image names one and the host opened it.
    pub data_len: Option<u64>,
    /// The host opened the base image (needed unless the image has no base or is fully prefetched).
    pub base_available: bool,
    /// Bytes of engine memory for the metadata cache (the rest after header and scratch is
    /// bounce space). At least [`MIN_CACHE`].
    pub cache_bytes: usize,
    /// Space the host adds with [`Op::SetLength`] reads as zeros (true for files).
    pub storage_zero_init: bool,
    /// Copy-on-read: `None` follows the header's `copy_on_read`. Only a writable image
    /// with a base that is still read copies on read.
    pub copy_on_read: Option<bool>,
    /// Whole-image prefetch.
    pub prefetch: PrefetchMode,
}

/// The FVD engine. `M` is its memory; `PAGES` bounds the number of cache pages. Hosts
/// normally use [`Engine`], which picks the format from the image's magic.
pub(crate) struct FvdEngine<M, const PAGES: usize = 256> {
    memory: M,
    options: OpenOptions,
    layout: Option<ImageLayout>,
    lifecycle: Lifecycle,
    requests: [RequestSlot; MAX_REQUESTS],
    request_order: [u16; MAX_REQUESTS],
    active_requests: usize,
    next_seq: u64,
    commands: CommandSlots,
    events: EventQueue,
    cache: PageCache<PAGES>,
    bounce: BouncePool,
    bounce_area: (usize, usize),
    /// Incremented by every metadata change.
    change_gen: u64,
    /// Changes with a smaller generation have durable data.
    durable_gen: u64,
    commit: CommitState,
    alloc: open::Allocator,
    journal_next: u64,
    journal_sectors: u64,
    /// Highest epoch of an intact journal sector of another epoch seen by the replay.
    journal_epoch_seen: u64,
    /// The journal laid over loaded pages (read-only open of a dirty image).
    overlay: overlay::JournalOverlay,
    /// A page load that failed, reported to the next request that wants the page.
    page_error: Option<(cache::PageKey, IoError)>,
    /// A commit or page write-back meant to free cache pages failed: reported to the
    /// next request that needs a free page.
    room_error: Option<IoError>,
    /// Cache slot → its write-back was started to free a page (not by a commit).
    room_write_back: [bool; PAGES],
    /// The one request allowed to keep partial page pins while it waits.
    page_token: Option<u16>,
    failed: bool,
    stats: Stats,
    /// The host's clock, ms, as last given to [`Engine::handle_timeout`].
    now_ms: u64,
    /// When the oldest metadata change not yet committed was made.
    dirty_since_ms: Option<u64>,
    /// The header's `journal_clean_buf_period`: longest time metadata stays uncommitted (0 = until flush).
    clean_period_ms: u64,
    /// Copy-on-read is active for this open.
    copy_on_read: bool,
    /// Most copy-on-read bytes in flight.
    cor_cap: u64,
    /// Copy-on-read bytes in flight.
    fill_bytes: u64,
    prefetch: prefetch::Prefetch,
    /// Flush requests waiting for a commit.
    flushes_waiting: usize,
    /// Requests something happened to since they last could not move (a ready list: a
    /// pump steps only these, unless `wake_all`).
    awake: [bool; MAX_REQUESTS],
    /// Something every waiting request may care about happened (a page arrived, a commit
    /// ended, a write finished, memory or command slots were freed).
    wake_all: bool,
    /// The safety-net full pass already ran since the last movement.
    swept: bool,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Starts opening an image: poll commands and feed completions until
    /// [`Event::Opened`] or [`Event::OpenFailed`].
    pub fn open(memory: M, options: OpenOptions) -> Self {
        let mut engine = FvdEngine {
            memory,
            options,
            layout: None,
            lifecycle: Lifecycle::Start,
            requests: [RequestSlot::FREE; MAX_REQUESTS],
            request_order: [0; MAX_REQUESTS],
            active_requests: 0,
            next_seq: 1,
            commands: CommandSlots::new(),
            events: EventQueue::new(),
            cache: PageCache::new(0, 0),
            bounce: BouncePool::new(0, 0, 0),
            bounce_area: (0, 0),
            change_gen: 1,
            durable_gen: 1,
            commit: CommitState::IDLE,
            alloc: open::Allocator::EMPTY,
            journal_next: 0,
            journal_sectors: 0,
            journal_epoch_seen: 0,
            overlay: overlay::JournalOverlay::NONE,
            page_error: None,
            room_error: None,
            room_write_back: [false; PAGES],
            page_token: None,
            failed: false,
            stats: Stats::default(),
            now_ms: 0,
            dirty_since_ms: None,
            clean_period_ms: 0,
            copy_on_read: false,
            cor_cap: 0,
            fill_bytes: 0,
            prefetch: prefetch::Prefetch::OFF,
            flushes_waiting: 0,
            awake: [false; MAX_REQUESTS],
            wake_all: true,
            swept: false,
        };
        engine.pump();
        engine
    }

    /// The validated layout, once the header has been read.
    pub fn layout(&self) -> Option<&ImageLayout> {
        self.layout.as_ref()
    }

    /// The header as in memory (valid once the header has been read).
    pub(crate) fn header(&self) -> &crate::format::RawHeader {
        crate::format::RawHeader::ref_from_bytes(
            &self.memory.as_ref()[..crate::format::RAW_HEADER_LEN],
        )
        .expect("header area is exactly one header")
    }

    /// The header as in memory, to update the fields the engine rewrites at runtime.
    pub(crate) fn header_mut(&mut self) -> &mut crate::format::RawHeader {
        crate::format::RawHeader::mut_from_bytes(
            &mut self.memory.as_mut()[..crate::format::RAW_HEADER_LEN],
        )
        .expect("header area is exactly one header")
    }

    fn on_complete(&mut self, owner: slots::Owner, op: Op, result: Result<(), IoError>) {
        use slots::Owner;
        // A freed command slot matters to whoever could not emit.
        if self.commands.take_starved() {
            self.wake_all = true;
        }
        match owner {
            Owner::Request(slot) => {
                self.awake[usize::from(slot)] = true;
                self.request_command_done(usize::from(slot), result)
            }
            Owner::PageLoad(slot) => {
                self.wake_all = true;
                self.page_loaded(usize::from(slot), result)
            }
            other => {
                self.wake_all = true;
                match other {
                    Owner::PageWriteBack(slot) => self.page_written(usize::from(slot), result),
                    Owner::Commit => self.commit_command_done(result),
                    Owner::Lifecycle => self.lifecycle_done(result),
                    Owner::Alloc => self.alloc_done(op, result),
                    Owner::Overlay => self.overlay_done(result),
                    Owner::Prefetch => self.prefetch_done(result),
                    Owner::Request(_) | Owner::PageLoad(_) => {}
                }
            }
        }
    }

    /// Runs every state machine until none can move.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = self.step_lifecycle();
            if moved {
                self.wake_all = true;
            }
            if self.step_commit() {
                self.wake_all = true;
                moved = true;
            }
            moved |= self.step_requests();
            if !moved {
                // Safety net: requests waiting with nothing in flight must get a full look.
                if self.active_requests > 0 && self.commands.in_flight() == 0 && !self.swept {
                    self.swept = true;
                    self.wake_all = true;
                    continue;
                }
                return;
            }
            self.swept = false;
        }
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> protocol::FormatEngine
    for FvdEngine<M, PAGES>
{
    fn commands(&mut self) -> &mut CommandSlots {
        &mut self.commands
    }

    fn events(&mut self) -> &mut EventQueue {
        &mut self.events
    }

    fn accept(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        FvdEngine::accept(self, request)
    }

    fn pump(&mut self) {
        FvdEngine::pump(self)
    }

    fn command_done(&mut self, owner: slots::Owner, op: Op, result: Result<(), IoError>) {
        self.on_complete(owner, op, result)
    }

    fn completion_polled(&mut self, id: RequestId) {
        FvdEngine::completion_polled(self, id)
    }

    fn header_bytes(&self) -> &[u8] {
        let memory = self.memory.as_ref();
        memory
            .get(..crate::format::RAW_HEADER_LEN)
            .unwrap_or(memory)
    }

    fn is_open(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Open)
    }

    fn memory(&self) -> &[u8] {
        self.memory.as_ref()
    }

    fn memory_mut(&mut self) -> &mut [u8] {
        self.memory.as_mut()
    }

    fn commands_in_flight(&self) -> usize {
        self.commands.in_flight()
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn cache_pages(&self) -> usize {
        self.cache.capacity()
    }

    fn copy_on_read(&self) -> bool {
        self.copy_on_read
    }

    fn requests_in_flight(&self) -> usize {
        self.active_requests
    }

    /// Used for the header's `journal_clean_buf_period` (metadata changes are committed
    /// at the latest that long after they were made, even without a guest flush) and for
    /// prefetch's pacing.
    fn poll_timeout(&self) -> Option<u64> {
        let clean = match (self.dirty_since_ms, self.clean_period_ms) {
            (Some(since), period) if period > 0 => Some(since.saturating_add(period)),
            _ => None,
        };
        let prefetch = if self.is_open() {
            self.prefetch.deadline()
        } else {
            None
        };
        match (clean, prefetch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now_ms: u64) {
        self.wake_all = true;
        self.now_ms = self.now_ms.max(now_ms);
        let clean_due = matches!((self.dirty_since_ms, self.clean_period_ms),
            (Some(since), period) if period > 0 && self.now_ms >= since.saturating_add(period));
        if clean_due {
            self.commit.wanted = true;
        }
        if self.is_open() {
            self.prefetch.on_time(self.now_ms);
        }
        self.pump();
    }

    /// New requests are refused; once those in flight finish, metadata is written back
    /// and the image marked clean; then [`Event::Closed`].
    fn close(&mut self) {
        self.wake_all = true;
        self.begin_close();
        self.pump();
    }
}
