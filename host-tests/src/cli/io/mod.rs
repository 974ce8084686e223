//! `fvd-img io`: qemu-io's command language over an FVD or QED image or a raw file. Each
//! `-c` command (or, without `-c`, each line of standard input) runs in order; a failing
//! command is reported and the next one runs, and the exit status is 1 if anything failed
//! (a pattern mismatch included), like qemu-io. This module holds the arguments, the
//! session and the read/write/discard/flush commands; `aio` the queued requests,
//! `vectored` readv/writev, `allocation` alloc/map, `image` length/info/truncate,
//! `words` the command-line parsing and `report` qemu-io's output lines.

mod aio;
mod allocation;
mod image;
pub mod report;
mod vectored;
mod words;

use super::disk::{Disk, DiskFormat, SECTOR};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use aio::Queued;
use clap::{Args, ValueEnum};
use report::{dump, report};
use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
pub use words::MAX_REQUEST_BYTES;
use words::{check_length, getopt, offset_and_len, parse_pattern, Parsed, TooLong};

/// The cache modes of `-t`, by QEMU's names: whether the host page cache is bypassed
/// (`O_DIRECT`) and when writes are durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Bypasses the host page cache (O_DIRECT); writes are durable after a flush
    None,
    /// Writes are durable after a flush (the default)
    #[default]
    Writeback,
    /// Every write command is followed by a flush
    Writethrough,
    /// Bypasses the host page cache (O_DIRECT); every write command is followed by a flush
    Directsync,
    /// Writes are durable after a flush; like writeback here
    Unsafe,
}

impl CacheMode {
    /// A cache mode given as text (`convert -t`, `commit -t`), with qemu-img's message
    /// for a name it does not know.
    pub fn parse(text: &str) -> Result<CacheMode, CliError> {
        <CacheMode as ValueEnum>::from_str(text, false)
            .map_err(|_| CliError::Usage(format!("Invalid cache option: {text}")))
    }

    /// True when every write command is followed by a flush.
    pub const fn writes_through(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }

    /// True when reads and writes bypass the host page cache (`O_DIRECT`).
    pub const fn bypasses_page_cache(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }
}

/// Arguments of `fvd-img io`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Commands (qemu-io syntax; OFF and LEN take suffixes k, M, G...; any alignment: partial \
sectors of an image are read, merged and written whole, except by aio_read/aio_write):
  read [-P PAT] [-v] [-q] OFF LEN        read, verify every byte is PAT, hex-dump
  readv [-P PAT] [-v] [-q] OFF LEN...    read LENs laid end to end from OFF as one request
  write [-P PAT | -z [-u] | -s FILE] [-q] OFF LEN
                                         write PAT (default 0xcd), zeros (-u: may unmap) or
                                         FILE's first LEN bytes; -c (compressed) is refused
  writev [-P PAT] [-q] OFF LEN...        write LENs laid end to end from OFF as one request
  discard [-q] OFF LEN                   discard (reads back as zeros)
  flush                                  make completed writes durable
  aio_read [-P PAT] [-v] [-q] OFF LEN    queue a read (sector-aligned on images)
  aio_write [-P PAT | -z] [-q] OFF LEN   queue a write (sector-aligned on images)
  aio_flush                              wait for queued requests, then flush
  alloc OFF [LEN]                        bytes of the range the image itself holds
  map                                    the runs the image holds and does not hold
  info                                   format and cluster size
  length                                 print the disk size
  truncate SIZE                          resize the disk (as fvd-img resize --shrink)
  sleep MS                               wait MS milliseconds (the image stays open and locked)
  help, quit
Without -c, commands are read from standard input. The exit status is 1 when any command failed.")]
pub struct IoArgs {
    /// Format of FILE: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Cache mode: none, writeback, writethrough, directsync or unsafe
    #[arg(short = 't', value_enum, value_name = "CACHE", default_value_t = CacheMode::Writeback)]
    pub cache: CacheMode,
    /// Same as -t none (qemu-io's --nocache)
    #[arg(short = 'n', long = "nocache")]
    pub nocache: bool,
    /// Open read-only
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// Copy data read from the base image into the image (default: the image's
    /// copy_on_read setting; needs a writable FVD image with a base)
    #[arg(
        short = 'C',
        long = "cor",
        alias = "copy-on-read",
        conflicts_with = "no_cor"
    )]
    pub cor: bool,
    /// Do not copy data read from the base image into the image, whatever the image's
    /// copy_on_read setting
    #[arg(long = "no-cor")]
    pub no_cor: bool,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// Command to run (repeatable, run in order)
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "CMD",
        allow_hyphen_values = true
    )]
    pub commands: Vec<String>,
    /// The image or raw file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// QEMU's warning for a raw file whose format was probed and which is opened for writing
