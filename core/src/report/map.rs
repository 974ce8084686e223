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
