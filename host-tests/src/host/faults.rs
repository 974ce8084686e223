//! Deterministic fault injection for tests: a [`FaultPlan`] says which storage commands
//! fail and how (EIO, ENOSPC or EFBIG, before or after taking effect, a torn write, a
//! short read, a file that can no longer grow) or are only delayed (a slow base for
//! benchmarks), chosen by command number and by what the command touches (file, kind of
//! operation, byte range).
//!
//! The plan only numbers commands and decides; the hosts carry the decision out where the
//! operating system would have failed: the synchronous [`crate::host::driver::Driver`] around
//! each storage command it performs, the [`crate::host::executor::Executor`] on its worker
//! threads around each file operation (reads go through the same retry loop a real short
//! read meets, [`crate::host::files::read_full_with`]). Without a plan neither pays more than a
//! branch per command. Nothing here runs unless a test installs a plan.

use crate::host::files::read_full_with;
use fvd_core::engine::{FileId, Op};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A plan shared with the executor's worker threads (the test keeps a handle to clear it).
pub type SharedPlan = Arc<Mutex<FaultPlan>>;

/// The kind of a storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A write of zeros (or a discard).
    WriteZeroes,
    /// A flush (`fdatasync`).
    Flush,
    /// A length change (`ftruncate`).
    SetLength,
}

impl OpKind {
    /// The kind of engine operation `op`, or `None` for operations without file I/O.
    pub fn of(op: &Op) -> Option<OpKind> {
        match op {
            Op::Read { .. } => Some(OpKind::Read),
            Op::Write { .. } => Some(OpKind::Write),
            Op::WriteZeroes { .. } => Some(OpKind::WriteZeroes),
            Op::Flush => Some(OpKind::Flush),
            Op::SetLength { .. } => Some(OpKind::SetLength),
            Op::ZeroBuffer { .. } | Op::Copy { .. } => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            OpKind::Read => 1,
            OpKind::Write => 2,
            OpKind::WriteZeroes => 4,
            OpKind::Flush => 8,
            OpKind::SetLength => 16,
        }
    }
}

/// A set of [`OpKind`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    /// Every kind.
    pub const ALL: Kinds = Kinds(31);
    /// Reads.
    pub const READS: Kinds = Kinds(1);
    /// Writes and writes of zeros.
    pub const WRITES: Kinds = Kinds(2 | 4);
    /// Flushes.
    pub const FLUSHES: Kinds = Kinds(8);
    /// Length changes.
    pub const SET_LENGTH: Kinds = Kinds(16);
    /// Everything that can make a file longer: writes, writes of zeros, length changes.
    pub const GROWING: Kinds = Kinds(2 | 4 | 16);

    /// Both sets.
    pub const fn or(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }

    /// True when `kind` is in the set.
    pub fn contains(self, kind: OpKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// An error number a fault reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the file system is full.
    NoSpace,
    /// EFBIG: the file may not grow (a file size limit).
    TooLarge,
}

impl Errno {
    /// The error as the operating system reports it.
    pub fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Errno::Eio => libc::EIO,
            Errno::NoSpace => libc::ENOSPC,
            Errno::TooLarge => libc::EFBIG,
        })
    }
}

/// What a read that came up short does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterShort {
    /// The next system call reads on normally (a plain short read).
    Continue,
    /// The next system call reports end of file (the file seems shorter).
    Eof,
    /// The next system call fails.
    Fail(Errno),
}

/// How a command fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails without any effect.
    Fail(Errno),
    /// Takes full effect, then reports the error (the completion was lost).
    FailAfterEffect(Errno),
    /// A write lands only its first `bytes` bytes, then fails; other kinds fail without
    /// effect.
    Torn {
        /// Bytes that land.
        bytes: u64,
        /// The error reported.
        errno: Errno,
    },
    /// A read's first system call returns only `bytes` bytes; then `then`. Commands other
    /// than reads, and reads of at most `bytes` bytes, are not affected.
    ShortRead {
        /// Bytes the first call returns.
        bytes: u64,
        /// What the following calls do.
        then: AfterShort,
    },
    /// The file cannot grow: a command that would make it longer fails with the error (a
    /// write lands the part below the current end first); others are not affected.
    NoGrowth(Errno),
    /// Not a failure: the command waits this many microseconds, then takes effect
    /// normally (a slow or remote device; benchmarks use it for a base with latency).
    Delay {
        /// Microseconds.
        micros: u64,
    },
}

