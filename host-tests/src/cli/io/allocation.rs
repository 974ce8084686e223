//! qemu-io's `alloc OFF [LEN]` and `map`: which guest bytes the image itself holds (data
//! or zeros recorded in it), as opposed to bytes left to its base or never written.

use super::report::report_size;
use super::words::getopt;
use super::Session;
use crate::cli::disk::ExtentKind;
use crate::cli::size::parse_size;

/// Bytes `alloc` looks at when no LEN is given (qemu-io's default).
const DEFAULT_ALLOC_LEN: u64 = 512;

impl Session<'_> {
    /// The next run from `offset` (at most `max` bytes): its length and whether the image
    /// itself holds it.
    fn allocated_run(&mut self, offset: u64, max: u64) -> Result<(u64, bool), String> {
        let extent = self
            .disk()?
            .extent(offset, max)
            .map_err(|e| format!("allocation query failed: {e}"))?;
        if extent.length == 0 {
            return Err(format!("allocation query failed: empty run at {offset}"));
        }
        let held = extent.depth == 0 && matches!(extent.kind, ExtentKind::Local | ExtentKind::Zero);
        Ok((extent.length.min(max), held))
    }

    pub(super) fn alloc(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "", "").map_err(|e| format!("alloc: {e}"))?;
        let (offset, len) = match parsed.operands.as_slice() {
            [off] => (off, None),
            [off, len] => (off, Some(len)),
            _ => return Err("alloc: expected OFF [LEN]".into()),
        };
        let offset = parse_size(offset).map_err(|e| format!("alloc: invalid offset: {e}"))?;
        let len = len
            .map(|l| parse_size(l).map_err(|e| format!("alloc: invalid length: {e}")))
            .transpose()?
            .unwrap_or(DEFAULT_ALLOC_LEN);
        let size = self.disk()?.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!(
                "alloc: offset {offset} + {len} is past the end of the disk"
            ));
        }
        let (mut at, mut held) = (offset, 0u64);
        while at < offset + len {
            let (run, is_held) = self.allocated_run(at, offset + len - at)?;
            if is_held {
                held += run;
            }
            at += run;
        }
        let text = format!(
            "{held}/{len} bytes allocated at offset {}\n",
            report_size(offset as f64)
        );
        self.print(&text).map_err(Self::output_error)
    }

    pub(super) fn map(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("map: takes no arguments".into());
        }
        let size = self.disk()?.size();
        let mut at = 0;
        let mut current: Option<(u64, u64, bool)> = None;
        let mut text = String::new();
        let mut line = |start: u64, len: u64, held: bool| {
            text += &format!(
                "{} ({len:#x}) bytes {} at offset {} ({start:#x})\n",
                report_size(len as f64),
                if held {
                    "    allocated"
                } else {
                    "not allocated"
                },
                report_size(start as f64)
            );
        };
        while at < size {
            let (run, held) = self.allocated_run(at, size - at)?;
            current = match current {
                Some((start, len, kind)) if kind == held => Some((start, len + run, kind)),
                Some((start, len, kind)) => {
                    line(start, len, kind);
                    Some((at, run, held))
                }
                None => Some((at, run, held)),
            };
            at += run;
        }
        if let Some((start, len, kind)) = current {
            line(start, len, kind);
        }
        self.print(&text).map_err(Self::output_error)
    }
}
