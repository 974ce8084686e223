//! The engine hosts use: one type for every image format. It reads the first sector of
//! the image, picks the FVD or the QED engine by the magic, and from then on forwards
//! every call, so a host (CLI, browser, firmware) holds no format-specific code.

use super::protocol::{self, FormatEngine};
#[cfg(feature = "qed-engine")]
use super::qed::QedEngine;
use super::slots::EventQueue;
use super::types::{
    Buffer, Command, CommandId, Event, FileId, IoError, Op, OpenError, Request, RequestId,
    SubmitError,
};
use super::{FvdEngine, OpenOptions, PrefetchProgress, Stats};
use crate::probe::{probe, Probe, PROBE_LEN};

/// The image formats the engine serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageFormat {
    /// Fast Virtual Disk.
    Fvd,
    /// QEMU Enhanced Disk.
    Qed,
}

impl ImageFormat {
    /// The format whose magic starts `bytes`, if any.
    pub fn probe(bytes: &[u8]) -> Option<Self> {
        match probe(bytes) {
            Probe::Fvd => Some(ImageFormat::Fvd),
            Probe::Qed => Some(ImageFormat::Qed),
            _ => None,
        }
    }

    /// The name qemu-img uses.
    pub const fn name(self) -> &'static str {
        match self {
            ImageFormat::Fvd => "fvd",
            ImageFormat::Qed => "qed",
        }
    }
}

/// An engine that only reports that `format`'s engine is not in this build.
#[cfg(not(feature = "qed-engine"))]
fn not_built<M, const PAGES: usize>(memory: M, format: ImageFormat) -> Inner<M, PAGES> {
    let mut events = EventQueue::new();
    events.push(Event::OpenFailed(OpenError::FormatNotBuilt(format)));
    Inner::Failed { memory, events }
}

/// Command slot of the probe read: outside every engine's slot range, so a late or
/// repeated completion of it is ignored once an engine has taken over.
const PROBE_SLOT: u16 = u16::MAX;

// The engines are large by design (fixed-capacity tables, no allocation); the small
// variants only live for the probe, and there is one value per open image.
#[allow(clippy::large_enum_variant)]
enum Inner<M, const PAGES: usize> {
    /// Reading the first sector: `issued` once the host polled the read.
    Probing {
        memory: M,
        options: OpenOptions,
        issued: bool,
    },
    /// The probe failed; the engine only reports it.
    Failed {
        memory: M,
        events: EventQueue,
    },
    Fvd(FvdEngine<M, PAGES>),
    #[cfg(feature = "qed-engine")]
    Qed(QedEngine<M, PAGES>),
    /// Only while switching from probing to an engine.
    Switching,
}

/// A format's validated layout, as the engine serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// An FVD image's layout.
    Fvd(crate::fvd::ImageLayout),
    /// A QED image's layout.
    Qed(crate::qed::QedLayout),
}

/// What [`Engine::info`] reports: one value for every format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineInfo {
    /// The format.
    pub format: ImageFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The format's validated layout (its header's numbers, checked).
    pub layout: Layout,
    /// Copy-on-read is active for this open.
    pub copy_on_read: bool,
    /// Metadata pages the cache holds.
    pub cache_pages: usize,
    /// Physical chunks the open found leaked and queues for reuse (FVD; 0 for QED).
    pub leaked: u64,
    /// The QED need-check bit is set on disk (false for FVD).
    pub need_check: bool,
    /// Table entries the QED open-time check reset (0 for FVD).
    pub repaired_entries: u64,
    /// Whole-image prefetch progress (FVD; off for QED).
    pub prefetch: PrefetchProgress,
    /// What the engine did so far.
    pub stats: Stats,
}

/// The engine for any supported format. `M` is its memory; `PAGES` bounds the number of
/// metadata cache pages. The protocol: [`Engine::submit`] requests, [`Engine::poll_command`]
/// and perform commands, [`Engine::complete`] them, [`Engine::poll_event`] for what
/// happened, [`Engine::poll_timeout`] / [`Engine::handle_timeout`] for time.
pub struct Engine<M, const PAGES: usize = 256> {
    inner: Inner<M, PAGES>,
}

/// Forwards a call to whichever format engine runs, or evaluates `$otherwise`.
macro_rules! forward {
    ($self:ident, $e:ident => $call:expr, $otherwise:expr) => {
        match &$self.inner {
            Inner::Fvd($e) => $call,
            #[cfg(feature = "qed-engine")]
            Inner::Qed($e) => $call,
            _ => $otherwise,
        }
    };
}

