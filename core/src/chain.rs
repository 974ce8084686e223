//! Images stacked on images: a [`Chain`] drives a stack of engines in which the base of
//! layer `i` is the image of layer `i + 1` (FVD or QED, any depth), so that base reads of
//! an engine are served by the engine below it, never by host code. The host opens one
//! engine per file it finds by name, hands the stack to the chain, and speaks the same
//! protocol as to a single engine: it submits guest requests, polls commands and
//! completes them, polls events. Commands carry the layer whose files they target, and
//! only the last layer's base (a raw file, if it has one) is ever read by the host.
//!
//! A chain is built with an identity per file ([`FileKey`], the host's device and inode
//! or anything else unique) and refuses a file that appears twice (a cycle) or a stack
//! deeper than [`MAX_DEPTH`]. No I/O, no allocation, no format knowledge.

use crate::engine::{
    Buffer, Command, CommandId, Engine, Event, FileId, IoError, Op, Request, RequestError,
    RequestId, SubmitError,
};
use core::fmt;
use core::marker::PhantomData;

/// Most layers a chain stacks (the image and 15 bases below it).
pub const MAX_DEPTH: usize = 16;

/// Base reads in flight across the whole chain at once.
pub const MAX_LINKS: usize = 128;

/// The identity of one file of a chain, chosen by the host (on Unix: device and inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FileKey(pub u128);

/// Why a stack of engines cannot be chained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChainError {
    /// No layer at all.
    Empty,
    /// More layers than [`MAX_DEPTH`].
    TooDeep {
        /// Layers given.
        depth: usize,
    },
    /// Two layers are the same file: the chain would loop.
    Cycle {
        /// The later layer.
        layer: usize,
        /// The earlier layer it repeats.
        same_as: usize,
    },
    /// The number of file keys differs from the number of layers.
    KeysMismatch,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChainError::Empty => write!(f, "a chain needs at least one image"),
            ChainError::TooDeep { depth } => write!(
                f,
                "backing chain of {depth} images is deeper than the {MAX_DEPTH} supported"
            ),
            ChainError::Cycle { layer, same_as } => write!(
                f,
                "backing chain loops: image {layer} of the chain is image {same_as} again"
            ),
            ChainError::KeysMismatch => write!(f, "one file key per image is needed"),
        }
    }
}

/// A command of a chain: what [`Command`] is for one engine, plus the layer that issued
/// it (whose files `file` names) and the layer whose engine memory a
/// [`Buffer::Engine`] in `op` refers to. A [`Buffer::Guest`] always names a request
/// the host submitted to the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChainCommand {
    /// Pass back to [`Chain::complete`].
    pub id: ChainCommandId,
    /// The layer whose file `file` is (`FileId::Base` only for the last layer).
    pub layer: usize,
    /// The file of that layer.
    pub file: FileId,
    /// What to do, buffers already resolved.
    pub op: Op,
    /// The layer whose memory `Buffer::Engine` offsets in `op` refer to.
    pub memory_of: usize,
}

/// Identifies a chain command until the host completes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChainCommandId {
    /// A command of layer `layer`'s engine.
    Engine {
        /// The layer.
        layer: usize,
        /// The engine's id.
        id: CommandId,
    },
    /// The zero-fill of the part of a base read past the end of the layer below.
    Fill {
        /// The link it belongs to.
        link: usize,
    },
}

/// One base read of layer `upper` served by layer `upper + 1`.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// The layer whose base read this is.
    upper: usize,
    /// Its command.
    command: CommandId,
    /// Where the data goes, in layer `upper`'s terms.
    into: Buffer,
    /// Base offset and length read.
    offset: u64,
    len: usize,
    /// Bytes of it the layer below covers (the rest is past its end: zeros).
    covered: usize,
    /// The read of the layer below.
    request: Part,
    /// The zero-fill of the part past the end: not yet polled, polled, done.
    fill: Fill,
    /// Parts still running (request, fill).
    parts: u8,
    /// The first failure among the parts.
    error: Option<IoError>,
}

