//! QED writes carried out segment by segment: in place into allocated clusters, or into
//! new clusters at the end of the file with the partial head and tail copied from the
//! backing file (zeros for a zero cluster: backing data never reappears there), L2 tables
//! created when a segment needs one, and table entries set only after the data landed.

use super::meta::{Extent, ExtentKind};
use super::requests::State;
use super::QedEngine;
use crate::engine::guest::Kind;
use crate::engine::slot_table::buffer_len;
use crate::engine::types::*;
use crate::qed::table::{ENTRY_SIZE, UNALLOCATED, ZERO_CLUSTER};

/// What a segment does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Write guest data into allocated clusters.
    InPlace,
    /// Zero (or deallocate) a range of allocated clusters.
    ZeroInPlace,
    /// New clusters: the segment's bytes from `Source`, head and tail copied.
    Allocate(Source),
    /// Whole clusters become zero clusters.
    Marker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Guest,
    Zeros,
    Bounce,
}

/// Progress of the head/tail copy of an allocating segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CowStage {
    Idle,
    Reading,
    ReadDone,
    Writing,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Segment {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) action: Action,
    /// In place: file offset of `start`. Allocating: file offset of the first new cluster.
    pub(super) phys: u64,
    /// First guest cluster and number of clusters (allocating and marker segments).
    pub(super) cluster: u64,
    pub(super) clusters: u64,
    /// L2 table mapping the segment, once it exists.
    pub(super) table: Option<u64>,
    /// The head and tail come from the backing file (else they are zeros).
    pub(super) cow_backing: bool,
    pub(super) main_emitted: bool,
    /// 0 = head, 1 = tail, 2 = done; `cow_pos` is the next guest byte to copy.
    pub(super) cow_part: u8,
    pub(super) cow_pos: u64,
    pub(super) cow_len: u64,
    pub(super) cow_stage: CowStage,
    pub(super) publish_next: u64,
    /// The table claim of a `Table` state: file offset, zeroing emitted.
    pub(super) table_claim: Option<(u64, bool)>,
}

impl Segment {
    pub(super) const NONE: Segment = Segment {
        start: 0,
        end: 0,
        action: Action::InPlace,
        phys: 0,
        cluster: 0,
        clusters: 0,
        table: None,
        cow_backing: false,
        main_emitted: false,
        cow_part: 0,
        cow_pos: 0,
        cow_len: 0,
        cow_stage: CowStage::Idle,
        publish_next: 0,
        table_claim: None,
    };
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    /// Plans the segment at the cursor (or finishes the request).
    pub(super) fn plan(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let backing = layout.backing.is_some();
        let r = self.requests[slot];
        if r.cursor >= r.end {
            self.finish(slot, Ok(Reply::Done));
            return true;
        }
        let ext: Extent = match self.extent(r.cursor, r.end) {
            Ok(ext) => ext,
            Err(stall) => return self.stalled(slot, stall),
        };
        let c = r.cursor;
        let cluster = c / cs;
        let mut seg = Segment {
            start: c,
            end: ext.end,
            table: ext.table,
            ..Segment::NONE
        };
        let allocate = |seg: &mut Segment, source: Source, from_backing: bool| {
            seg.action = Action::Allocate(source);
            seg.cluster = cluster;
            seg.clusters = seg.end.div_ceil(cs) - cluster;
            seg.cow_backing = from_backing;
            seg.cow_pos = cluster * cs;
        };
        let next = match (r.kind, ext.kind) {
            (Kind::Write, ExtentKind::Data(p)) => {
                seg.action = Action::InPlace;
                seg.phys = p;
                State::Data
            }
            (Kind::Zeroes { .. }, ExtentKind::Data(p)) => {
                seg.action = Action::ZeroInPlace;
                seg.phys = p;
                State::Data
            }
            (Kind::Zeroes { .. }, ExtentKind::Zero) => {
                self.requests[slot].cursor = ext.end;
                return true;
            }
            (Kind::Zeroes { .. }, ExtentKind::Unallocated) if !backing => {
                self.requests[slot].cursor = ext.end;
                return true;
            }
            (Kind::Zeroes { .. }, ExtentKind::Unallocated) => {
                if c % cs != 0 || ext.end - c < cs {
                    // A partial cluster: a new cluster, zeros here, backing data around.
                    seg.end = ext.end.min((cluster + 1) * cs);
                    allocate(&mut seg, Source::Zeros, true);
                } else {
                    seg.end = c + (ext.end - c) / cs * cs;
                    seg.action = Action::Marker;
                    seg.cluster = cluster;
                    seg.clusters = (seg.end - c) / cs;
                }
                State::NeedCheck
            }
            (Kind::Write, kind) => {
                allocate(
                    &mut seg,
                    Source::Guest,
                    kind == ExtentKind::Unallocated && backing,
                );
                State::NeedCheck
            }
            (Kind::Fill, ExtentKind::Unallocated) if !r.cancelled => {
                seg.end = r.end;
                if self.fill_data_is_zero(slot) {
                    // An all-zero backing cluster becomes a zero cluster: no data written,
                    // and the image stays sparse.
                    seg.action = Action::Marker;
                    seg.cluster = cluster;
                    seg.clusters = (seg.end - c).div_ceil(cs);
                } else {
                    allocate(&mut seg, Source::Bounce, false);
                }
                State::NeedCheck
            }
            // A fill whose cluster changed meanwhile, or any other request: nothing to do.
            _ => {
                self.finish(slot, Ok(Reply::Done));
                return true;
            }
        };
        if next == State::NeedCheck {
            self.need_check_wanted = true;
        }
        let req = &mut self.requests[slot];
        req.seg = seg;
        req.state = next;
        true
    }

