//! The engine's side of the executor: each command the engine polls becomes a pool job
//! (or is served at once on the calling thread: zeroing or copying engine memory, base
//! reads through a chained image), finished jobs land in engine memory or the guest
//! buffer, and the engine's completion events become the caller's completions.

use super::pool::{io_result, lock, Dest, Job, Landing, Pool, SharedBuf, Src, Target, Token, Work};
use super::{take_buffer, Completion, GuestBuffers, ReqSlot};
use crate::host::chain::BaseRead;
use crate::host::files::{self};
use fvd_core::engine::{Buffer, Command, Engine, Event, FileId, IoError, Op, OpenError, RequestId};
use std::collections::VecDeque;

pub(super) struct FvdState {
    pub(super) engine: Box<Engine<Vec<u8>>>,
    /// A base that is itself an image: served on the calling thread.
    pub(super) chain: Option<Box<dyn BaseRead>>,
    /// A raw base, kept open for its lock (the workers read a clone of its file).
    pub(super) _raw_base_owner: Option<Box<dyn BaseRead>>,
    /// The locks on the image and data file.
    pub(super) _held: files::Held,
    pub(super) requests: Vec<Option<ReqSlot>>,
    pub(super) opened: Option<Result<(), OpenError>>,
    pub(super) closed: Option<bool>,
    /// Commands polled and not yet completed: the engine has more to poll exactly when
    /// its `commands_in_flight` exceeds this (each poll runs the engine's state
    /// machines, so the executor never polls just to hear "none").
    pub(super) polled: usize,
}

/// Copies bytes a worker returned to where they belong.
pub(super) fn land(f: &mut FvdState, landing: Landing, bytes: &[u8]) -> Result<(), IoError> {
    match landing {
        Landing::None => Ok(()),
        Landing::Engine(at) => copy_into(f.engine.memory_mut(), at, bytes),
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

/// Starts one engine command: on the pool, or at once when it needs no file (then
/// returns true).
pub(super) fn start_command(
    f: &mut FvdState,
    pool: &mut Pool,
    mode: GuestBuffers,
    command: Command,
) -> bool {
    let Command { id, file, op } = command;
    let target = match file {
        FileId::Image => Target::Image,
        FileId::Data => Target::Data,
        FileId::Base => Target::Base,
    };
    let mut landing = Landing::None;
    let work = match op {
        Op::ZeroBuffer { into, len } => {
            let result = match into {
                Buffer::Engine { offset } => zero(f.engine.memory_mut(), offset, len),
                Buffer::Guest { request, offset } => match guest_buf(f, request) {
                    Some(buf) => zero(&mut lock(&buf), offset, len),
                    None => Err(IoError::Failed),
                },
            };
            f.engine.complete(id, result);
            return true;
        }
        Op::Copy { from, into, len } => {
            let read = |f: &mut FvdState, b: Buffer| -> Option<Vec<u8>> {
                match b {
                    Buffer::Engine { offset } => f
                        .engine
                        .memory()
                        .get(offset..offset + len)
                        .map(<[u8]>::to_vec),
                    Buffer::Guest { request, offset } => guest_buf(f, request)
                        .and_then(|buf| lock(&buf).get(offset..offset + len).map(<[u8]>::to_vec)),
                }
            };
            let result = match read(f, from) {
                Some(data) => {
                    let landing = match into {
                        Buffer::Engine { offset } => Landing::Engine(offset),
                        Buffer::Guest { request, offset } => Landing::Guest(request, offset),
                    };
                    land(f, landing, &data)
                }
                None => Err(IoError::Failed),
            };
            f.engine.complete(id, result);
            return true;
        }
        Op::Read { offset, len, into } if target == Target::Base && f.chain.is_some() => {
            let result = chain_read(f, offset, len, into);
            f.engine.complete(id, result);
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
                        f.engine.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    landing = Landing::Engine(at);
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
                                f.engine.complete(id, Err(IoError::Failed));
                                return true;
                            }
                        }
                        Src::Owned(v)
                    }
                    (_, None) => {
                        f.engine.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    let mut v = pool.spare();
                    match f.engine.memory().get(at..at.saturating_add(len)) {
                        Some(bytes) => v.extend_from_slice(bytes),
                        None => {
                            f.engine.complete(id, Err(IoError::Failed));
                            return true;
                        }
                    }
                    Src::Owned(v)
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
        target,
        work,
        landing,
    });
    false
}

pub(super) fn zero(memory: &mut [u8], at: usize, len: usize) -> Result<(), IoError> {
    memory
        .get_mut(at..at.saturating_add(len))
        .ok_or(IoError::Failed)?
        .fill(0);
    Ok(())
}

/// A base read through a chained image, on the calling thread.
pub(super) fn chain_read(
    f: &mut FvdState,
    offset: u64,
    len: usize,
    into: Buffer,
) -> Result<(), IoError> {
    let guest = match into {
        Buffer::Guest {
            request,
            offset: at,
        } => Some((guest_buf(f, request).ok_or(IoError::Failed)?, at)),
        Buffer::Engine { .. } => None,
    };
    let chain = f.chain.as_mut().ok_or(IoError::Failed)?;
    match (into, guest) {
        (_, Some((buf, at))) => {
            let mut guard = lock(&buf);
            let slice = guard
                .get_mut(at..at.saturating_add(len))
                .ok_or(IoError::Failed)?;
            io_result(chain.read_base(offset, slice))
        }
        (Buffer::Engine { offset: at }, None) => {
            let slice = f
                .engine
                .memory_mut()
                .get_mut(at..at.saturating_add(len))
                .ok_or(IoError::Failed)?;
            io_result(chain.read_base(offset, slice))
        }
        (Buffer::Guest { .. }, None) => Err(IoError::Failed),
    }
}

/// Turns the engine's events into completions.
pub(super) fn drain_events(f: &mut FvdState, finished: &mut VecDeque<Completion>) {
    while let Some(event) = f.engine.poll_event() {
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
        }
    }
}
