//! The protocol every host speaks, written once for every format: submit a request, poll
//! commands, report their completions, poll events, hand in the time. A format engine
//! (FVD, QED) implements [`FormatEngine`] — how it accepts a request, what a finished
//! command means to it, how it steps its state machines — and [`super::Engine`] drives
//! whichever one serves the image through the functions here. Nothing here knows a
//! format.

use super::slots::{CommandSlots, EventQueue, Owner};
use super::types::{Command, CommandId, Event, IoError, Op, Request, RequestId, SubmitError};
use super::Stats;

/// What a format engine gives the protocol.
pub(crate) trait FormatEngine {
    /// The engine's command slots.
    fn commands(&mut self) -> &mut CommandSlots;
    /// The engine's event queue.
    fn events(&mut self) -> &mut EventQueue;
    /// Takes a request in (checks it, gives it a slot); does not step anything.
    fn accept(&mut self, request: Request) -> Result<RequestId, SubmitError>;
    /// Runs every state machine until none can move.
    fn pump(&mut self);
    /// Command `op` of `owner` finished with `result`.
    fn command_done(&mut self, owner: Owner, op: Op, result: Result<(), IoError>);
    /// The host has seen request `id`'s completion: its slot may be reused.
    fn completion_polled(&mut self, id: RequestId);
    /// When the host should hand in the time next.
    fn poll_timeout(&self) -> Option<u64>;
    /// The host's clock, ms.
    fn handle_timeout(&mut self, now_ms: u64);
    /// Starts closing.
    fn close(&mut self);
    /// True once open succeeded and until close starts.
    fn is_open(&self) -> bool;
    /// The engine's memory.
    fn memory(&self) -> &[u8];
    /// The engine's memory, mutably.
    fn memory_mut(&mut self) -> &mut [u8];
    /// The header bytes as in memory (what is there of them before the header is read).
    fn header_bytes(&self) -> &[u8];
    /// Commands emitted and not yet completed.
    fn commands_in_flight(&self) -> usize;
    /// Requests submitted and not yet completed.
    fn requests_in_flight(&self) -> usize;
    /// What the engine did so far.
    fn stats(&self) -> Stats;
    /// Metadata pages the cache holds.
    fn cache_pages(&self) -> usize;
    /// True when copy-on-read is active for this open.
    fn copy_on_read(&self) -> bool;
}

/// Submits a guest request. Its buffer (for reads and writes) must stay valid until its
/// [`Event::Completed`].
pub(crate) fn submit<E: FormatEngine>(
    engine: &mut E,
    request: Request,
) -> Result<RequestId, SubmitError> {
    let id = engine.accept(request)?;
    engine.pump();
    Ok(id)
}

/// The next command to perform, if any.
pub(crate) fn poll_command<E: FormatEngine>(engine: &mut E) -> Option<Command> {
    engine.pump();
    engine.commands().poll()
}

/// Reports the outcome of command `id` (reads into engine memory: fill the memory
/// first). Unknown or repeated ids are ignored.
pub(crate) fn complete<E: FormatEngine>(
    engine: &mut E,
    id: CommandId,
    result: Result<(), IoError>,
) {
    if let Some((owner, op)) = engine.commands().finish(id) {
        engine.command_done(owner, op, result);
        engine.pump();
    }
}

/// The next event, if any.
pub(crate) fn poll_event<E: FormatEngine>(engine: &mut E) -> Option<Event> {
    let event = engine.events().pop()?;
    if let Event::Completed { id, .. } = event {
        engine.completion_polled(id);
    }
    Some(event)
}