    /// The state after the segment's L2 table exists: claim clusters or set markers.
    pub(super) fn after_table(&mut self, slot: usize) -> State {
        let cs = self.layout.map_or(0, |l| l.cluster_size);
        let seg = self.requests[slot].seg;
        match seg.action {
            Action::Marker => State::Publish,
            _ => match self.claim(seg.clusters * cs) {
                Some(at) => {
                    self.requests[slot].seg.phys = at;
                    self.stats.chunks_allocated += seg.clusters;
                    State::Grow
                }
                None => {
                    self.requests[slot].error = Some(RequestError::Io(IoError::NoSpace));
                    State::Grow
                }
            },
        }
    }

    /// Creates the L2 table for the segment's L1 index: space at the end of the file,
    /// zeroed, then the L1 entry (one table allocation at a time).
    pub(super) fn step_table(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let seg = self.requests[slot].seg;
        let l1 = seg.start / layout.cluster_size / layout.table_entries;
        if seg.table_claim.is_none() {
            match self.l2_table(l1) {
                Ok(Some(table)) => {
                    // Another request created it meanwhile.
                    self.requests[slot].seg.table = Some(table);
                    let next = self.after_table(slot);
                    self.requests[slot].state = next;
                    return true;
                }
                Ok(None) => {}
                Err(stall) => return self.stalled(slot, stall),
            }
            if self.table_alloc.is_some() {
                return false;
            }
            let Some(at) = self.claim(layout.table_len) else {
                self.requests[slot].error = Some(RequestError::Io(IoError::NoSpace));
                return true;
            };
            self.table_alloc = Some(slot);
            self.stats.chunks_allocated += 1;
            self.requests[slot].seg.table_claim = Some((at, false));
            return true;
        }
        let Some((at, zeroed)) = seg.table_claim else {
            return false;
        };
        if !self.file_reaches(at + layout.table_len) {
            return false;
        }
        if !self.options.storage_zero_init && !zeroed {
            let op = Op::WriteZeroes {
                offset: at,
                len: layout.table_len,
                unmap: false,
            };
            if !self.emit(slot, FileId::Image, op) {
                return false;
            }
            self.requests[slot].seg.table_claim = Some((at, true));
            return true;
        }
        if self.requests[slot].outstanding > 0 {
            return false;
        }
        if let Err(stall) = self.set_entry_at(self.l1_entry_offset(l1), at) {
            return self.stalled(slot, stall);
        }
        self.table_alloc = None;
        let req = &mut self.requests[slot];
        req.seg.table = Some(at);
        req.seg.table_claim = None;
        let next = self.after_table(slot);
        self.requests[slot].state = next;
        true
    }

    pub(super) fn step_data(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        let r = self.requests[slot];
        let seg = r.seg;
        if !seg.main_emitted {
            let len = seg.end - seg.start;
            let command = match seg.action {
                Action::InPlace => Some(Op::Write {
                    offset: seg.phys,
                    len: buffer_len(len),
                    from: self.guest(slot, seg.start),
                }),
                Action::ZeroInPlace => Some(Op::WriteZeroes {
                    offset: seg.phys,
                    len,
                    unmap: matches!(r.kind, Kind::Zeroes { unmap: true }),
                }),
                Action::Allocate(Source::Guest) => Some(Op::Write {
                    offset: seg.phys + (seg.start - seg.cluster * cs),
                    len: buffer_len(len),
                    from: self.guest(slot, seg.start),
                }),
                Action::Allocate(Source::Bounce) => Some(Op::Write {
                    offset: seg.phys,
                    len: buffer_len(cs),
                    from: Buffer::Engine {
                        offset: r.bounce.unwrap_or(0),
                    },
                }),
                Action::Allocate(Source::Zeros) if !self.options.storage_zero_init => {
                    Some(Op::WriteZeroes {
                        offset: seg.phys + (seg.start - seg.cluster * cs),
                        len,
                        unmap: false,
                    })
                }
                Action::Allocate(Source::Zeros) | Action::Marker => None,
            };
            if let Some(op) = command {
                if !self.emit(slot, FileId::Image, op) {
                    return false;
                }
            }
            self.requests[slot].seg.main_emitted = true;
            moved = true;
        }
        if matches!(seg.action, Action::Allocate(_)) {
            moved |= self.step_cow(slot);
        }
        let r = self.requests[slot];
        let copying = matches!(r.seg.action, Action::Allocate(_)) && r.seg.cow_part < 2;
        if r.outstanding > 0 || copying {
            return moved;
        }
        if r.kind != Kind::Fill {
            if let Some(offset) = self.requests[slot].bounce.take() {
                self.bounce.give_back(offset);
            }
        }
        let req = &mut self.requests[slot];
        match req.seg.action {
            Action::Allocate(_) => req.state = State::Publish,
            _ => {
                req.cursor = req.seg.end;
                req.state = State::Plan;
            }
        }
        true
    }