/// (word for word, so scripts that look for it find it).
pub fn probed_raw_warning(path: &std::path::Path) -> String {
    format!(
        "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on \
         block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions.\n",
        path.display()
    )
}

/// qemu-io's default write pattern.
pub(crate) const DEFAULT_PATTERN: u8 = 0xcd;

/// Bytes a synchronous read or write handles at once (buffers stay small).
const IO_PIECE: u64 = 16 << 20;

/// Runs `fvd-img io`.
pub fn run(args: &IoArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let format = DiskFormat::given_or_probed(args.format.as_deref(), &args.file)?;
    let copy_on_read = match (args.cor, args.no_cor) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    args.share.check_read_only(!args.read_only)?;
    let gate = open_flags::gate(args.share, args.external);
    let mut disk = Disk::open_gated(&args.file, format, !args.read_only, copy_on_read, gate)?;
    let direct = args.nocache || args.cache.bypasses_page_cache();
    if direct {
        disk.bypass_page_cache()?;
    }
    if args.format.is_none() && format == DiskFormat::Raw && !args.read_only {
        // QEMU's warning and restriction for a raw file opened for writing by probing.
        write!(err, "{}", probed_raw_warning(&args.file)).map_err(CliError::Output)?;
        disk.restrict_first_sector();
    }
    let mut session = Session {
        disk: Some(disk),
        reopen: Reopen {
            path: args.file.clone(),
            format,
            writable: !args.read_only,
            copy_on_read,
            gate,
            restricted: args.format.is_none() && format == DiskFormat::Raw && !args.read_only,
            direct,
        },
        write_through: !args.nocache && args.cache.writes_through(),
        queue: VecDeque::new(),
        out,
        err,
        failed: false,
    };
    if args.commands.is_empty() {
        let stdin = std::io::stdin();
        let interactive = stdin.is_terminal();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                write!(session.out, "fvd-img io> ").map_err(CliError::Output)?;
                session.out.flush().map_err(CliError::Output)?;
            }
            let Some(line) = lines.next() else { break };
            let line = line.map_err(|e| CliError::io("read", std::path::Path::new("stdin"), e))?;
            if !session.command(&line)? {
                break;
            }
        }
    } else {
        for command in &args.commands {
            if !session.command(command)? {
                break;
            }
        }
    }
    session.drain()?;
    let Session {
        disk, failed, err, ..
    } = session;
    let mut failed = failed;
    if let Some(Err(e)) = disk.map(Disk::close) {
        let _ = writeln!(err, "{}: {e}", super::PROGRAM);
        failed = true;
    }
    if failed {
        Err(CliError::Exit(super::EXIT_FAILURE))
    } else {
        Ok(())
    }
}

struct Session<'a> {
    /// The open disk; `None` after a `truncate` could not reopen it.
    disk: Option<Disk>,
    /// How to open the disk again (after `truncate`).
    reopen: Reopen,
    write_through: bool,
    queue: VecDeque<Queued>,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    failed: bool,
}

/// What `io` opened, to open it again after `truncate`.
struct Reopen {
    path: PathBuf,
    format: DiskFormat,
    writable: bool,
    copy_on_read: Option<bool>,
    gate: crate::host::gate::OpenGate,
    restricted: bool,
    /// Bypass the host page cache (`-t none`, `-t directsync`, `-n`).
    direct: bool,
}

