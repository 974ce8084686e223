//! The JSON document of a map (`fvd-img map --output json`, the inspector's map export):
//! runs of the virtual disk with one kind of storage, merged while they continue each
//! other, printed one object per line with `qemu-img map`'s keys plus `kind`. The host
//! finds the runs (through the engine and its base chain); the merge rule and the keys
//! are here. A [`MapWriter`] holds one pending run, so memory does not grow with the disk.

use core::fmt::{self, Write};

/// What holds a run of guest bytes, seen from the top image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Stored in this image (its data storage, or the raw file).
    Local,
    /// Not in this image: served by a base image (any depth).
    Base,
    /// Reads as zeros without being stored anywhere (a zero cluster, a hole in a raw
    /// file, or past the end of a base).
    Zero,
    /// Reads as zeros because nothing was ever stored and no base lies below (an
    /// unallocated chunk or cluster): what `qemu-img map` reports as not present.
    Unallocated,
}

impl MapKind {
    /// The name `map --output json` uses.
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Local => "local",
            MapKind::Base => "base",
            MapKind::Zero => "zero",
            MapKind::Unallocated => "unallocated",
        }
    }
}

/// One run of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First guest byte.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// What holds them.
    pub kind: MapKind,
    /// 0 for the image itself, 1 for its base, 2 for the base's base...
    pub depth: u32,
    /// They read as zeros (known without reading them).
    pub zero: bool,
    /// They are stored as data somewhere.
    pub data: bool,
    /// Where they are in the file at `depth`, when known.
    pub offset: Option<u64>,
}

impl MapEntry {
    /// True when `next` directly follows this run, has the same properties and (when
    /// stored) continues its storage. Runs at the same depth and of the same kind lie in
    /// the same file.
    pub fn joins(&self, next: &MapEntry) -> bool {
        self.start.checked_add(self.length) == Some(next.start)
            && self.kind == next.kind
            && self.depth == next.depth
            && self.zero == next.zero
            && self.data == next.data
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
                _ => false,
            }
    }
}

impl MapEntry {
    /// This run of a base image as the image above it sees it: served by its base, one
    /// level deeper.
    pub fn seen_through_base(self) -> MapEntry {
        MapEntry {
            kind: MapKind::Base,
            depth: self.depth.saturating_add(1),
            ..self
        }
    }
}

/// The layer under a run that an image leaves to its base, as the host has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Below {
    /// A layer of `size` guest bytes the host maps in turn (an image, or a raw file whose
    /// holes the host can find).
    Mappable {
        /// Its guest size.
        size: u64,
    },
    /// A raw file of `size` bytes the host cannot look into: every byte it has is stored,
    /// at the same offset.
    Raw {
        /// Its length.
        size: u64,
    },
    /// No layer is open there (the base was not opened).
    Unknown,
}

/// What a run an image leaves to its base becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseStep {
    /// The run, final.
    Entry(MapEntry),
    /// Map the first `len` bytes at the same offset of the layer below, then see its
    /// first run [`MapEntry::seen_through_base`].
    Descend {
        /// Bytes to map below (the run cut at the end of the layer below).
        len: u64,
    },
}

/// The rule for `len` bytes at `at` that an image leaves to its base (`qemu-img map`'s):
/// past the end of a shorter base they are zeros stored nowhere (depth 0, not present);
/// a raw file stores what it has at the same offset, one level down; anything else the
/// layer below says, one level deeper.
pub fn base_step(at: u64, len: u64, below: Below) -> BaseStep {
    let unallocated = MapEntry {
        start: at,
        length: len,
        kind: MapKind::Unallocated,
        depth: 0,
        zero: true,
        data: false,
        offset: None,
    };
    let stored = MapEntry {
        kind: MapKind::Base,
        depth: 1,
        zero: false,
        data: true,
        ..unallocated
    };
    match below {
        Below::Mappable { size } | Below::Raw { size } if at >= size => {
            BaseStep::Entry(unallocated)
        }
        Below::Mappable { size } => BaseStep::Descend {
            len: len.min(size.saturating_sub(at)),
        },
        Below::Raw { size } => BaseStep::Entry(MapEntry {
            length: len.min(size.saturating_sub(at)),
            offset: Some(at),
            ..stored
        }),
        Below::Unknown => BaseStep::Entry(stored),
    }
}

/// Writes one finished run: `[` before the first, `,` and a newline before the others.
pub fn write_entry(out: &mut impl Write, first: bool, e: &MapEntry) -> fmt::Result {
    out.write_str(if first { "[" } else { ",\n" })?;
    write!(
        out,
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
         \"data\": {}, \"compressed\": false",
        e.start,
        e.length,
        e.depth,
        e.kind != MapKind::Unallocated,
        e.zero,
        e.data
    )?;
    if let Some(offset) = e.offset {
        write!(out, ", \"offset\": {offset}")?;
    }
    write!(out, ", \"kind\": \"{}\"}}", e.kind.name())
}