    /// Copies the head and tail of an allocating segment (from the backing file through a
    /// bounce slot, or zeros when the host's new space is not zero already).
    pub(super) fn step_cow(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        loop {
            let r = self.requests[slot];
            let seg = r.seg;
            let last = seg.cluster + seg.clusters;
            let (lo, hi) = match seg.cow_part {
                0 => (seg.cluster * cs, seg.start),
                1 => (seg.end, last * cs),
                _ => return moved,
            };
            let phys_of = |guest: u64| seg.phys + (guest - seg.cluster * cs);
            match seg.cow_stage {
                CowStage::Idle => {
                    let pos = seg.cow_pos.max(lo);
                    if pos >= hi {
                        let req = &mut self.requests[slot];
                        req.seg.cow_part += 1;
                        req.seg.cow_pos = if req.seg.cow_part == 1 { seg.end } else { 0 };
                        moved = true;
                        continue;
                    }
                    if !seg.cow_backing {
                        if self.options.storage_zero_init {
                            self.requests[slot].seg.cow_pos = hi;
                            continue;
                        }
                        let op = Op::WriteZeroes {
                            offset: phys_of(pos),
                            len: hi - pos,
                            unmap: false,
                        };
                        if !self.emit(slot, FileId::Image, op) {
                            return moved;
                        }
                        self.requests[slot].seg.cow_pos = hi;
                        moved = true;
                        continue;
                    }
                    let bounce = match r.bounce {
                        Some(b) => b,
                        None => match self.bounce.take() {
                            Some(b) => {
                                self.requests[slot].bounce = Some(b);
                                b
                            }
                            None => return moved,
                        },
                    };
                    let len = (hi - pos).min(self.bounce_len);
                    let op = Op::Read {
                        offset: pos,
                        len: buffer_len(len),
                        into: Buffer::Engine { offset: bounce },
                    };
                    if !self.emit(slot, FileId::Base, op) {
                        return moved;
                    }
                    self.stats.cow_reads += 1;
                    let req = &mut self.requests[slot];
                    req.seg.cow_pos = pos;
                    req.seg.cow_len = len;
                    req.seg.cow_stage = CowStage::Reading;
                    return true;
                }
                CowStage::ReadDone => {
                    if r.error.is_some() {
                        return moved;
                    }
                    let op = Op::Write {
                        offset: phys_of(seg.cow_pos),
                        len: buffer_len(seg.cow_len),
                        from: Buffer::Engine {
                            offset: r.bounce.unwrap_or(0),
                        },
                    };
                    if !self.emit(slot, FileId::Image, op) {
                        return moved;
                    }
                    self.requests[slot].seg.cow_stage = CowStage::Writing;
                    return true;
                }
                CowStage::Reading | CowStage::Writing => return moved,
            }
        }
    }

    /// Sets the table entries of an allocating or marker segment (its data landed).
    pub(super) fn step_publish(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        loop {
            let r = self.requests[slot];
            let seg = r.seg;
            if seg.publish_next >= seg.clusters {
                let req = &mut self.requests[slot];
                req.cursor = seg.end;
                req.state = State::Plan;
                return true;
            }
            let Some(table) = seg.table else {
                self.requests[slot].error = Some(RequestError::Failed);
                return true;
            };
            let k = seg.publish_next;
            let at = table + ((seg.cluster + k) % layout.table_entries) * ENTRY_SIZE;
            let value = match seg.action {
                Action::Marker => ZERO_CLUSTER,
                _ => seg.phys + k * cs,
            };
            if r.kind == Kind::Fill {
                // Defensive: a fill only fills a cluster nobody wrote.
                match self.entry_at(at) {
                    Ok(UNALLOCATED) => {}
                    Ok(_) => {
                        self.requests[slot].cancelled = true;
                        self.finish(slot, Ok(Reply::Done));
                        return true;
                    }
                    Err(stall) => return self.stalled(slot, stall) || moved,
                }
            }
            if let Err(stall) = self.set_entry_at(at, value) {
                return self.stalled(slot, stall) || moved;
            }
            self.requests[slot].seg.publish_next += 1;
            moved = true;
        }
    }
}
