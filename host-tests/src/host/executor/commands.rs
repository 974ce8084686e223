//! The engines' side of the executor: each command the chain of engines polls (the
//! image's, or an image's below it, whose base reads core's chain serves) becomes a pool
//! job on that layer's files (or is served at once on the calling thread: zeroing or
//! copying engine memory), finished jobs land in the engine memory of their layer or the
//! guest buffer, and the image's completion events become the caller's completions.

use super::pool::{lock, Dest, Job, Landing, Pool, SharedBuf, Src, Target, Token, Work};
use super::{take_buffer, Completion, GuestBuffers, ReqSlot};
use crate::host::files::{self, RawBase};
use fvd_core::chain::{ChainCommand, ChainOf};
use fvd_core::engine::{Buffer, Engine, Event, FileId, IoError, Op, OpenError, RequestId};
use std::collections::VecDeque;

/// The engines of an image chain, the image first.
pub(super) type Engines = ChainOf<Vec<Engine<Vec<u8>>>, Vec<u8>>;

pub(super) struct FvdState {
    pub(super) chain: Box<Engines>,
    /// The last layer's raw base, kept open for its lock (the workers read a clone of its
    /// file).
    pub(super) _raw_base: Option<RawBase>,
    /// The locks on each image and data file of the chain.
    pub(super) _held: Vec<files::Held>,
    /// Still waiting for every layer to open.
    pub(super) opening: bool,
    pub(super) requests: Vec<Option<ReqSlot>>,
    pub(super) opened: Option<Result<(), OpenError>>,
    pub(super) closed: Option<bool>,
    /// Commands polled and not yet completed: the engine has more to poll exactly when
    /// its `commands_in_flight` exceeds this (each poll runs the engine's state
    /// machines, so the executor never polls just to hear "none").
    pub(super) polled: usize,
    /// Writes from engine memory started but not yet copied out ([`copy_engine_writes`]).
    pub(super) engine_writes: Vec<EngineWrite>,
}

/// Copies bytes a worker returned to where they belong.
pub(super) fn land(f: &mut FvdState, landing: Landing, bytes: &[u8]) -> Result<(), IoError> {
    match landing {
        Landing::None => Ok(()),
        Landing::Engine { layer, at } => copy_into(f.chain.memory_mut(layer), at, bytes),
        Landing::Guest(request, at) => match guest_buf(f, request) {
            Some(buf) => copy_into(&mut lock(&buf), at, bytes),
            None => Err(IoError::Failed),
        },
    }
}

pub(super) fn copy_into(memory: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), IoError> {
    memory
        .get_mut(at..at.saturating_add(bytes.len()))
        .ok_or(IoError::Failed)?
        .copy_from_slice(bytes);
    Ok(())
}

pub(super) fn guest_buf(f: &FvdState, request: RequestId) -> Option<SharedBuf> {
    f.requests
        .get(request.slot())
        .and_then(|s| s.as_ref())
        .map(|s| s.buf.clone())
}