/// Ends a document of `written` runs.
pub fn write_end(out: &mut impl Write, written: u64) -> fmt::Result {
    out.write_str(if written == 0 { "[]\n" } else { "]\n" })
}

/// Merges runs as they come and writes each once it is final.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapWriter {
    pending: Option<MapEntry>,
    written: u64,
}

impl MapWriter {
    /// A writer that has seen no run.
    pub const fn new() -> Self {
        MapWriter {
            pending: None,
            written: 0,
        }
    }

    /// Adds the next run (in disk order), writing the one before when `entry` does not
    /// join it.
    pub fn push(&mut self, out: &mut impl Write, entry: MapEntry) -> fmt::Result {
        match &mut self.pending {
            Some(last) if last.joins(&entry) => {
                last.length = last.length.saturating_add(entry.length);
                Ok(())
            }
            _ => match self.pending.replace(entry) {
                Some(done) => self.write(out, &done),
                None => Ok(()),
            },
        }
    }

    /// Writes the last run and closes the document.
    pub fn finish(mut self, out: &mut impl Write) -> fmt::Result {
        if let Some(done) = self.pending.take() {
            self.write(out, &done)?;
        }
        write_end(out, self.written)
    }

    fn write(&mut self, out: &mut impl Write, done: &MapEntry) -> fmt::Result {
        write_entry(out, self.written == 0, done)?;
        self.written = self.written.saturating_add(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn run(start: u64, length: u64, kind: MapKind, offset: Option<u64>) -> MapEntry {
        MapEntry {
            start,
            length,
            kind,
            depth: u32::from(kind == MapKind::Base),
            zero: kind == MapKind::Zero,
            data: kind != MapKind::Zero,
            offset,
        }
    }

    #[test]
    fn a_run_left_to_the_base_follows_qemu_img_maps_rule() {
        // Past the end of a shorter base: zeros stored nowhere, at the image's depth.
        let BaseStep::Entry(past) = base_step(4096, 512, Below::Mappable { size: 4096 }) else {
            panic!("past the base's end is final");
        };
        assert_eq!(
            (past.kind, past.depth, past.data),
            (MapKind::Unallocated, 0, false)
        );
        // A layer the host maps: cut at its end.
        assert_eq!(
            base_step(1024, 8192, Below::Mappable { size: 4096 }),
            BaseStep::Descend { len: 3072 }
        );
        // A raw file the host cannot look into: stored at the same offset, cut at its end.
        let BaseStep::Entry(raw) = base_step(1024, 8192, Below::Raw { size: 4096 }) else {
            panic!("a raw base is final");
        };
        assert_eq!(
            (raw.kind, raw.depth, raw.length, raw.offset, raw.data),
            (MapKind::Base, 1, 3072, Some(1024), true)
        );
        // What the layer below says is one level deeper, served by the base.
        let below = run(0, 512, MapKind::Local, Some(65536)).seen_through_base();
        assert_eq!(
            (below.kind, below.depth, below.offset),
            (MapKind::Base, 1, Some(65536))
        );
    }

    #[test]
    fn runs_merge_only_when_contiguous_alike_and_stored_contiguously() {
        let mut text = String::new();
        let mut w = MapWriter::new();
        w.push(&mut text, run(0, 512, MapKind::Local, Some(8192)))
            .unwrap();
        w.push(&mut text, run(512, 512, MapKind::Local, Some(8704)))
            .unwrap();
        w.push(&mut text, run(1024, 512, MapKind::Local, Some(20000)))
            .unwrap();
        w.push(&mut text, run(1536, 512, MapKind::Zero, None))
            .unwrap();
        w.push(&mut text, run(2048, 512, MapKind::Zero, None))
            .unwrap();
        w.finish(&mut text).unwrap();
        assert_eq!(
            text,
            "[{ \"start\": 0, \"length\": 1024, \"depth\": 0, \"present\": true, \"zero\": false, \
             \"data\": true, \"compressed\": false, \"offset\": 8192, \"kind\": \"local\"},\n\
             { \"start\": 1024, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": false, \
             \"data\": true, \"compressed\": false, \"offset\": 20000, \"kind\": \"local\"},\n\
             { \"start\": 1536, \"length\": 1024, \"depth\": 0, \"present\": true, \"zero\": true, \
             \"data\": false, \"compressed\": false, \"kind\": \"zero\"}]\n"
        );
    }

    #[test]
    fn an_empty_map_is_an_empty_list() {
        let mut text = String::new();
        MapWriter::new().finish(&mut text).unwrap();
        assert_eq!(text, "[]\n");
    }
}