/// Which commands a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The file (`None`: any).
    pub file: Option<FileId>,
    /// The kinds of command.
    pub kinds: Kinds,
    /// Bytes of the file the command must touch (length changes and flushes touch all).
    pub range: Range<u64>,
    /// The first command number it may hit (commands are numbered from 0 in the order
    /// the host performs them).
    pub from: u64,
    /// How many commands it hits (`None`: every matching one from `from` on).
    pub times: Option<u64>,
    /// What happens to them.
    pub fault: Fault,
}

impl Rule {
    /// Command number `n`, whatever it is, fails with `fault`.
    pub fn at(n: u64, fault: Fault) -> Rule {
        Rule {
            times: Some(1),
            ..Rule::from(n, fault)
        }
    }

    /// Every command from number `n` on fails with `fault`.
    pub fn from(n: u64, fault: Fault) -> Rule {
        Rule {
            file: None,
            kinds: Kinds::ALL,
            range: 0..u64::MAX,
            from: n,
            times: None,
            fault,
        }
    }

    /// Only commands on `file`.
    pub fn on(self, file: FileId) -> Rule {
        Rule {
            file: Some(file),
            ..self
        }
    }

    /// Only commands of `kinds`.
    pub fn kinds(self, kinds: Kinds) -> Rule {
        Rule { kinds, ..self }
    }

    /// Only commands touching `range` of the file.
    pub fn within(self, range: Range<u64>) -> Rule {
        Rule { range, ..self }
    }

    /// At most `n` commands.
    pub fn times(self, n: u64) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }

    fn matches(&self, number: u64, cmd: &Cmd) -> bool {
        let touches = match cmd.kind {
            OpKind::Flush | OpKind::SetLength => true,
            _ => {
                cmd.offset < self.range.end && self.range.start < cmd.offset.saturating_add(cmd.len)
            }
        };
        number >= self.from
            && self.times != Some(0)
            && self.file.is_none_or(|f| f == cmd.file)
            && self.kinds.contains(cmd.kind)
            && touches
    }
}

/// One storage command as a fault plan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmd {
    /// The file.
    pub file: FileId,
    /// The kind.
    pub kind: OpKind,
    /// The offset (a length change: the new length).
    pub offset: u64,
    /// Bytes touched (0 for flushes and length changes).
    pub len: u64,
}

impl Cmd {
    /// The command engine operation `op` on `file` is, or `None` for operations without
    /// file I/O.
    pub fn of(file: FileId, op: &Op) -> Option<Cmd> {
        let kind = OpKind::of(op)?;
        let (offset, len) = match *op {
            Op::Read { offset, len, .. } | Op::Write { offset, len, .. } => (offset, len as u64),
            Op::WriteZeroes { offset, len, .. } => (offset, len),
            Op::SetLength { len } => (len, 0),
            _ => (0, 0),
        };
        Some(Cmd {
            file,
            kind,
            offset,
            len,
        })
    }
}

/// A fault that hit a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injected {
    /// The command's number.
    pub number: u64,
    /// The command.
    pub cmd: Cmd,
    /// The fault.
    pub fault: Fault,
}

/// What the host does with one command (a plain value: the error is made only when a
/// command fails, so performing commands without a plan costs nothing more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Performs it normally.
    None,
    /// Fails it without effect.
    Fail(Errno),
    /// Performs it, then fails it.
    AfterEffect(Errno),
    /// Writes its first `bytes` bytes, then fails it.
    Prefix {
        /// Bytes that land.
        bytes: u64,
        /// The error.
        errno: Errno,
    },
    /// The read's first system call returns `bytes` bytes; then `then`.
    ShortRead {
        /// Bytes the first call returns.
        bytes: u64,
        /// What the following calls do.
        then: AfterShort,
    },
    /// Waits this many microseconds, then performs it normally.
    Delay(u64),
}

impl Injection {
    /// Sleeps for a [`Injection::Delay`] and returns what to do then.
    fn after_delay(self) -> Injection {
        if let Injection::Delay(micros) = self {
            std::thread::sleep(std::time::Duration::from_micros(micros));
            return Injection::None;
        }
        self
    }
}

