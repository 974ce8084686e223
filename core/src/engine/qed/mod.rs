//! The QED engine: QEMU Enhanced Disk images behind the same sans-IO protocol as the FVD
//! engine (same requests, commands, completions and events), sharing its command slots,
//! page cache and bounce pool.
//!
//! What it owns: the L1/L2 lookup through 512-byte cache pages ([`meta`]), guest requests
//! from submission to completion ([`requests`]), writes with cluster allocation at the
//! end of the file and copy-on-write from the backing file ([`writes`]), copy-on-read
//! fills ([`fill`]), and the
//! image's life: open with the consistency check and repair an image marked need-check
//! gets, the need-check bit itself, commits and close ([`lifecycle`]).
//!
//! Crash rules (stricter than QEMU's, which writes an L2 entry without first flushing the
//! data it points to): a table entry is changed in the cache only after the commands it
//! depends on completed (data written, file grown), and a changed page is written back
//! only after a flush that started after the change — so the image on disk never points
//! at data that is not durable, and a power cut can leave leaked clusters at worst. The
//! need-check bit is still set (and flushed) before the first metadata change and cleared
//! once everything is durable and no allocation happened for [`QUIET_MS`], as QEMU does.

mod fill;
mod lifecycle;
mod meta;
mod requests;
mod writes;

use super::bounce::BouncePool;
use super::cache::PageCache;
use super::protocol::FormatEngine;
use super::slot_table::SlotTable;
use super::slots::{CommandSlots, EventQueue, Owner};
use super::types::*;
use super::{OpenOptions, Stats, MAX_REQUESTS};
use crate::qed::QedLayout;
use lifecycle::{CommitState, HeaderState, Phase};
use requests::{Req, State};

// `reserving` keeps one bit per request slot.
static_assertions::const_assert!(MAX_REQUESTS <= 64);

/// L1 entries remembered outside the page cache.
const L1_MEMO: usize = 8;

/// How long (ms of the host's clock) metadata must stay unchanged before the need-check
/// bit is cleared (QEMU's 5 seconds).
pub const QUIET_MS: u64 = 5000;

/// The QED engine. `M` is its memory; `PAGES` bounds the number of cache pages. Hosts
/// normally use [`super::Engine`], which picks the format from the magic.
pub(crate) struct QedEngine<M, const PAGES: usize = 256> {
    memory: M,
    options: OpenOptions,
    layout: Option<QedLayout>,
    phase: Phase,
    requests: SlotTable<Req, MAX_REQUESTS>,
    active: usize,
    next_seq: u64,
    commands: CommandSlots,
    events: EventQueue,
    cache: PageCache<PAGES>,
    bounce: BouncePool,
    /// Bytes of one bounce slot.
    bounce_len: u64,
    /// L1 entries last read or set, by index modulo the memo size: a request then needs
    /// only its L2 page resident, so a small cache does not thrash between the two.
    l1_memo: [Option<(u64, u64)>; L1_MEMO],
    /// The request being stepped: pages it starts loading are reserved for it until its
    /// next step, so requests stepped before it cannot evict them first.
    stepping: Option<u16>,
    /// Cache slot → request a loaded page is reserved for.
    reserved: SlotTable<Option<u16>, PAGES>,
    /// A page load that failed, reported to the next request that wants the page.
    page_error: Option<(super::cache::PageKey, IoError)>,
    /// A commit or page write-back meant to free cache pages failed: reported to the
    /// next request that needs a free page.
    room_error: Option<IoError>,
    /// Cache slot → its write-back was started to free a page (not by a commit).
    room_write_back: SlotTable<bool, PAGES>,
    /// File length as far as completed growth goes.
    file_len: u64,
    /// End of the space handed out to allocations (beyond `file_len` while growth is due).
    alloc_end: u64,
    /// A length change is in flight.
    growing: bool,
    /// The request creating an L2 table (one at a time).
    table_alloc: Option<usize>,
    /// Generation of metadata changes (page `change_gen`); a commit moves it on.
    change_gen: u64,
    /// Pages changed at a smaller generation may be written back: their data is durable.
    durable_gen: u64,
    commit: CommitState,
    /// A page write-back (by eviction or commit) completed since the last metadata flush
    /// was emitted: the next guest flush must flush again.
    meta_unflushed: bool,
    header: HeaderState,
    /// The need-check bit as on disk (or being written).
    need_check_on_disk: bool,
    /// A request entered the need-check gate since the bit was last set.
    need_check_wanted: bool,
    /// Requests holding reserved pages (bit per request slot).
    reserving: u64,
    /// Open-time check: next L1 index, next L2 entry, entries repaired.
    check: lifecycle::Check,
    stats: Stats,
    now_ms: u64,
    /// The last metadata change, ms (for clearing need-check after a quiet period).
    last_change_ms: u64,
    copy_on_read: bool,
    cor_cap: u64,
    /// Copy-on-read fills waiting for room.
    deferred: super::deferred::Deferred,
    fill_bytes: u64,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    /// Starts opening a QED image: poll commands and feed completions until
    /// [`Event::Opened`] or [`Event::OpenFailed`].
    pub fn open(memory: M, options: OpenOptions) -> Self {
        let mut engine = QedEngine {
            memory,
            options,
            layout: None,
            phase: Phase::Start,
            requests: SlotTable([Req::FREE; MAX_REQUESTS]),
            active: 0,
            next_seq: 1,
            commands: CommandSlots::new(),
            events: EventQueue::new(),
            cache: PageCache::new(0, 0),
            bounce: BouncePool::new(0, 0, 0),
            bounce_len: 0,
            l1_memo: [None; L1_MEMO],
            stepping: None,
            reserved: SlotTable([None; PAGES]),
            page_error: None,
            room_error: None,
            room_write_back: SlotTable([false; PAGES]),
            file_len: options.image_len,
            alloc_end: 0,
            growing: false,
            table_alloc: None,
            change_gen: 1,
            durable_gen: 1,
            commit: CommitState::IDLE,
            meta_unflushed: false,
            header: HeaderState::Idle,
            need_check_on_disk: false,
            need_check_wanted: false,
            reserving: 0,
            check: lifecycle::Check::START,
            stats: Stats::default(),
            now_ms: 0,
            last_change_ms: 0,
            copy_on_read: false,
            cor_cap: 0,
            deferred: super::deferred::Deferred::EMPTY,
            fill_bytes: 0,
        };
        engine.pump();
        engine
    }

