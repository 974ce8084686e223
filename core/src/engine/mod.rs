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
mod deferred;
mod fill_reader;
pub(crate) mod fvd;
mod guest;
mod protocol;
#[cfg(feature = "qed-engine")]
pub(crate) mod qed;
mod sizing;
mod slot_table;
mod slots;
mod types;

pub use any::{Engine, EngineInfo, ImageFormat, Layout};
pub use cache::PAGE_BYTES;
pub use fvd::prefetch::{
    PrefetchFailure, PrefetchMode, PrefetchProgress, PrefetchState, MAX_FINISH_ATTEMPTS,
    MAX_FRUITLESS_PASSES,
};
#[cfg(feature = "qed-engine")]
pub use qed::QUIET_MS;
pub use sizing::{memory_needed, SIZING_LEN};
pub use types::*;

use fvd::FvdEngine;

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
    /// Guest reads of base blocks that could not start their fill at once (no room): the
    /// blocks were queued to be filled as soon as room frees up.
    pub cor_fills_deferred: u64,
    /// Deferred fills that found the queue full and were dropped (their blocks stay in
    /// the base until read again).
    pub cor_fills_dropped: u64,
    /// Blocks copied in by whole-image prefetch.
    pub prefetched_blocks: u64,
    /// Copy-on-read and prefetch fills whose base blocks were all zero: recorded as zeros
    /// (a zero write, or only the bitmap on an unallocated compact chunk), no data written.
    pub fills_recorded_as_zeros: u64,
    /// Bytes read from the base image (every kind of read: guest, copy-on-write,
    /// copy-on-read, prefetch).
    pub base_read_bytes: u64,
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
    /// After a clean close, release the journal sectors the session wrote with one
    /// [`Op::WriteZeroes`] (`unmap`): they are stale then (FORMAT.md §10.5). Worth it where
    /// the host frees the space (files: a punched hole); a host on raw media, which would
    /// write the zeros, leaves it off (no wear, no time at close).
    pub release_stale_journal: bool,
    /// Copy-on-read: `None` follows the header's `copy_on_read`. Only a writable image
    /// with a base that is still read copies on read.
    pub copy_on_read: Option<bool>,
    /// Whole-image prefetch.
    pub prefetch: PrefetchMode,
}