impl Injection {
    /// Carries out a write-like command of `len` bytes; `perform(n)` does its first `n`
    /// bytes.
    #[inline]
    pub fn write(self, len: u64, mut perform: impl FnMut(u64) -> io::Result<()>) -> io::Result<()> {
        match self.after_delay() {
            Injection::None | Injection::ShortRead { .. } | Injection::Delay(_) => perform(len),
            Injection::Fail(errno) => Err(errno.error()),
            Injection::AfterEffect(errno) => perform(len).and(Err(errno.error())),
            Injection::Prefix { bytes, errno } => {
                if bytes > 0 {
                    perform(bytes.min(len))?;
                }
                Err(errno.error())
            }
        }
    }

    /// Carries out a read of `buf.len()` bytes at `offset` through the host's read loop
    /// ([`read_full_with`]); `read` is one positioned read system call, `known_len` the
    /// file's length when the host must not take an early end for zeros.
    #[inline]
    pub fn read(
        self,
        read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
        offset: u64,
        buf: &mut [u8],
        known_len: Option<u64>,
    ) -> io::Result<()> {
        match self.after_delay() {
            Injection::None | Injection::Delay(_) => read_full_with(read, offset, buf, known_len),
            Injection::ShortRead { bytes, then } => {
                read_full_with(short_reader(read, bytes, then), offset, buf, known_len)
            }
            Injection::Fail(errno) | Injection::Prefix { errno, .. } => Err(errno.error()),
            Injection::AfterEffect(errno) => {
                read_full_with(read, offset, buf, known_len).and(Err(errno.error()))
            }
        }
    }

    /// Carries out a command without bytes (a flush, a length change).
    #[inline]
    pub fn other(self, perform: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match self.after_delay() {
            Injection::None | Injection::ShortRead { .. } | Injection::Delay(_) => perform(),
            Injection::Fail(errno) | Injection::Prefix { errno, .. } => Err(errno.error()),
            Injection::AfterEffect(errno) => perform().and(Err(errno.error())),
        }
    }
}

/// The faults of one test run. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    rules: Vec<Rule>,
    next: u64,
    injected: Vec<Injected>,
}

/// Faults logged at most (a persistent fault in a long run hits many commands).
const MAX_LOGGED: usize = 4096;

impl FaultPlan {
    /// A plan without faults (it only numbers commands).
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// A plan with one rule.
    pub fn with(rule: Rule) -> FaultPlan {
        let mut plan = FaultPlan::new();
        plan.push(rule);
        plan
    }

    /// Adds a rule (the first matching rule decides a command).
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The fault clears: no command fails from now on.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Commands numbered so far.
    pub fn commands(&self) -> u64 {
        self.next
    }

    /// The faults that hit commands, oldest first (at most the first 4096).
    pub fn injected(&self) -> &[Injected] {
        &self.injected
    }

    /// How many commands a fault hit.
    pub fn hits(&self) -> usize {
        self.injected.len()
    }

    /// Numbers command `cmd` and decides what happens to it. `file_len` (the file's
    /// current length) is asked only when a [`Fault::NoGrowth`] rule matches.
    pub fn decide(&mut self, cmd: Cmd, file_len: impl FnOnce() -> Option<u64>) -> Injection {
        let number = self.next;
        self.next += 1;
        let Some(index) = self.rules.iter().position(|r| r.matches(number, &cmd)) else {
            return Injection::None;
        };
        let fault = self.rules[index].fault;
        let writes = matches!(cmd.kind, OpKind::Write | OpKind::WriteZeroes);
        let injection = match fault {
            Fault::Fail(errno) => Injection::Fail(errno),
            Fault::FailAfterEffect(errno) => Injection::AfterEffect(errno),
            Fault::Torn { bytes, errno } if writes => Injection::Prefix {
                bytes: bytes.min(cmd.len),
                errno,
            },
            Fault::Torn { errno, .. } => Injection::Fail(errno),
            // A read no longer than `bytes` is not cut short: it is left alone and the
            // rule waits for one that is.
            Fault::ShortRead { bytes, then } if cmd.kind == OpKind::Read && bytes < cmd.len => {
                Injection::ShortRead { bytes, then }
            }
            Fault::ShortRead { .. } => return Injection::None,
            Fault::Delay { micros } => Injection::Delay(micros),
            Fault::NoGrowth(errno) => {
                let Some(len) = file_len() else {
                    return Injection::None;
                };
                match cmd.kind {
                    OpKind::SetLength if cmd.offset > len => Injection::Fail(errno),
                    _ if writes && cmd.offset.saturating_add(cmd.len) > len => Injection::Prefix {
                        bytes: len.saturating_sub(cmd.offset).min(cmd.len),
                        errno,
                    },
                    _ => return Injection::None,
                }
            }
        };
        if let Some(times) = self.rules[index].times.as_mut() {
            *times -= 1;
        }
        if self.injected.len() < MAX_LOGGED {
            self.injected.push(Injected { number, cmd, fault });
        }
        injection
    }
}

