//! Fixed-capacity bookkeeping for commands in flight (who is waiting for each, in which
//! order the host should see them) and for events not yet polled.

use super::slot_table::slot_u16;
use super::types::{Command, CommandId, Event, FileId, Op};
use super::{MAX_COMMANDS, MAX_REQUESTS};

/// Who waits for a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A guest request (slot index).
    Request(u16),
    /// Loading a cache page (slot index).
    PageLoad(u16),
    /// Writing a cache page back to its region (slot index).
    PageWriteBack(u16),
    /// The commit / close machinery.
    Commit,
    /// Opening (header, journal replay, table scan).
    Lifecycle,
    /// Storage growth and the chunks_relocated header update.
    Alloc,
    /// Journal reads laid over pages of a read-only dirty image.
    Overlay,
    /// Marking the header fully prefetched.
    Prefetch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Queued,
    Issued,
}

#[derive(Clone, Copy, Debug)]
struct CommandSlot {
    generation: u16,
    state: SlotState,
    owner: Owner,
    file: FileId,
    op: Op,
}

/// Commands emitted and not yet completed.
pub struct CommandSlots {
    slots: [CommandSlot; MAX_COMMANDS],
    queue: [u16; MAX_COMMANDS],
    head: usize,
    queued: usize,
    in_flight: usize,
    starved: bool,
    /// Bytes of every base read emitted so far.
    base_read_bytes: u64,
}

impl CommandSlots {
    pub fn new() -> Self {
        CommandSlots {
            slots: [CommandSlot {
                generation: 0,
                state: SlotState::Free,
                owner: Owner::Commit,
                file: FileId::Image,
                op: Op::Flush,
            }; MAX_COMMANDS],
            queue: [0; MAX_COMMANDS],
            head: 0,
            queued: 0,
            in_flight: 0,
            starved: false,
            base_read_bytes: 0,
        }
    }

    /// True (once) when an emit failed for want of a slot since the last call.
    pub fn take_starved(&mut self) -> bool {
        core::mem::take(&mut self.starved)
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        MAX_COMMANDS - self.in_flight
    }

    /// Bytes of every base read emitted so far.
    pub fn base_read_bytes(&self) -> u64 {
        self.base_read_bytes
    }

    /// Commands not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Emits a command; `false` when every slot is taken.
    pub fn emit(&mut self, owner: Owner, file: FileId, op: Op) -> bool {
        let Some(index) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            self.starved = true;
            return false;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        if let (FileId::Base, Op::Read { len, .. }) = (file, op) {
            self.base_read_bytes = self.base_read_bytes.saturating_add(len as u64);
        }
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = SlotState::Queued;
        slot.owner = owner;
        slot.file = file;
        slot.op = op;
        // The ring position is reduced modulo its length, so it is always present.
        if let Some(entry) = self.queue.get_mut((self.head + self.queued) % MAX_COMMANDS) {
            *entry = slot_u16(index);
        }
        self.queued += 1;
        self.in_flight += 1;
        true
    }

    /// The oldest command not yet handed to the host.
    pub fn poll(&mut self) -> Option<Command> {
        if self.queued == 0 {
            return None;
        }
        let index = usize::from(*self.queue.get(self.head)?);
        self.head = (self.head + 1) % MAX_COMMANDS;
        self.queued -= 1;
        let slot = self.slots.get_mut(index)?;
        slot.state = SlotState::Issued;
        Some(Command {
            id: CommandId {
                slot: slot_u16(index),
                generation: slot.generation,
            },
            file: slot.file,
            op: slot.op,
        })
    }

    /// Retires an issued command, returning who waited for it and what it was.
    pub fn finish(&mut self, id: CommandId) -> Option<(Owner, Op)> {
        let slot = self.slots.get_mut(usize::from(id.slot))?;
        if slot.state != SlotState::Issued || slot.generation != id.generation {
            return None;
        }
        slot.state = SlotState::Free;
        self.in_flight -= 1;
        Some((slot.owner, slot.op))
    }
}

const EVENT_CAPACITY: usize = MAX_REQUESTS + 8;

/// Events waiting to be polled, oldest first.
pub struct EventQueue {
    events: [Option<Event>; EVENT_CAPACITY],
    head: usize,
    len: usize,
}

impl EventQueue {
    pub fn new() -> Self {
        EventQueue {
            events: [None; EVENT_CAPACITY],
            head: 0,
            len: 0,
        }
    }

    /// Queues an event. Capacity covers one completion per request slot plus lifecycle
    /// events; a request slot is only reused after its completion was polled.
    pub fn push(&mut self, event: Event) {
        if self.len < EVENT_CAPACITY {
            if let Some(entry) = self.events.get_mut((self.head + self.len) % EVENT_CAPACITY) {
                *entry = Some(event);
                self.len += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn pop(&mut self) -> Option<Event> {
        if self.len == 0 {
            return None;
        }
        let event = self.events.get_mut(self.head)?.take();
        self.head = (self.head + 1) % EVENT_CAPACITY;
        self.len -= 1;
        event
    }
}