/// The read a link asks of the layer below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Not submitted yet (the layer below was busy or not open).
    Waiting,
    /// Submitted as this request.
    Running(RequestId),
    /// Finished, or never needed.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    None,
    Due,
    Issued,
}

/// A chain over engines the caller lends (`&mut [Engine]`): firmware keeps them in an
/// array, tests on the stack.
pub type Chain<'e, M, const PAGES: usize = 256> = ChainOf<&'e mut [Engine<M, PAGES>], M, PAGES>;

/// A stack of engines, the image first and each base after the image it serves, held in
/// `L`: a borrowed slice ([`Chain`]), an array, or (for a host with an allocator) a
/// vector the chain owns.
pub struct ChainOf<L, M, const PAGES: usize = 256> {
    layers: L,
    links: [Option<Link>; MAX_LINKS],
    /// A lower layer could not be opened: its error, reported once.
    failed: Option<Event>,
    /// The first lower layer that could not be opened.
    failed_layer: Option<usize>,
    memory: PhantomData<fn() -> M>,
}

impl<L, M, const PAGES: usize> ChainOf<L, M, PAGES>
where
    L: AsRef<[Engine<M, PAGES>]> + AsMut<[Engine<M, PAGES>]>,
    M: AsRef<[u8]> + AsMut<[u8]>,
{
    /// Chains `layers` (each already [`Engine::open`]ed by the host over its own files;
    /// every layer but the last opened with `base_available`), whose files are `keys`.
    pub fn new(layers: L, keys: &[FileKey]) -> Result<Self, ChainError> {
        let depth = layers.as_ref().len();
        if depth == 0 {
            return Err(ChainError::Empty);
        }
        if depth > MAX_DEPTH {
            return Err(ChainError::TooDeep { depth });
        }
        if keys.len() != depth {
            return Err(ChainError::KeysMismatch);
        }
        check_distinct(keys)?;
        Ok(ChainOf {
            layers,
            links: [None; MAX_LINKS],
            failed: None,
            failed_layer: None,
            memory: PhantomData,
        })
    }

    /// The layers, the image first.
    pub fn layers(&self) -> &[Engine<M, PAGES>] {
        self.layers.as_ref()
    }

    /// The first layer below the image whose open failed, if one did (its error is the
    /// chain's [`Event::OpenFailed`]).
    pub fn failed_layer(&self) -> Option<usize> {
        self.failed_layer
    }

    /// Commands for the host that it has not completed yet, polled or not: those of every
    /// layer's engine except the base reads the chain serves itself, plus the chain's
    /// zero-fills. A host that counts the commands it polled has more to poll only while
    /// this exceeds its count, so it need not poll just to hear that there is none.
    pub fn commands_in_flight(&self) -> usize {
        let engines: usize = self
            .layers()
            .iter()
            .map(Engine::commands_in_flight)
            .fold(0, usize::saturating_add);
        if self.layers().len() < 2 {
            // One image: no links, no fills.
            return engines;
        }
        let links = self.links.iter().flatten().count();
        let fills = self
            .links
            .iter()
            .flatten()
            .filter(|l| l.fill != Fill::None)
            .count();
        engines.saturating_sub(links).saturating_add(fills)
    }

    /// Requests in flight in every layer (the chain's reads of lower layers too).
    pub fn requests_in_flight(&self) -> usize {
        self.layers()
            .iter()
            .map(Engine::requests_in_flight)
            .fold(0, usize::saturating_add)
    }

    /// Gives the layers back (their engines as the chain left them).
    pub fn into_layers(self) -> L {
        self.layers
    }

    fn engines_mut(&mut self) -> &mut [Engine<M, PAGES>] {
        self.layers.as_mut()
    }

    /// Engine memory of `layer`, for [`Buffer::Engine`] in a command whose `memory_of`
    /// is `layer`.
    pub fn memory(&self, layer: usize) -> &[u8] {
        self.layers().get(layer).map_or(&[], |e| e.memory())
    }

    /// Engine memory of `layer`, mutably (the host fills it for reads).
    pub fn memory_mut(&mut self, layer: usize) -> &mut [u8] {
        match self.engines_mut().get_mut(layer) {
            Some(engine) => engine.memory_mut(),
            None => &mut [],
        }
    }

    /// Submits a guest request to the image (layer 0).
    pub fn submit(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        let top = self.engines_mut().first_mut().ok_or(SubmitError::NotOpen)?;
        top.submit(request)
    }

    /// Starts closing every layer; [`Event::Closed`] comes when the image has closed.
    pub fn close(&mut self) {
        for layer in self.engines_mut().iter_mut() {
            layer.close();
        }
    }

    /// When the host should call [`Chain::handle_timeout`] next, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.layers().iter().filter_map(|e| e.poll_timeout()).min()
    }

    /// Tells every layer the time (ms).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        for layer in self.engines_mut().iter_mut() {
            layer.handle_timeout(now_ms);
        }
    }

    /// The next command for the host, if any: base reads between layers are handled
    /// inside the chain and never show here.
    pub fn poll_command(&mut self) -> Option<ChainCommand> {
        for _ in 0..MAX_LINKS.saturating_add(MAX_DEPTH) {
            self.settle();
            if let Some(command) = self.next_fill() {
                return Some(command);
            }
            let mut forwarded = false;
            for layer in 0..self.layers().len() {
                let last = layer + 1 == self.layers().len();
                if !last && !self.link_free() {
                    // A base read would need a link: wait for one to finish.
                    continue;
                }
                let Some(command) = self
                    .engines_mut()
                    .get_mut(layer)
                    .and_then(|e| e.poll_command())
                else {
                    continue;
                };
                if command.file == FileId::Base && !last {
                    self.link(layer, command);
                    forwarded = true;
                    break;
                }
                return Some(self.resolve(layer, command));
            }
            if !forwarded {
                return None;
            }
        }
        None
    }

    /// Reports the outcome of command `id`.
    pub fn complete(&mut self, id: ChainCommandId, result: Result<(), IoError>) {
        match id {
            ChainCommandId::Engine { layer, id } => {
                if let Some(engine) = self.engines_mut().get_mut(layer) {
                    engine.complete(id, result);
                }
            }
            ChainCommandId::Fill { link } => {
                if let Some(Some(l)) = self.links.get_mut(link) {
                    if l.fill == Fill::Issued {
                        l.fill = Fill::None;
                        l.parts = l.parts.saturating_sub(1);
                        if let Err(e) = result {
                            l.error.get_or_insert(e);
                        }
                    }
                }
                self.finish_links();
            }
        }
        self.settle();
    }

    /// The next event of the image, if any. A lower layer that cannot be opened makes the
    /// chain fail with its error.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.settle();
        if let Some(event) = self.failed.take() {
            return Some(event);
        }
        self.engines_mut().first_mut()?.poll_event()
    }

    /// Handles what the lower layers did: open failures, completions of base reads.
    fn settle(&mut self) {
        if self.layers().len() < 2 {
            // One image: no layer below, so no link is ever made.
            return;
        }
        for _ in 0..MAX_DEPTH.saturating_mul(4) {
            let mut moved = false;
            for layer in 1..self.layers().len() {
                while let Some(event) = self
                    .engines_mut()
                    .get_mut(layer)
                    .and_then(|e| e.poll_event())
                {
                    moved = true;
                    match event {
                        Event::OpenFailed(error) => {
                            self.failed.get_or_insert(Event::OpenFailed(error));
                            self.failed_layer.get_or_insert(layer);
                            self.fail_links_of(layer);
                        }
                        Event::Completed { id, result } => self.lower_done(layer, id, result),
                        _ => {}
                    }
                }
            }
            moved |= self.submit_links();
            moved |= self.finish_links();
            if !moved {
                return;
            }
        }
    }

    fn link_free(&self) -> bool {
        self.links.iter().any(Option::is_none)
    }

    /// Takes base read `command` of `layer` in: it becomes a read request on the layer
    /// below (submitted as soon as that layer takes it) and, for a part past that layer's
    /// end, a zero-fill.
    fn link(&mut self, layer: usize, command: Command) {
        let reply = |chain: &mut Self, error: IoError| {
            if let Some(engine) = chain.engines_mut().get_mut(layer) {
                engine.complete(command.id, Err(error));
            }
        };
        let Op::Read { offset, len, into } = command.op else {
            // Bases are only read.
            return reply(self, IoError::Unsupported);
        };
        let below_size = self
            .layers()
            .get(layer.saturating_add(1))
            .and_then(|e| e.virtual_size());
        let covered = match below_size {
            Some(size) => {
                let room = size.saturating_sub(offset);
                usize::try_from(room).unwrap_or(usize::MAX).min(len)
            }
            // Not open yet: the request waits for it.
            None => len,
        };
        let Some(slot) = self.links.iter().position(Option::is_none) else {
            return reply(self, IoError::Failed);
        };
        let fill = if covered < len { Fill::Due } else { Fill::None };
        let request = if covered > 0 {
            Part::Waiting
        } else {
            Part::Done
        };
        let parts = u8::from(covered > 0) + u8::from(fill == Fill::Due);
        if let Some(entry) = self.links.get_mut(slot) {
            *entry = Some(Link {
                upper: layer,
                command: command.id,
                into,
                offset,
                len,
                covered,
                request,
                fill,
                parts,
                error: None,
            });
        }
    }

    /// Submits the linked reads the layers below will take now. True when one moved.
    fn submit_links(&mut self) -> bool {
        let mut moved = false;
        for slot in 0..MAX_LINKS {
            let Some(Some(link)) = self.links.get(slot).copied() else {
                continue;
            };
            if link.request != Part::Waiting {
                continue;
            }
            let below = link.upper.saturating_add(1);
            let Some(engine) = self.engines_mut().get_mut(below) else {
                continue;
            };
            let request = Request::Read {
                offset: link.offset,
                len: link.covered as u64,
            };
            match engine.submit(request) {
                Ok(id) => {
                    if let Some(Some(l)) = self.links.get_mut(slot) {
                        l.request = Part::Running(id);
                    }
                    moved = true;
                }
                // Not open yet, or no room: try again later.
                Err(SubmitError::NotOpen | SubmitError::Busy) if self.failed.is_none() => {}
                Err(_) => {
                    if let Some(Some(l)) = self.links.get_mut(slot) {
                        l.error.get_or_insert(IoError::Failed);
                        l.request = Part::Done;
                        l.parts = l.parts.saturating_sub(1);
                    }
                    moved = true;
                }
            }
        }
        moved
    }

    /// A read request of `layer` (made by the chain) completed.
    fn lower_done(
        &mut self,
        layer: usize,
        id: RequestId,
        result: Result<crate::engine::Reply, RequestError>,
    ) {
        let found = self
            .links
            .iter_mut()
            .flatten()
            .find(|l| l.upper.saturating_add(1) == layer && l.request == Part::Running(id));
        if let Some(link) = found {
            link.parts = link.parts.saturating_sub(1);
            link.request = Part::Done;
            if let Err(error) = result {
                link.error.get_or_insert(match error {
                    RequestError::Io(e) => e,
                    _ => IoError::Failed,
                });
            }
        }
    }

    /// Fails every base read waiting on `layer`.
    fn fail_links_of(&mut self, layer: usize) {
        for link in self.links.iter_mut().flatten() {
            if link.upper.saturating_add(1) == layer && link.request == Part::Waiting {
                link.error.get_or_insert(IoError::Failed);
                link.request = Part::Done;
                link.parts = link.parts.saturating_sub(1);
            }
        }
    }

    /// Completes the upper commands whose parts have all finished. True when one did.
    fn finish_links(&mut self) -> bool {
        let mut moved = false;
        for slot in self.links.iter_mut() {
            let Some(link) = *slot else { continue };
            if link.parts > 0 || link.fill != Fill::None {
                continue;
            }
            *slot = None;
            moved = true;
            if let Some(engine) = self.layers.as_mut().get_mut(link.upper) {
                let result = match link.error {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                engine.complete(link.command, result);
            }
        }
        moved
    }

    /// The zero-fill of a link whose read reaches past the end of the layer below.
    fn next_fill(&mut self) -> Option<ChainCommand> {
        if self.layers().len() < 2 {
            return None;
        }
        let slot = self
            .links
            .iter()
            .position(|l| l.is_some_and(|l| l.fill == Fill::Due))?;
        let link = self.links.get_mut(slot)?.as_mut()?;
        link.fill = Fill::Issued;
        let (upper, into, covered, len) = (link.upper, link.into, link.covered, link.len);
        let fill = Op::ZeroBuffer {
            into: shifted(into, covered),
            len: len.saturating_sub(covered),
        };
        let (op, memory_of) = self.resolve_op(upper, fill);
        Some(ChainCommand {
            id: ChainCommandId::Fill { link: slot },
            layer: upper,
            file: FileId::Image,
            op,
            memory_of,
        })
    }

    /// Rewrites the buffers of `command` of `layer` until they name a guest request of
    /// the chain or some layer's engine memory.
    fn resolve(&self, layer: usize, command: Command) -> ChainCommand {
        let (op, memory_of) = self.resolve_op(layer, command.op);
        ChainCommand {
            id: ChainCommandId::Engine {
                layer,
                id: command.id,
            },
            layer,
            file: command.file,
            op,
            memory_of,
        }
    }

    /// `op` of `layer` with its buffer resolved, and the layer whose memory it names.
    fn resolve_op(&self, layer: usize, op: Op) -> (Op, usize) {
        match op {
            Op::Read { offset, len, into } => {
                let (into, at) = self.resolve_buffer(layer, into);
                (Op::Read { offset, len, into }, at)
            }
            Op::ZeroBuffer { into, len } => {
                let (into, at) = self.resolve_buffer(layer, into);
                (Op::ZeroBuffer { into, len }, at)
            }
            // Writes and copies come from the image's own engine only (lower layers are
            // read-only and never copy on read): their buffers are already the host's.
            other => (other, layer),
        }
    }

    /// Follows a buffer of `layer` up through the links that made its requests.
    fn resolve_buffer(&self, layer: usize, buffer: Buffer) -> (Buffer, usize) {
        let (mut layer, mut buffer) = (layer, buffer);
        for _ in 0..MAX_DEPTH {
            let Buffer::Guest { request, offset } = buffer else {
                return (buffer, layer);
            };
            if layer == 0 {
                return (buffer, 0);
            }
            let link = self.links.iter().flatten().find(|l| {
                l.upper.saturating_add(1) == layer && l.request == Part::Running(request)
            });
            match link {
                Some(link) => {
                    buffer = shifted(link.into, offset);
                    layer = link.upper;
                }
                None => return (buffer, layer),
            }
        }
        (buffer, layer)
    }
}

/// `buffer` moved `by` bytes on.
fn shifted(buffer: Buffer, by: usize) -> Buffer {
    match buffer {
        Buffer::Guest { request, offset } => Buffer::Guest {
            request,
            offset: offset.saturating_add(by),
        },
        Buffer::Engine { offset } => Buffer::Engine {
            offset: offset.saturating_add(by),
        },
    }
}

/// Refuses a key that appears twice.
fn check_distinct(keys: &[FileKey]) -> Result<(), ChainError> {
    for (layer, key) in keys.iter().enumerate() {
        if let Some(same_as) = keys.iter().take(layer).position(|k| k == key) {
            return Err(ChainError::Cycle { layer, same_as });
        }
    }
    Ok(())
}