/// Starts one command of the chain: on the pool with its layer's files, or at once when
/// it needs no file (then returns true).
pub(super) fn start_command(
    f: &mut FvdState,
    pool: &mut Pool,
    mode: GuestBuffers,
    command: ChainCommand,
) -> bool {
    let ChainCommand {
        id,
        layer,
        file,
        op,
        memory_of,
    } = command;
    let target = match file {
        FileId::Image => Target::Image,
        FileId::Data => Target::Data,
        FileId::Base => Target::Base,
    };
    let mut landing = Landing::None;
    let work = match op {
        Op::ZeroBuffer { into, len } => {
            let result = match into {
                Buffer::Engine { offset } => zero(f.chain.memory_mut(memory_of), offset, len),
                Buffer::Guest { request, offset } => match guest_buf(f, request) {
                    Some(buf) => zero(&mut lock(&buf), offset, len),
                    None => Err(IoError::Failed),
                },
            };
            f.chain.complete(id, result);
            return true;
        }
        Op::Copy { from, into, len } => {
            // Between a guest buffer and engine memory (copy-on-read), straight across.
            let direct = match (from, into) {
                (
                    Buffer::Guest {
                        request,
                        offset: at,
                    },
                    Buffer::Engine { offset },
                ) => guest_buf(f, request).map(|buf| {
                    let guard = lock(&buf);
                    match guard.get(at..at.saturating_add(len)) {
                        Some(bytes) => copy_into(f.chain.memory_mut(memory_of), offset, bytes),
                        None => Err(IoError::Failed),
                    }
                }),
                (
                    Buffer::Engine { offset },
                    Buffer::Guest {
                        request,
                        offset: at,
                    },
                ) => guest_buf(f, request).map(|buf| {
                    match f
                        .chain
                        .memory(memory_of)
                        .get(offset..offset.saturating_add(len))
                    {
                        Some(bytes) => copy_into(&mut lock(&buf), at, bytes),
                        None => Err(IoError::Failed),
                    }
                }),
                _ => None,
            };
            if let Some(result) = direct {
                f.chain.complete(id, result);
                return true;
            }
            let read = |f: &mut FvdState, b: Buffer| -> Option<Vec<u8>> {
                match b {
                    Buffer::Engine { offset } => f
                        .chain
                        .memory(memory_of)
                        .get(offset..offset + len)
                        .map(<[u8]>::to_vec),
                    Buffer::Guest { request, offset } => guest_buf(f, request)
                        .and_then(|buf| lock(&buf).get(offset..offset + len).map(<[u8]>::to_vec)),
                }
            };
            let result = match read(f, from) {
                Some(data) => {
                    let landing = match into {
                        Buffer::Engine { offset } => Landing::Engine {
                            layer: memory_of,
                            at: offset,
                        },
                        Buffer::Guest { request, offset } => Landing::Guest(request, offset),
                    };
                    land(f, landing, &data)
                }
                None => Err(IoError::Failed),
            };
            f.chain.complete(id, result);
            return true;
        }
        Op::Read { offset, len, into } => {
            let into = match into {
                Buffer::Guest {
                    request,
                    offset: at,
                } => match (mode, guest_buf(f, request)) {
                    (GuestBuffers::Shared, Some(buf)) => Dest::Guest(buf, at),
                    (GuestBuffers::Copy, Some(_)) => {
                        landing = Landing::Guest(request, at);
                        Dest::Owned(pool.spare())
                    }
                    (_, None) => {
                        f.chain.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    landing = Landing::Engine {
                        layer: memory_of,
                        at,
                    };
                    Dest::Owned(pool.spare())
                }
            };
            Work::Read { offset, len, into }
        }
        Op::Write { offset, len, from } => {
            let from = match from {
                Buffer::Guest {
                    request,
                    offset: at,
                } => match (mode, guest_buf(f, request)) {
                    (GuestBuffers::Shared, Some(buf)) => Src::Guest(buf, at),
                    (GuestBuffers::Copy, Some(buf)) => {
                        let mut v = pool.spare();
                        match lock(&buf).get(at..at.saturating_add(len)) {
                            Some(bytes) => v.extend_from_slice(bytes),
                            None => {
                                f.chain.complete(id, Err(IoError::Failed));
                                return true;
                            }
                        }
                        Src::Owned(v)
                    }
                    (_, None) => {
                        f.chain.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    if f.chain.memory(memory_of).len() < at.saturating_add(len) {
                        f.chain.complete(id, Err(IoError::Failed));
                        return true;
                    }
                    // Copied out later, when the calling thread is about to wait
                    // ([`copy_engine_writes`]): the engine keeps these bytes unchanged
                    // until the write completes, and the copy then overlaps the jobs
                    // already sent (a copy-on-read fill's write overlaps the next read).
                    f.engine_writes.push(EngineWrite {
                        token: Token::Command(id),
                        layer,
                        target,
                        offset,
                        len,
                        memory_of,
                        at,
                    });
                    return false;
                }
            };
            Work::Write { offset, len, from }
        }
        Op::WriteZeroes { offset, len, unmap } => Work::WriteZeroes { offset, len, unmap },
        Op::Flush => Work::Flush,
        Op::SetLength { len } => Work::SetLength { len },
    };
    pool.push(Job {
        token: Token::Command(id),
        layer,
        target,
        work,
        landing,
    });
    false
}

/// A write from engine memory whose bytes are not copied out yet.
pub(super) struct EngineWrite {
    token: Token,
    /// The layer of the chain whose files `target` names.
    layer: usize,
    target: Target,
    /// File offset and length of the write.
    offset: u64,
    len: usize,
    /// The layer whose engine memory holds the bytes.
    memory_of: usize,
    /// Where they start in it.
    at: usize,
}

/// Copies the bytes of every write from engine memory waiting in `f` into a job of its
/// own and queues the jobs for the pool.
pub(super) fn copy_engine_writes(f: &mut FvdState, pool: &mut Pool) {
    let mut writes = std::mem::take(&mut f.engine_writes);
    for w in writes.drain(..) {
        let mut bytes = pool.spare();
        // In range: checked when the command was started, and engine memory never shrinks.
        if let Some(from) = f
            .chain
            .memory(w.memory_of)
            .get(w.at..w.at.saturating_add(w.len))
        {
            bytes.extend_from_slice(from);
        }
        pool.push(Job {
            token: w.token,
            layer: w.layer,
            target: w.target,
            work: Work::Write {
                offset: w.offset,
                len: w.len,
                from: Src::Owned(bytes),
            },
            landing: Landing::None,
        });
    }
    f.engine_writes = writes;
}

pub(super) fn zero(memory: &mut [u8], at: usize, len: usize) -> Result<(), IoError> {
    memory
        .get_mut(at..at.saturating_add(len))
        .ok_or(IoError::Failed)?
        .fill(0);
    Ok(())
}

/// Turns the image's events into completions.
pub(super) fn drain_events(f: &mut FvdState, finished: &mut VecDeque<Completion>) {
    while let Some(event) = f.chain.poll_event() {
        match event {
            Event::Opened => f.opened = Some(Ok(())),
            Event::OpenFailed(e) => f.opened = Some(Err(e)),
            Event::Closed { clean } => f.closed = Some(clean),
            Event::Completed { id, result } => {
                if let Some(slot) = f.requests.get_mut(id.slot()).and_then(Option::take) {
                    finished.push_back(Completion {
                        ticket: slot.ticket,
                        result,
                        data: take_buffer(slot.buf),
                    });
                }
            }
            // An event this host does not know needs nothing from it.
            _ => {}
        }
    }
}
