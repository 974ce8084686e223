//! qemu-io's `readv` and `writev`: one request made of several lengths laid end to end
//! from OFF (`readv [-P PAT] [-v] [-q] OFF LEN [LEN...]`), read or written as one range
//! and reported as one request, as qemu-io does.

use super::words::{getopt, Parsed, MAX_REQUEST_BYTES};
use super::Session;
use crate::cli::size::parse_size;

/// OFF and the sum of the LENs of a vectored command.
fn offset_and_total(cmd: &str, parsed: &Parsed) -> Result<(u64, u64), String> {
    let Some((off, lens)) = parsed.operands.split_first().filter(|(_, l)| !l.is_empty()) else {
        return Err(format!("{cmd}: expected OFF and at least one LEN"));
    };
    let offset = parse_size(off).map_err(|e| format!("{cmd}: invalid offset: {e}"))?;
    let mut total = 0u64;
    for len in lens {
        let len = parse_size(len).map_err(|e| format!("{cmd}: invalid length: {e}"))?;
        total = total
            .checked_add(len)
            .filter(|&t| t <= MAX_REQUEST_BYTES)
            .ok_or_else(|| format!("{cmd}: the lengths add up to more than {MAX_REQUEST_BYTES}"))?;
    }
    Ok((offset, total))
}

impl Session<'_> {
    pub(super) fn readv(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "vq", "P").map_err(|e| format!("readv: {e}"))?;
        let (offset, len) = offset_and_total("readv", &parsed)?;
        self.read_range(&parsed, offset, len)
    }

    pub(super) fn writev(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "q", "P").map_err(|e| format!("writev: {e}"))?;
        let (offset, len) = offset_and_total("writev", &parsed)?;
        self.write_range(&parsed, offset, len)
    }
}
