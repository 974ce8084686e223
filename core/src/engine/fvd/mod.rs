//! The FVD engine: guest requests on an FVD image from submission to completion
//! ([`requests`], copy-on-read fills in [`fill`] and [`deferred`], whole-image prefetch in
//! [`prefetch`]),
//! the bitmap and table through the page cache ([`meta`]), journal commits ([`commit`]),
//! the image's life from open (validation, journal replay, the allocator's scan) to close
//! ([`open`]), and the read-only view of a dirty image with its journal laid over
//! ([`overlay`]). The shared parts (command slots, page cache, bounce pool, the protocol)
//! are the parent module's.

pub(crate) mod allocator;
pub(crate) mod commit;
pub(crate) mod deferred;
pub(crate) mod fill;
pub(crate) mod meta;
pub(crate) mod open;
pub(crate) mod overlay;
pub(crate) mod prefetch;
pub(crate) mod replay;
pub(crate) mod requests;

use crate::engine::bounce::BouncePool;
use crate::engine::cache::{self, PageCache};
use crate::engine::protocol;
use crate::engine::slot_table::SlotTable;
use crate::engine::slots::{self, CommandSlots, EventQueue};
use crate::engine::types::*;
use crate::engine::{OpenOptions, Stats, MAX_REQUESTS};
use crate::fvd::ImageLayout;
use commit::CommitState;
use open::Lifecycle;
use requests::RequestSlot;
use zerocopy::FromBytes;

/// The FVD engine. `M` is its memory; `PAGES` bounds the number of cache pages. Hosts
/// normally use [`crate::engine::Engine`], which picks the format from the image's magic.
pub(crate) struct FvdEngine<M, const PAGES: usize = 256> {
    memory: M,
    options: OpenOptions,
    layout: Option<ImageLayout>,
    lifecycle: Lifecycle,
    requests: SlotTable<RequestSlot, MAX_REQUESTS>,
    request_order: SlotTable<u16, MAX_REQUESTS>,
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
    alloc: allocator::Allocator,
    journal_next: u64,
    journal_sectors: u64,
    /// The journal's first sectors that may hold sectors written since it was last known
    /// to read as zeros (this session's, or all of it after a replay): a clean close
    /// punches them.
    journal_stale: u64,
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
    room_write_back: SlotTable<bool, PAGES>,
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
    /// Copy-on-read fills waiting for room.
    deferred: crate::engine::deferred::Deferred,
    /// Flush requests waiting for a commit.
    flushes_waiting: usize,
    /// Requests something happened to since they last could not move (a ready list: a
    /// pump steps only these, unless `wake_all`).
    awake: SlotTable<bool, MAX_REQUESTS>,
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
            requests: SlotTable([RequestSlot::FREE; MAX_REQUESTS]),
            request_order: SlotTable([0; MAX_REQUESTS]),
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
            alloc: allocator::Allocator::EMPTY,
            journal_next: 0,
            journal_sectors: 0,
            journal_stale: 0,
            journal_epoch_seen: 0,
            overlay: overlay::JournalOverlay::NONE,
            page_error: None,
            room_error: None,
            room_write_back: SlotTable([false; PAGES]),
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
            deferred: crate::engine::deferred::Deferred::EMPTY,
            flushes_waiting: 0,
            awake: SlotTable([false; MAX_REQUESTS]),
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
    // Only called after open checked that engine memory holds HEADER_AREA bytes or more,
    // and a RawHeader is unaligned with RAW_HEADER_LEN bytes: neither can fail.
    #[allow(clippy::indexing_slicing, clippy::expect_used)]
    pub(crate) fn header(&self) -> &crate::fvd::RawHeader {
        crate::fvd::RawHeader::ref_from_bytes(&self.memory.as_ref()[..crate::fvd::RAW_HEADER_LEN])
            .expect("header area is exactly one header")
    }

    /// The header as in memory, to update the fields the engine rewrites at runtime.
    #[allow(clippy::indexing_slicing, clippy::expect_used)] // as for `header`
    pub(crate) fn header_mut(&mut self) -> &mut crate::fvd::RawHeader {
        crate::fvd::RawHeader::mut_from_bytes(
            &mut self.memory.as_mut()[..crate::fvd::RAW_HEADER_LEN],
        )
        .expect("header area is exactly one header")
    }

    fn on_complete(&mut self, owner: slots::Owner, op: Op, result: Result<(), IoError>) {
        use crate::engine::slots::Owner;
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
            if !self.deferred.is_empty() {
                moved |= self.step_deferred();
            }
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
        memory.get(..crate::fvd::RAW_HEADER_LEN).unwrap_or(memory)
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
        Stats {
            base_read_bytes: self.commands.base_read_bytes(),
            ..self.stats
        }
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
