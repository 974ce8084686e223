//! qemu-img's `-p` progress line, `    (12.50/100%)` rewritten in place with `\r` and
//! ended with a newline, shared by `convert`, `commit` and `rebase`.

use super::error::CliError;
use std::io::Write;

/// qemu-img's `-p` progress: `    (12.50/100%)` rewritten in place.
pub struct Progress {
    enabled: bool,
    total: u64,
    shown: Option<u64>,
}

impl Progress {
    /// Progress over `total` bytes, printed only when `enabled`.
    pub fn new(enabled: bool, total: u64) -> Self {
        Progress {
            enabled,
            total,
            shown: None,
        }
    }

    /// Shows `done` of the total bytes (at most once per whole percent).
    pub fn show(&mut self, out: &mut dyn Write, done: u64) -> Result<(), CliError> {
        if !self.enabled {
            return Ok(());
        }
        let hundredths = if self.total == 0 {
            10_000
        } else {
            (u128::from(done) * 10_000 / u128::from(self.total)) as u64
        };
        // Print at most every whole percent (and the first time).
        if self
            .shown
            .is_some_and(|shown| hundredths / 100 == shown / 100)
        {
            return Ok(());
        }
        self.shown = Some(hundredths);
        write!(
            out,
            "    ({}.{:02}/100%)\r",
            hundredths / 100,
            hundredths % 100
        )
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
    }

    /// Shows 100% and ends the line.
    pub fn finish(&mut self, out: &mut dyn Write) -> Result<(), CliError> {
        if !self.enabled {
            return Ok(());
        }
        if self.shown != Some(10_000) {
            self.shown = None;
            self.show(out, self.total)?;
        }
        writeln!(out).map_err(CliError::Output)
    }
}