    /// The validated layout, once the header has been read.
    pub fn layout(&self) -> Option<&QedLayout> {
        self.layout.as_ref()
    }

    /// Table entries the open-time check found invalid (and, when writable, reset).
    pub fn repaired_entries(&self) -> u64 {
        self.check.repaired
    }

    /// True while the need-check bit is set on disk.
    pub fn need_check(&self) -> bool {
        self.need_check_on_disk
    }

    /// Runs every state machine until none can move.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = self.step_lifecycle();
            moved |= self.step_commit();
            moved |= self.step_header();
            moved |= self.step_requests();
            if !self.deferred.is_empty() {
                moved |= self.step_deferred();
            }
            if !moved {
                return;
            }
        }
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FormatEngine for QedEngine<M, PAGES> {
    fn commands(&mut self) -> &mut CommandSlots {
        &mut self.commands
    }

    fn events(&mut self) -> &mut EventQueue {
        &mut self.events
    }

    fn accept(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        QedEngine::accept(self, request)
    }

    fn pump(&mut self) {
        QedEngine::pump(self)
    }

    fn command_done(&mut self, owner: Owner, op: Op, result: Result<(), IoError>) {
        self.commands.take_starved();
        match owner {
            Owner::Request(slot) => self.request_command_done(usize::from(slot), op, result),
            Owner::PageLoad(slot) => self.page_loaded(usize::from(slot), result),
            Owner::PageWriteBack(slot) => self.page_written(usize::from(slot), result),
            Owner::Commit => self.commit_command_done(result),
            Owner::Lifecycle => self.lifecycle_done(result),
            Owner::Alloc => self.grown(op, result),
            Owner::Overlay | Owner::Prefetch => {}
        }
    }

    fn completion_polled(&mut self, id: RequestId) {
        if let Some(r) = self.requests.get_mut(id.slot()) {
            if r.generation == id.generation && r.state == State::Done {
                r.state = State::Free;
            }
        }
    }

    /// The first sector of the image as in memory (the header, then the start of the
    /// backing file name).
    fn header_bytes(&self) -> &[u8] {
        let memory = self.memory.as_ref();
        memory.get(..lifecycle::HEADER_SECTOR).unwrap_or(memory)
    }

    fn is_open(&self) -> bool {
        self.phase == Phase::Open
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

    fn requests_in_flight(&self) -> usize {
        self.active
    }

    /// `chunks_allocated` counts clusters and L2 tables.
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

    /// The end of the quiet period after which the need-check bit is cleared. Once that
    /// time has been handed in, what remains (a commit, the header write) is driven by
    /// completions, so a passed deadline is not reported again.
    fn poll_timeout(&self) -> Option<u64> {
        let deadline = self.last_change_ms.saturating_add(QUIET_MS);
        let waiting = self.need_check_on_disk && self.phase == Phase::Open;
        (waiting && deadline > self.now_ms).then_some(deadline)
    }

    fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.pump();
    }

    /// New requests are refused; once those in flight finish, metadata is written back
    /// and the need-check bit cleared; then [`Event::Closed`].
    fn close(&mut self) {
        self.begin_close();
        self.pump();
    }
}