impl Session<'_> {
    /// The open disk, or the reason there is none.
    fn disk(&mut self) -> Result<&mut Disk, String> {
        self.disk
            .as_mut()
            .ok_or_else(|| "no image is open (it could not be reopened)".to_string())
    }

    /// Reports a failed command on stderr and remembers the failure.
    fn fail(&mut self, message: &str) -> Result<(), CliError> {
        self.failed = true;
        self.out.flush().map_err(CliError::Output)?;
        writeln!(self.err, "{}: {message}", super::PROGRAM).map_err(CliError::Output)
    }

    fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.out
            .write_all(text.as_bytes())
            .map_err(CliError::Output)
    }

    /// Runs one command line; false when it asks to quit. Only failures to print end
    /// the session with an error.
    fn command(&mut self, line: &str) -> Result<bool, CliError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&name, rest)) = words.split_first() else {
            return Ok(true);
        };
        if name.starts_with('#') {
            return Ok(true);
        }
        let result = match name {
            "quit" | "q" | "exit" => return Ok(false),
            "help" | "?" => {
                self.print(HELP)?;
                Ok(())
            }
            "length" | "len" => self.length(rest),
            "read" | "r" => self.read(rest),
            "write" | "w" => self.write(rest),
            "discard" | "d" => self.discard(rest),
            "flush" | "f" => self.flush_command(rest),
            "aio_read" => self.aio_read(rest),
            "aio_write" => self.aio_write(rest),
            "aio_flush" => self.aio_flush(rest),
            "readv" => self.readv(rest),
            "writev" => self.writev(rest),
            "alloc" => self.alloc(rest),
            "map" => self.map(rest),
            "info" => self.info(rest),
            "truncate" | "t" => self.truncate(rest),
            "sleep" => sleep(rest),
            other => Err(format!("command \"{other}\" not found (try 'help')")),
        };
        match result {
            Ok(()) => Ok(true),
            Err(message) => {
                self.fail(&message)?;
                Ok(true)
            }
        }
    }

    /// Checks that OFF and LEN suit the disk: sector multiples for FVD images.
    fn check_alignment(&self, cmd: &str, offset: u64, len: u64) -> Result<(), String> {
        if self
            .disk
            .as_ref()
            .is_some_and(|disk| disk.format().is_image())
        {
            for (what, value) in [("offset", offset), ("length", len)] {
                if value % SECTOR != 0 {
                    return Err(format!(
                        "{cmd}: {what} {value} is not a multiple of {SECTOR} \
                         (FVD images are addressed in 512-byte sectors)"
                    ));
                }
            }
        }
        Ok(())
    }

    fn mismatch(&mut self, offset: u64, len: u64) -> Result<(), CliError> {
        self.failed = true;
        let text = format!("Pattern verification failed at offset {offset}, {len} bytes\n");
        self.print(&text)
    }

    fn output_error(e: CliError) -> String {
        e.to_string()
    }

    fn read(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "vq", "P").map_err(|e| format!("read: {e}"))?;
        let (offset, len) = offset_and_len("read", &parsed)?;
        check_length(&parsed, len, TooLong::Length)?;
        self.read_range(&parsed, offset, len)
    }

    /// The body of `read` and `readv`: reads `len` bytes at `offset` with the `-P`, `-v`
    /// and `-q` of `parsed`, and reports.
    fn read_range(&mut self, parsed: &Parsed, offset: u64, len: u64) -> Result<(), String> {
        let pattern = parsed.value('P').map(parse_pattern).transpose()?;
        let (verbose, quiet) = (parsed.flag('v'), parsed.flag('q'));
        self.disk()?
            .check_read(offset, len)
            .map_err(|e| format!("read failed: {e}"))?;
        let started = Instant::now();
        // qemu-io reports a mismatch before the dump: with both, the data is read twice
        // (once to compare, once to dump) rather than the dump held in memory.
        let mut matched = true;
        self.read_pieces(offset, len, |out, at, piece| match pattern {
            Some(p) => {
                matched &= piece.iter().all(|&b| b == p);
                Ok(())
            }
            None if verbose => dump(out, at, piece),
            None => Ok(()),
        })?;
        let elapsed = started.elapsed();
        if !matched {
            self.mismatch(offset, len).map_err(Self::output_error)?;
        }
        if verbose && pattern.is_some() {
            self.read_pieces(offset, len, |out, at, piece| dump(out, at, piece))?;
        }
        if !quiet {
            self.print(&report("read", offset, len, 1, elapsed))
                .map_err(Self::output_error)?;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` in pieces of at most [`IO_PIECE`], handing each (with
    /// the output and its offset) to `each`.
    fn read_pieces(
        &mut self,
        offset: u64,
        len: u64,
        mut each: impl FnMut(&mut dyn Write, u64, &[u8]) -> Result<(), CliError>,
    ) -> Result<(), String> {
        let mut buf = Vec::new();
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(IO_PIECE);
            buf.resize(n as usize, 0);
            self.disk()?
                .read(at, &mut buf)
                .map_err(|e| format!("read failed: {e}"))?;
            each(&mut *self.out, at, &buf).map_err(Self::output_error)?;
            at += n;
        }
        Ok(())
    }

    fn write(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "zqcu", "Ps").map_err(|e| format!("write: {e}"))?;
        let (offset, len) = offset_and_len("write", &parsed)?;
        check_length(&parsed, len, TooLong::LengthWithoutN)?;
        self.write_range(&parsed, offset, len)
    }

    /// The body of `write` and `writev`: writes `len` bytes at `offset` as `parsed` asks
    /// (`-P` pattern, `-z` zeros with `-u` letting them be unmapped, `-s FILE` data from a
    /// file, `-c` compressed, which no format here supports, `-q`), and reports.
    fn write_range(&mut self, parsed: &Parsed, offset: u64, len: u64) -> Result<(), String> {
        let zeroes = parsed.flag('z');
        let source = parsed.value('s');
        if zeroes && (parsed.value('P').is_some() || source.is_some()) {
            return Err("write: -z and -P/-s cannot be specified at the same time".into());
        }
        if parsed.flag('u') && !zeroes {
            return Err("write: -u requires -z to be specified".into());
        }
        if source.is_some() && parsed.value('P').is_some() {
            return Err("write: -s and -P cannot be specified at the same time".into());
        }
        if parsed.flag('c') {
            return Err("write failed: Operation not supported (compressed writes)".into());
        }
        let pattern = parsed
            .value('P')
            .map(parse_pattern)
            .transpose()?
            .unwrap_or(DEFAULT_PATTERN);
        let data = source.map(|path| read_source(path, len)).transpose()?;
        let started = Instant::now();
        if len > 0 {
            let disk = self.disk()?;
            if zeroes {
                // -u lets a format unmap the range; QEMU's QED driver records zero
                // clusters whatever the flag says, and so does this one.
                let unmap = parsed.flag('u') && disk.format() != DiskFormat::Qed;
                disk.write_zeroes(offset, len, unmap)
                    .map_err(|e| format!("write failed: {e}"))?;
            } else {
                disk.check_write(offset, len)
                    .map_err(|e| format!("write failed: {e}"))?;
                let piece = vec![pattern; len.min(IO_PIECE) as usize];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(IO_PIECE) as usize;
                    let bytes = match &data {
                        Some(data) => &data[(at - offset) as usize..][..n],
                        None => &piece[..n],
                    };
                    disk.write(at, bytes)
                        .map_err(|e| format!("write failed: {e}"))?;
                    at += n as u64;
                }
            }
            self.write_through_flush()?;
        }
        if !parsed.flag('q') {
            self.print(&report("wrote", offset, len, 1, started.elapsed()))
                .map_err(Self::output_error)?;
        }
        Ok(())
    }

    fn discard(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "q", "").map_err(|e| format!("discard: {e}"))?;
        let (offset, len) = offset_and_len("discard", &parsed)?;
        check_length(&parsed, len, TooLong::Length)?;
        let started = Instant::now();
        if len > 0 {
            self.disk()?
                .write_zeroes(offset, len, true)
                .map_err(|e| format!("discard failed: {e}"))?;
            self.write_through_flush()?;
        }
        if !parsed.flag('q') {
            self.print(&report("discard", offset, len, 1, started.elapsed()))
                .map_err(Self::output_error)?;
        }
        Ok(())
    }

    fn write_through_flush(&mut self) -> Result<(), String> {
        if self.write_through {
            self.disk()?
                .flush()
                .map_err(|e| format!("flush failed: {e}"))?;
        }
        Ok(())
    }

    fn flush_command(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("flush: takes no arguments".into());
        }
        self.disk()?
            .flush()
            .map_err(|e| format!("flush failed: {e}"))
    }
}

/// The first `len` bytes of the file at `path` (`write -s`): the file must hold them.
fn read_source(path: &str, len: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("write: cannot open {path}: {e}"))?;
    let mut data = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, 0)
        .map_err(|e| format!("write: cannot read {len} bytes of {path}: {e}"))?;
    Ok(data)
}

/// qemu-io's `sleep MS`: waits with the image open (and locked).
fn sleep(words: &[&str]) -> Result<(), String> {
    let [ms] = words else {
        return Err("sleep: expects one argument, the time in milliseconds".into());
    };
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("sleep: invalid number of milliseconds '{ms}'"))?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

const HELP: &str = "\
read [-P PAT] [-v] [-q] OFF LEN -- read LEN bytes at OFF; -P verifies every byte is PAT, -v dumps them, -q prints no report
readv [-P PAT] [-v] [-q] OFF LEN [LEN...] -- read the LENs laid end to end from OFF as one request
write [-P PAT | -z [-u] | -s FILE] [-q] OFF LEN -- write LEN bytes of PAT (default 0xcd), zeros with -z (-u: may unmap), or FILE's first LEN bytes, at OFF
writev [-P PAT] [-q] OFF LEN [LEN...] -- write the LENs laid end to end from OFF as one request
discard [-q] OFF LEN -- discard LEN bytes at OFF (they read back as zeros)
flush -- make every completed write durable
aio_read [-P PAT] [-v] [-q] OFF LEN -- queue a read; reported when it completes
aio_write [-P PAT | -z] [-q] OFF LEN -- queue a write; reported when it completes
aio_flush -- wait for every queued request, then flush
alloc OFF [LEN] -- how many bytes of the range the image itself holds
map -- the runs the image holds and does not hold
info -- format name and cluster size
length -- print the size of the disk
truncate SIZE -- resize the disk
sleep MS -- wait MS milliseconds with the image open
help -- this list
quit -- stop (the remaining commands are not run)
";