macro_rules! forward_mut {
    ($self:ident, $e:ident => $call:expr, $otherwise:expr) => {
        match &mut $self.inner {
            Inner::Fvd($e) => $call,
            #[cfg(feature = "qed-engine")]
            Inner::Qed($e) => $call,
            _ => $otherwise,
        }
    };
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> Engine<M, PAGES> {
    /// Starts opening an image of whichever format its magic names (FVD when it names
    /// none, so a foreign file gets FVD's "bad magic" error). Poll commands and feed
    /// completions until [`Event::Opened`] or [`Event::OpenFailed`].
    pub fn open(memory: M, options: OpenOptions) -> Self {
        Engine {
            inner: Inner::Probing {
                memory,
                options,
                issued: false,
            },
        }
    }

    /// Starts opening an image of a format the host already knows (no probe read).
    pub fn open_as(format: ImageFormat, memory: M, options: OpenOptions) -> Self {
        Engine {
            inner: match format {
                ImageFormat::Fvd => Inner::Fvd(FvdEngine::open(memory, options)),
                #[cfg(feature = "qed-engine")]
                ImageFormat::Qed => Inner::Qed(QedEngine::open(memory, options)),
                #[cfg(not(feature = "qed-engine"))]
                ImageFormat::Qed => not_built(memory, ImageFormat::Qed),
            },
        }
    }

    /// The format being served (`None` while probing or after the probe failed).
    pub fn format(&self) -> Option<ImageFormat> {
        match self.inner {
            Inner::Fvd(_) => Some(ImageFormat::Fvd),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(_) => Some(ImageFormat::Qed),
            _ => None,
        }
    }

    /// What the engine serves, once the header has been read: the format, its validated
    /// layout and the facts a host shows (the same query for every format).
    pub fn info(&self) -> Option<EngineInfo> {
        let stats = self.stats();
        match &self.inner {
            Inner::Fvd(e) => e.layout().map(|layout| EngineInfo {
                format: ImageFormat::Fvd,
                virtual_size: layout.virtual_size,
                layout: Layout::Fvd(*layout),
                copy_on_read: e.copy_on_read(),
                cache_pages: e.cache_pages(),
                leaked: e.leaked_chunks(),
                need_check: false,
                repaired_entries: 0,
                prefetch: e.prefetch_progress(),
                stats,
            }),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.layout().map(|layout| EngineInfo {
                format: ImageFormat::Qed,
                virtual_size: layout.image_size,
                layout: Layout::Qed(*layout),
                copy_on_read: e.copy_on_read(),
                cache_pages: e.cache_pages(),
                leaked: 0,
                need_check: e.need_check(),
                repaired_entries: e.repaired_entries(),
                prefetch: PrefetchProgress::default(),
                stats,
            }),
            _ => None,
        }
    }

    /// The guest-visible size in bytes, once the header has been read.
    pub fn virtual_size(&self) -> Option<u64> {
        match &self.inner {
            Inner::Fvd(e) => e.layout().map(|l| l.virtual_size),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.layout().map(|l| l.image_size),
            _ => None,
        }
    }

    /// Submits a guest request. Its buffer (for reads and writes) must stay valid until
    /// its [`Event::Completed`].
    pub fn submit(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        forward_mut!(self, e => protocol::submit(e, request), Err(SubmitError::NotOpen))
    }

    /// The next command to perform, if any.
    pub fn poll_command(&mut self) -> Option<Command> {
        match &mut self.inner {
            Inner::Probing { memory, issued, .. } if !*issued => {
                *issued = true;
                if memory.as_ref().len() < PROBE_LEN {
                    // Reported by the completion: no read needed to know it fails.
                    return Some(Command {
                        id: probe_id(),
                        file: FileId::Image,
                        op: Op::ZeroBuffer {
                            into: Buffer::Engine { offset: 0 },
                            len: 0,
                        },
                    });
                }
                Some(Command {
                    id: probe_id(),
                    file: FileId::Image,
                    op: Op::Read {
                        offset: 0,
                        len: PROBE_LEN,
                        into: Buffer::Engine { offset: 0 },
                    },
                })
            }
            Inner::Fvd(e) => protocol::poll_command(e),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => protocol::poll_command(e),
            _ => None,
        }
    }

    /// Reports the outcome of command `id`. For reads into engine memory, fill the memory
    /// first. Unknown or repeated ids are ignored.
    pub fn complete(&mut self, id: CommandId, result: Result<(), IoError>) {
        match &mut self.inner {
            Inner::Probing { issued: true, .. } if id == probe_id() => self.probed(result),
            Inner::Fvd(e) => protocol::complete(e, id, result),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => protocol::complete(e, id, result),
            _ => {}
        }
    }

    fn probed(&mut self, result: Result<(), IoError>) {
        let Inner::Probing {
            memory, options, ..
        } = core::mem::replace(&mut self.inner, Inner::Switching)
        else {
            return;
        };
        let given = memory.as_ref().len();
        let failure = match result {
            _ if given < PROBE_LEN => Some(OpenError::MemoryTooSmall {
                given,
                needed: PROBE_LEN,
            }),
            Err(error) => Some(OpenError::Io(error)),
            Ok(()) => None,
        };
        self.inner = match failure {
            Some(error) => {
                let mut events = EventQueue::new();
                events.push(Event::OpenFailed(error));
                Inner::Failed { memory, events }
            }
            None => {
                match ImageFormat::probe(memory.as_ref().get(..PROBE_LEN).unwrap_or_default()) {
                    #[cfg(feature = "qed-engine")]
                    Some(ImageFormat::Qed) => Inner::Qed(QedEngine::open(memory, options)),
                    #[cfg(not(feature = "qed-engine"))]
                    Some(ImageFormat::Qed) => not_built(memory, ImageFormat::Qed),
                    _ => Inner::Fvd(FvdEngine::open(memory, options)),
                }
            }
        };
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::Failed { events, .. } => events.pop(),
            Inner::Fvd(e) => protocol::poll_event(e),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => protocol::poll_event(e),
            _ => None,
        }
    }

    /// When the host should call [`Engine::handle_timeout`] next (its clock, ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        forward!(self, e => e.poll_timeout(), None)
    }

    /// Tells the engine the time (ms on any monotonic clock of the host's choosing).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        forward_mut!(self, e => e.handle_timeout(now_ms), ())
    }

    /// Starts closing: new requests are refused; once those in flight finish, metadata is
    /// written back and the image marked clean (FVD) or its need-check bit cleared (QED);
    /// then [`Event::Closed`].
    pub fn close(&mut self) {
        forward_mut!(self, e => e.close(), ())
    }

    /// True once open succeeded and until close starts.
    pub fn is_open(&self) -> bool {
        forward!(self, e => e.is_open(), false)
    }

    /// Engine memory, for commands whose buffer is [`Buffer::Engine`].
    pub fn memory(&self) -> &[u8] {
        match &self.inner {
            Inner::Probing { memory, .. } | Inner::Failed { memory, .. } => memory.as_ref(),
            Inner::Fvd(e) => e.memory(),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.memory(),
            Inner::Switching => &[],
        }
    }

    /// Engine memory, mutably: the host fills it for reads into [`Buffer::Engine`].
    pub fn memory_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Probing { memory, .. } | Inner::Failed { memory, .. } => memory.as_mut(),
            Inner::Fvd(e) => e.memory_mut(),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.memory_mut(),
            Inner::Switching => &mut [],
        }
    }

    /// The header bytes as in memory (valid once the header has been read).
    pub fn header_bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Fvd(e) => e.header_bytes(),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.header_bytes(),
            _ => &[],
        }
    }

    /// Commands emitted and not yet completed (polled or not).
    pub fn commands_in_flight(&self) -> usize {
        match &self.inner {
            // The probe read counts from the start: it is emitted at open.
            Inner::Probing { .. } => 1,
            Inner::Fvd(e) => e.commands_in_flight(),
            #[cfg(feature = "qed-engine")]
            Inner::Qed(e) => e.commands_in_flight(),
            _ => 0,
        }
    }

    /// Requests submitted and not yet completed.
    pub fn requests_in_flight(&self) -> usize {
        forward!(self, e => e.requests_in_flight(), 0)
    }

    /// What the engine did so far.
    pub fn stats(&self) -> Stats {
        forward!(self, e => e.stats(), Stats::default())
    }

    /// Metadata pages the cache holds (valid once the header has been read).
    pub fn cache_pages(&self) -> usize {
        forward!(self, e => e.cache_pages(), 0)
    }

    /// True when copy-on-read is active for this open.
    pub fn copy_on_read(&self) -> bool {
        forward!(self, e => e.copy_on_read(), false)
    }

    /// Whole-image prefetch progress (FVD only; a QED image reports prefetch off).
    pub fn prefetch_progress(&self) -> PrefetchProgress {
        match &self.inner {
            Inner::Fvd(e) => e.prefetch_progress(),
            _ => PrefetchProgress::default(),
        }
    }

    /// Physical chunks (FVD) or clusters (QED) the open found unused.
    pub fn leaked_chunks(&self) -> u64 {
        match &self.inner {
            Inner::Fvd(e) => e.leaked_chunks(),
            _ => 0,
        }
    }
}

const fn probe_id() -> CommandId {
    CommandId {
        slot: PROBE_SLOT,
        generation: 0,
    }
}
