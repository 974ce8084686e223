//! `fvd-img io`: qemu-io's command language over an FVD or QED image or a raw file. Each
//! `-c` command (or, without `-c`, each line of standard input) runs in order; a failing
//! command is reported and the next one runs, and the exit status is 1 if anything failed
//! (a pattern mismatch included), like qemu-io. `aio_read` and `aio_write` queue
//! requests in the engine without waiting; `aio_flush` (or the end of the commands)
//! waits for them in submission order, reports each, then flushes.

use super::disk::{Disk, DiskFormat, Pending, SECTOR};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use super::size::parse_size;
use clap::{Args, ValueEnum};
use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The cache modes of `-t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Write-through: every write command is followed by a flush.
    None,
    /// Writes are durable after a flush (the default).
    #[default]
    Writeback,
    /// Same as none.
    Writethrough,
}

/// Arguments of `fvd-img io`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Commands (qemu-io syntax; OFF and LEN take suffixes k, M, G...; FVD and QED images need multiples of 512):
  read [-P PAT] [-v] [-q] OFF LEN        read, verify every byte is PAT, hex-dump
  write [-P PAT | -z] [-q] OFF LEN       write PAT (default 0xcd) or zeros
  discard [-q] OFF LEN                   discard (reads back as zeros)
  flush                                  make completed writes durable
  aio_read [-P PAT] [-v] [-q] OFF LEN    queue a read
  aio_write [-P PAT | -z] [-q] OFF LEN   queue a write
  aio_flush                              wait for queued requests, then flush
  length                                 print the disk size
  sleep MS                               wait MS milliseconds (the image stays open and locked)
  help, quit
Without -c, commands are read from standard input. The exit status is 1 when any command failed.")]
pub struct IoArgs {
    /// Format of FILE: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Cache mode: none (flush after every write) or writeback
    #[arg(short = 't', value_enum, value_name = "CACHE", default_value_t = CacheMode::Writeback)]
    pub cache: CacheMode,
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
const DEFAULT_PATTERN: u8 = 0xcd;

/// Longest request qemu-io accepts (QEMU's `BDRV_REQUEST_MAX_BYTES`): longer ones are
/// refused with qemu-io's messages, so no command allocates more than this.
pub const MAX_REQUEST_BYTES: u64 = 2_147_483_136;

/// How a command names a request that is too long, in qemu-io's words.
#[derive(Clone, Copy)]
enum TooLong {
    /// `read`, `discard`: "length cannot exceed N, given LEN".
    Length,
    /// `write`: "length cannot exceed N without -n, given LEN".
    LengthWithoutN,
    /// `aio_read`, `aio_write`: "Argument 'LEN' exceeds maximum size N".
    Argument,
}

/// Refuses `len` past [`MAX_REQUEST_BYTES`] with qemu-io's message for `kind`.
fn check_length(parsed: &Parsed, len: u64, kind: TooLong) -> Result<(), String> {
    if len <= MAX_REQUEST_BYTES {
        return Ok(());
    }
    let given = parsed.operands.get(1).map_or("", String::as_str);
    Err(match kind {
        TooLong::Length => format!("length cannot exceed {MAX_REQUEST_BYTES}, given {given}"),
        TooLong::LengthWithoutN => {
            format!("length cannot exceed {MAX_REQUEST_BYTES} without -n, given {given}")
        }
        TooLong::Argument => format!("Argument '{given}' exceeds maximum size {MAX_REQUEST_BYTES}"),
    })
}

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
    if args.format.is_none() && format == DiskFormat::Raw && !args.read_only {
        // QEMU's warning and restriction for a raw file opened for writing by probing.
        write!(err, "{}", probed_raw_warning(&args.file)).map_err(CliError::Output)?;
        disk.restrict_first_sector();
    }
    let mut session = Session {
        disk,
        write_through: args.cache != CacheMode::Writeback,
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
    if let Err(e) = disk.close() {
        let _ = writeln!(err, "{}: {e}", super::PROGRAM);
        failed = true;
    }
    if failed {
        Err(CliError::Exit(super::EXIT_FAILURE))
    } else {
        Ok(())
    }
}

/// A request queued by `aio_read` or `aio_write`.
struct Queued {
    op: AioOp,
    offset: u64,
    len: u64,
    started: Instant,
    pending: Pending,
}

enum AioOp {
    Read {
        pattern: Option<u8>,
        verbose: bool,
        quiet: bool,
    },
    Write {
        quiet: bool,
    },
}

/// Options and operands of one command, parsed getopt-style.
#[derive(Debug, Default)]
struct Parsed {
    flags: Vec<char>,
    values: Vec<(char, String)>,
    operands: Vec<String>,
}

impl Parsed {
    fn flag(&self, c: char) -> bool {
        self.flags.contains(&c)
    }

    fn value(&self, c: char) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `words` into options (`flags` without a value, `valued` with one, given as
/// `-P 1` or `-P1`, several flags in one word) and operands. `--` ends the options.
fn getopt(words: &[&str], flags: &str, valued: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut iter = words.iter();
    while let Some(word) = iter.next() {
        if *word == "--" {
            parsed.operands.extend(iter.by_ref().map(|w| w.to_string()));
            break;
        }
        let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) else {
            parsed.operands.push(word.to_string());
            continue;
        };
        for (i, c) in cluster.char_indices() {
            if flags.contains(c) {
                parsed.flags.push(c);
            } else if valued.contains(c) {
                let rest = &cluster[i + c.len_utf8()..];
                let value = if rest.is_empty() {
                    iter.next()
                        .map(|w| w.to_string())
                        .ok_or_else(|| format!("option requires an argument -- '{c}'"))?
                } else {
                    rest.to_string()
                };
                parsed.values.push((c, value));
                break;
            } else {
                return Err(format!("invalid option -- '{c}'"));
            }
        }
    }
    Ok(parsed)
}

/// A pattern byte as qemu-io takes it: decimal, `0x` hexadecimal or `0` octal, 0..=255.
fn parse_pattern(text: &str) -> Result<u8, String> {
    let bad = || format!("{text} is not a valid pattern byte");
    let value = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8)
    } else {
        text.parse::<u32>()
    }
    .map_err(|_| bad())?;
    u8::try_from(value).map_err(|_| bad())
}

/// A byte count the way qemu-io's reports print it: three decimals and a binary unit,
/// with `.000` dropped (`64 KiB`, `1.500 KiB`, `512 bytes`).
pub fn report_size(value: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1_152_921_504_606_846_976.0, "EiB"),
        (1_125_899_906_842_624.0, "PiB"),
        (1_099_511_627_776.0, "TiB"),
        (1_073_741_824.0, "GiB"),
        (1_048_576.0, "MiB"),
        (1024.0, "KiB"),
    ];
    let (scaled, unit) = UNITS
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map_or((value, "bytes"), |(scale, unit)| (value / scale, *unit));
    let text = format!("{scaled:.3}");
    let text = text.strip_suffix(".000").unwrap_or(&text);
    format!("{text} {unit}")
}

/// An elapsed time the way qemu-io prints it: `00.01 sec`, `1:02.50`, `1:02:03.25`.
pub fn report_time(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let hundredths = elapsed.subsec_millis() / 10;
    if secs >= 3600 {
        format!(
            "{}:{:02}:{:02}.{hundredths:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    } else if secs >= 60 {
        format!("{}:{:02}.{hundredths:02}", secs / 60, secs % 60)
    } else {
        format!("{secs:02}.{hundredths:02} sec")
    }
}

/// The two report lines of a finished command.
fn report(verb: &str, offset: u64, len: u64, ops: u32, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{verb} {len}/{len} bytes at offset {offset}\n{}, {ops} ops; {} ({}/sec and {:.4} ops/sec)\n",
        report_size(len as f64),
        report_time(elapsed),
        report_size(len as f64 / secs),
        f64::from(ops) / secs
    )
}

/// Hex dump lines like qemu-io's `-v`: offset, 16 bytes in hex, their printable form.
fn dump(out: &mut dyn Write, offset: u64, bytes: &[u8]) -> Result<(), CliError> {
    let mut text = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        text += &format!("{:08x}:  ", offset + i as u64 * 16);
        for b in line {
            text += &format!("{b:02x} ");
        }
        text.push(' ');
        text.extend(line.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                char::from(b)
            } else {
                '.'
            }
        }));
        text.push('\n');
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// One command's parsed operands: OFF and LEN.
fn offset_and_len(cmd: &str, parsed: &Parsed) -> Result<(u64, u64), String> {
    let [off, len] = parsed.operands.as_slice() else {
        return Err(format!(
            "{cmd}: expected OFF and LEN, got {} argument{}",
            parsed.operands.len(),
            if parsed.operands.len() == 1 { "" } else { "s" }
        ));
    };
    let offset = parse_size(off).map_err(|e| format!("{cmd}: invalid offset: {e}"))?;
    let len = parse_size(len).map_err(|e| format!("{cmd}: invalid length: {e}"))?;
    Ok((offset, len))
}

struct Session<'a> {
    disk: Disk,
    write_through: bool,
    queue: VecDeque<Queued>,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    failed: bool,
}

impl Session<'_> {
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
            "length" | "len" => {
                let text = format!("{}\n", report_size(self.disk.size() as f64));
                self.print(&text)?;
                Ok(())
            }
            "read" | "r" => self.read(rest),
            "write" | "w" => self.write(rest),
            "discard" | "d" => self.discard(rest),
            "flush" | "f" => self.flush_command(rest),
            "aio_read" => self.aio_read(rest),
            "aio_write" => self.aio_write(rest),
            "aio_flush" => self.aio_flush(rest),
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
        if self.disk.format().is_image() {
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
        let pattern = parsed.value('P').map(parse_pattern).transpose()?;
        let (offset, len) = offset_and_len("read", &parsed)?;
        check_length(&parsed, len, TooLong::Length)?;
        self.check_alignment("read", offset, len)?;
        let (verbose, quiet) = (parsed.flag('v'), parsed.flag('q'));
        self.disk
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
            self.disk
                .read(at, &mut buf)
                .map_err(|e| format!("read failed: {e}"))?;
            each(&mut *self.out, at, &buf).map_err(Self::output_error)?;
            at += n;
        }
        Ok(())
    }

    fn write(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "zq", "P").map_err(|e| format!("write: {e}"))?;
        let zeroes = parsed.flag('z');
        if zeroes && parsed.value('P').is_some() {
            return Err("write: -z and -P cannot be specified at the same time".into());
        }
        let pattern = parsed
            .value('P')
            .map(parse_pattern)
            .transpose()?
            .unwrap_or(DEFAULT_PATTERN);
        let (offset, len) = offset_and_len("write", &parsed)?;
        check_length(&parsed, len, TooLong::LengthWithoutN)?;
        self.check_alignment("write", offset, len)?;
        let started = Instant::now();
        if len > 0 {
            if zeroes {
                self.disk
                    .write_zeroes(offset, len, false)
                    .map_err(|e| format!("write failed: {e}"))?;
            } else {
                self.disk
                    .check_write(offset, len)
                    .map_err(|e| format!("write failed: {e}"))?;
                let piece = vec![pattern; len.min(IO_PIECE) as usize];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(IO_PIECE) as usize;
                    self.disk
                        .write(at, &piece[..n])
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
        self.check_alignment("discard", offset, len)?;
        let started = Instant::now();
        if len > 0 {
            self.disk
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
            self.disk
                .flush()
                .map_err(|e| format!("flush failed: {e}"))?;
        }
        Ok(())
    }

    fn flush_command(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("flush: takes no arguments".into());
        }
        self.disk.flush().map_err(|e| format!("flush failed: {e}"))
    }

    fn aio_read(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "vq", "P").map_err(|e| format!("aio_read: {e}"))?;
        let pattern = parsed.value('P').map(parse_pattern).transpose()?;
        let (offset, len) = offset_and_len("aio_read", &parsed)?;
        check_length(&parsed, len, TooLong::Argument)?;
        self.check_alignment("aio_read", offset, len)?;
        if len == 0 {
            return Err("aio_read: length must not be 0".into());
        }
        let started = Instant::now();
        let pending = self
            .disk
            .submit_read(offset, len)
            .map_err(|e| format!("aio_read failed: {e}"))?;
        self.queue.push_back(Queued {
            op: AioOp::Read {
                pattern,
                verbose: parsed.flag('v'),
                quiet: parsed.flag('q'),
            },
            offset,
            len,
            started,
            pending,
        });
        Ok(())
    }

    fn aio_write(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "zq", "P").map_err(|e| format!("aio_write: {e}"))?;
        let zeroes = parsed.flag('z');
        if zeroes && parsed.value('P').is_some() {
            return Err("aio_write: -z and -P cannot be specified at the same time".into());
        }
        let pattern = parsed
            .value('P')
            .map(parse_pattern)
            .transpose()?
            .unwrap_or(DEFAULT_PATTERN);
        let (offset, len) = offset_and_len("aio_write", &parsed)?;
        if !zeroes {
            // qemu-io writes zeros of any length without a buffer.
            check_length(&parsed, len, TooLong::Argument)?;
        }
        self.check_alignment("aio_write", offset, len)?;
        if len == 0 {
            return Err("aio_write: length must not be 0".into());
        }
        let started = Instant::now();
        let pending = if zeroes {
            self.disk.submit_write_zeroes(offset, len)
        } else {
            self.disk
                .check_write(offset, len)
                .and_then(|()| self.disk.submit_write(offset, vec![pattern; len as usize]))
        }
        .map_err(|e| format!("aio_write failed: {e}"))?;
        self.queue.push_back(Queued {
            op: AioOp::Write {
                quiet: parsed.flag('q'),
            },
            offset,
            len,
            started,
            pending,
        });
        Ok(())
    }

    /// Waits for every queued request in submission order, reporting each.
    fn drain(&mut self) -> Result<(), CliError> {
        let mut wrote = false;
        while let Some(queued) = self.queue.pop_front() {
            let result = self.disk.wait(queued.pending);
            let elapsed = queued.started.elapsed();
            match (queued.op, result) {
                (AioOp::Read { .. }, Err(e)) => self.fail(&format!("aio_read failed: {e}"))?,
                (AioOp::Write { .. }, Err(e)) => self.fail(&format!("aio_write failed: {e}"))?,
                (
                    AioOp::Read {
                        pattern,
                        verbose,
                        quiet,
                    },
                    Ok(bytes),
                ) => {
                    if pattern.is_some_and(|p| bytes.iter().any(|&b| b != p)) {
                        self.mismatch(queued.offset, queued.len)?;
                    }
                    if verbose {
                        dump(self.out, queued.offset, &bytes)?;
                    }
                    if !quiet {
                        self.print(&report("read", queued.offset, queued.len, 1, elapsed))?;
                    }
                }
                (AioOp::Write { quiet }, Ok(_)) => {
                    wrote = true;
                    if !quiet {
                        self.print(&report("wrote", queued.offset, queued.len, 1, elapsed))?;
                    }
                }
            }
        }
        if wrote && self.write_through {
            if let Err(e) = self.disk.flush() {
                self.fail(&format!("flush failed: {e}"))?;
            }
        }
        Ok(())
    }

    fn aio_flush(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("aio_flush: takes no arguments".into());
        }
        self.drain().map_err(Self::output_error)?;
        self.disk
            .flush()
            .map_err(|e| format!("aio_flush failed: {e}"))
    }
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
write [-P PAT | -z] [-q] OFF LEN -- write LEN bytes of PAT (default 0xcd), or zeros with -z, at OFF
discard [-q] OFF LEN -- discard LEN bytes at OFF (they read back as zeros)
flush -- make every completed write durable
aio_read [-P PAT] [-v] [-q] OFF LEN -- queue a read; reported when it completes
aio_write [-P PAT | -z] [-q] OFF LEN -- queue a write; reported when it completes
aio_flush -- wait for every queued request, then flush
length -- print the size of the disk
sleep MS -- wait MS milliseconds with the image open
help -- this list
quit -- stop (the remaining commands are not run)
";