/// A positioned read system call with a short read injected: the first call returns at
/// most `bytes` bytes (through `read`), the calls after it do what `then` says.
pub fn short_reader<'a>(
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize> + 'a,
    bytes: u64,
    then: AfterShort,
) -> impl FnMut(&mut [u8], u64) -> io::Result<usize> + 'a {
    let mut first = true;
    move |buf, offset| {
        if std::mem::take(&mut first) {
            let n = usize::try_from(bytes).unwrap_or(usize::MAX).min(buf.len());
            // A call for zero bytes would look like end of file to the loop.
            if n == 0 {
                return match then {
                    AfterShort::Continue => read(buf, offset),
                    AfterShort::Eof => Ok(0),
                    AfterShort::Fail(errno) => Err(errno.error()),
                };
            }
            return read(&mut buf[..n], offset);
        }
        match then {
            AfterShort::Continue => read(buf, offset),
            AfterShort::Eof => Ok(0),
            AfterShort::Fail(errno) => Err(errno.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, len: u64) -> Cmd {
        Cmd {
            file: FileId::Image,
            kind: OpKind::Write,
            offset,
            len,
        }
    }

    #[test]
    fn a_rule_hits_only_its_command_number_and_only_as_often_as_told() {
        let mut plan = FaultPlan::with(Rule::at(2, Fault::Fail(Errno::Eio)));
        let fates: Vec<bool> = (0..5)
            .map(|_| !matches!(plan.decide(write(0, 512), || None), Injection::None))
            .collect();
        assert_eq!(fates, [false, false, true, false, false]);
        assert_eq!(plan.hits(), 1);
        assert_eq!(plan.injected()[0].number, 2);
    }

    #[test]
    fn a_full_file_lands_the_part_of_a_write_below_its_end() {
        let mut plan = FaultPlan::with(Rule::from(0, Fault::NoGrowth(Errno::NoSpace)));
        match plan.decide(write(4096, 8192), || Some(8192)) {
            Injection::Prefix { bytes, errno } => {
                assert_eq!(bytes, 4096);
                assert_eq!(errno.error().raw_os_error(), Some(libc::ENOSPC));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan.decide(write(0, 4096), || Some(8192)),
            Injection::None
        ));
        let shrink = Cmd {
            kind: OpKind::SetLength,
            offset: 4096,
            len: 0,
            ..write(0, 0)
        };
        assert!(matches!(
            plan.decide(shrink, || Some(8192)),
            Injection::None
        ));
    }

    #[test]
    fn a_rule_for_one_file_and_range_leaves_the_others_alone() {
        let rule = Rule::from(0, Fault::Fail(Errno::Eio))
            .on(FileId::Base)
            .kinds(Kinds::READS)
            .within(4096..8192);
        let mut plan = FaultPlan::with(rule);
        let read = |file, offset| Cmd {
            file,
            kind: OpKind::Read,
            offset,
            len: 512,
        };
        assert!(matches!(
            plan.decide(read(FileId::Image, 4096), || None),
            Injection::None
        ));
        assert!(matches!(
            plan.decide(read(FileId::Base, 0), || None),
            Injection::None
        ));
        assert!(matches!(
            plan.decide(read(FileId::Base, 8000), || None),
            Injection::Fail(_)
        ));
        plan.clear();
        assert!(matches!(
            plan.decide(read(FileId::Base, 8000), || None),
            Injection::None
        ));
    }

    #[test]
    fn a_short_reader_returns_part_then_what_it_was_told() {
        let source = [7u8; 100];
        let read = |buf: &mut [u8], offset: u64| {
            let at = offset as usize;
            let n = buf.len().min(source.len() - at);
            buf[..n].copy_from_slice(&source[at..at + n]);
            Ok(n)
        };
        let mut buf = [0u8; 64];
        let mut short = short_reader(read, 10, AfterShort::Eof);
        assert_eq!(short(&mut buf, 0).unwrap(), 10);
        assert_eq!(short(&mut buf[10..], 10).unwrap(), 0);
        let mut failing = short_reader(read, 10, AfterShort::Fail(Errno::Eio));
        assert_eq!(failing(&mut buf, 0).unwrap(), 10);
        assert!(failing(&mut buf[10..], 10).is_err());
    }
}
