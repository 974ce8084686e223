//! `fvd-img convert`: copies the guest contents of a disk (raw, or FVD or QED read through
//! its base chain) into a new standalone image (raw, FVD or QED). The target is built in
//! temporary files beside DST, created by `create`'s own code path with the source's size
//! and the `-o` options (a QED target from `fvd_core::qed::plan`, as `create -f qed`),
//! filled through the engine, flushed, closed, and only then renamed into place: a failed
//! convert leaves nothing behind. The source is read ahead on its own thread
//! ([`Stream`]), which asks it for its map first. Runs that read as zeros (unallocated
//! chunks, zero clusters, holes, all-zero blocks) are not written, so every target stays
//! sparse, as with `qemu-img convert`. As there, the target's default cache mode is
//! `unsafe`: flushes do not sync unless `-t` names another mode.

use super::create::{check_target, stage_fvd, CreateArgs, FVD_CREATE_OPTIONS, QED_CREATE_OPTIONS};
use super::disk::{context, is_zero, Disk, DiskFormat, Piece, Stream, SECTOR};
use super::error::CliError;
use super::image::same_file;
use super::io::CacheMode;
use super::open_flags::{self, ExternalData, ForceShare};
use super::options::{help_text, parse_options, ParsedOptions};
use super::progress::Progress;
use super::qed::stage_qed;
use super::size::parse_size;
use super::writer::{stage_empty, Staged};
use crate::host::files::FileStorage;
use crate::host::gate::OpenGate;
use clap::Args;
use fvd_core::qed::{plan as qed_plan, QedCreateOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes read from the source at once.
const COPY_CHUNK: u64 = 2 << 20;

/// Guest bytes between two starts of write-back of the target (see
/// [`Disk::start_writeback`]).
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Granularity of zero detection: all-zero blocks of this size are not written.
const ZERO_BLOCK: u64 = 4096;

/// Arguments of `fvd-img convert`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The result is a standalone image (the source's base chain is read through). DST is never \
overwritten unless --force is given; on failure nothing is left behind.\n\
List the -o options with: fvd-img convert -O fvd -o help (or -O qed)")]
pub struct ConvertArgs {
    /// Format of SRC: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Format of DST: raw, fvd or qed
    #[arg(short = 'O', value_name = "OUTPUT_FMT", default_value = "raw")]
    pub output_format: String,
    /// Create options of DST (as for create -f fvd or -f qed), KEY=VAL[,KEY=VAL...],
    /// repeatable
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print nothing (not even progress)
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Replace DST if it already exists [fvd-img extension]
    #[arg(long)]
    pub force: bool,
    /// Write into the existing DST (of format -O, at least SRC's size) instead of creating
    /// it; ranges that read as zeros in SRC are zeroed in DST
    #[arg(short = 'n')]
    pub no_create: bool,
    /// Smallest run of zero bytes (a multiple of 512) left unwritten; 0 writes every byte,
    /// so the result is fully allocated (default 4k)
    #[arg(short = 'S', value_name = "SPARSE_SIZE")]
    pub sparse_size: Option<String>,
    /// Compress the output (not supported by FVD or QED: refused)
    #[arg(short = 'c')]
    pub compress: bool,
    /// Give the output this backing file (not supported: convert makes standalone images)
    #[arg(short = 'B', value_name = "BACKING_FILE")]
    pub backing_file: Option<PathBuf>,
    /// Format of the -B backing file (accepted with -B, which is not supported)
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Cache mode of DST: none, writeback, writethrough, directsync or unsafe (the
    /// default, as for qemu-img convert: the output is not synced; every other mode
    /// syncs it before convert ends; none and directsync bypass the host page cache)
    #[arg(short = 't', value_name = "CACHE")]
    pub cache: Option<String>,
    /// Cache mode of SRC (as -t)
    #[arg(short = 'T', value_name = "SRC_CACHE")]
    pub source_cache: Option<String>,
    /// Allow out-of-order writes to DST (accepted; writes are issued in order)
    #[arg(short = 'W')]
    pub out_of_order: bool,
    /// Parallel requests, 1 to 16 (accepted; the copy runs one request at a time)
    #[arg(short = 'm', value_name = "NUM")]
    pub parallel: Option<u32>,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The disk to copy
    #[arg(value_name = "SRC")]
    pub source: Option<PathBuf>,
    /// The image to create
    #[arg(value_name = "DST")]
    pub target: Option<PathBuf>,
}

/// The staged target files, published by [`Target::commit`].
pub enum Target {
    Fvd(Box<super::create::StagedFvd>),
    /// A QED image or a raw file: one file.
    File(Staged),
}

impl Target {
    /// Renames the files into place (replacing existing ones only when `force`).
    pub fn commit(self, force: bool) -> Result<(), CliError> {
        match self {
            Target::Fvd(staged) => (*staged).commit(force),
            Target::File(staged) => staged.commit(force),
        }
    }
}

/// The `-o` options checked against the target format's list.
pub enum TargetOptions {
    /// FVD, with its `-o` options.
    Fvd(ParsedOptions),
    /// QED, with its `-o` options.
    Qed(ParsedOptions),
    /// A raw file.
    Raw,
}

/// The QED geometry `-o` asks for (qemu-img's defaults otherwise).
pub fn qed_geometry(mut opts: ParsedOptions, size: u64) -> QedCreateOptions<'static> {
    let defaults = QedCreateOptions::default();
    QedCreateOptions {
        size,
        cluster_size: opts
            .take_size("cluster_size")
            .unwrap_or(defaults.cluster_size),
        table_size: opts.take_size("table_size").unwrap_or(defaults.table_size),
        backing: None,
    }
}

/// Clones an open staged file's handle for the engine.
fn clone_file(staged: &Staged) -> Result<std::fs::File, CliError> {
    staged
        .file()
        .try_clone()
        .map_err(|e| CliError::io("open", staged.target(), e))
}

/// Runs `fvd-img convert`.
pub fn run(args: &ConvertArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let output = DiskFormat::parse(&args.output_format)?;
    let zero_block = script_flags(args, output)?;
    let specs: &[_] = match output {
        DiskFormat::Fvd => &FVD_CREATE_OPTIONS,
        DiskFormat::Qed => &QED_CREATE_OPTIONS,
        DiskFormat::Raw => &[],
    };
    let parsed = parse_options(&args.options, specs)?;
    if parsed.help {
        return out
            .write_all(help_text(output.name(), specs).as_bytes())
            .map_err(CliError::Output);
    }
    for key in ["backing_file", "backing_fmt"] {
        if parsed.values.contains_key(key) {
            return Err(CliError::Usage(format!(
                "-o {key} is not supported by convert: the result is a standalone image"
            )));
        }
    }
    if parsed.values.contains_key("size") {
        return Err(CliError::Usage(
            "-o size is not supported by convert: the result has the source's size".into(),
        ));
    }
    let options = match output {
        DiskFormat::Fvd => TargetOptions::Fvd(parsed),
        DiskFormat::Qed => TargetOptions::Qed(parsed),
        DiskFormat::Raw => TargetOptions::Raw,
    };
    let (Some(source), Some(target)) = (&args.source, &args.target) else {
        return Err(CliError::Usage(
            "Expecting a source and a target file name".into(),
        ));
    };

    let format = DiskFormat::given_or_probed(args.format.as_deref(), source)?;
    // Like qemu-img convert, no other process may write the source meanwhile (unless -U).
    let gate = OpenGate {
        no_share: true,
        ..open_flags::gate(args.share, args.external)
    };
    let mut src = Disk::open_gated(source, format, false, None, gate)?;
    if bypasses_page_cache(&args.source_cache)? {
        src.bypass_page_cache()?;
    }
    if same_file(source, target) {
        return Err(CliError::Usage(format!(
            "'{}' is the source itself; convert into another file",
            target.display()
        )));
    }
    let mut progress = Progress::new(args.progress && !args.quiet, src.size());
    if args.no_create {
        let gate = open_flags::gate(ForceShare::default(), args.external);
        let mut dst = Disk::open_gated(target, output, true, None, gate)?;
        dst.set_unsafe_cache(unsafe_cache(args)?);
        if bypasses_page_cache(&args.cache)? {
            dst.bypass_page_cache()?;
        }
        if dst.size() < src.size() {
            return Err(CliError::Invalid(format!(
                "The target '{}' ({} bytes) is smaller than the source ({} bytes)",
                target.display(),
                dst.size(),
                src.size()
            )));
        }
        let policy = CopyPolicy {
            zero_block,
            target_reads_zero: false,
        };
        let src = copy(src, &mut dst, policy, &mut progress, out)?;
        dst.flush()?;
        dst.close()?;
        src.close()?;
        return progress.finish(out);
    }
    check_target(target, args.force)?;
    let size = src.size();

    let (staged, mut dst) = stage_target(options, &args.options, target, size, args.force)?;
    dst.set_unsafe_cache(unsafe_cache(args)?);
    if bypasses_page_cache(&args.cache)? {
        dst.bypass_page_cache()?;
    }

    let policy = CopyPolicy {
        zero_block,
        target_reads_zero: true,
    };
    let src = copy(src, &mut dst, policy, &mut progress, out)?;
    dst.flush()?;
    dst.close()?;
    src.close()?;
    progress.finish(out)?;
    staged.commit(args.force)
}

/// True when a `-t`/`-T` cache mode bypasses the host page cache (none, directsync).
fn bypasses_page_cache(mode: &Option<String>) -> Result<bool, CliError> {
    Ok(match mode {
        Some(mode) => CacheMode::parse(mode)?.bypasses_page_cache(),
        None => false,
    })
}

/// True when DST is written with cache mode `unsafe` (`-t`; qemu-img convert's default).
fn unsafe_cache(args: &ConvertArgs) -> Result<bool, CliError> {
    Ok(match &args.cache {
        Some(mode) => CacheMode::parse(mode)? == CacheMode::Unsafe,
        None => true,
    })
}

/// Checks the flags scripts pass to qemu-img convert: refuses what cannot be done (-c,
/// -B, -o with -n) and bad values, as qemu-img does, and returns the zero-block size
/// (`-S`; 0 writes every byte).
fn script_flags(args: &ConvertArgs, output: DiskFormat) -> Result<u64, CliError> {
    if args.compress {
        return Err(CliError::Usage(format!(
            "Compression not supported for this file format ({})",
            output.name()
        )));
    }
    if args.backing_format.is_some() && args.backing_file.is_none() {
        return Err(CliError::Usage(
            "-F (the backing format) needs -B (the backing file)".into(),
        ));
    }
    if args.backing_file.is_some() {
        return Err(CliError::Usage(
            "-B is not supported: convert makes a standalone image (make an overlay with \
             'fvd-img create -b' instead)"
                .into(),
        ));
    }
    if args.no_create && !args.options.is_empty() {
        return Err(CliError::Usage(
            "-o cannot be used with -n: the target already exists".into(),
        ));
    }
    for mode in [&args.cache, &args.source_cache].into_iter().flatten() {
        CacheMode::parse(mode)?;
    }
    if args.parallel.is_some_and(|n| !(1..=16).contains(&n)) {
        return Err(CliError::Usage(
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16".into(),
        ));
    }
    match &args.sparse_size {
        None => Ok(ZERO_BLOCK),
        Some(text) => match parse_size(text) {
            Ok(bytes) if bytes % SECTOR == 0 && bytes <= COPY_CHUNK => Ok(bytes),
            _ => Err(CliError::Usage(format!(
                "Invalid buffer size for sparse output specified: '{text}' (a multiple of \
                 512 up to {COPY_CHUNK}, or 0)"
            ))),
        },
    }
}

/// What the copy may leave unwritten.
#[derive(Clone, Copy, Debug)]
pub struct CopyPolicy {
    /// All-zero blocks of this size are not written as data (0: everything is written).
    pub zero_block: u64,
    /// True when the target reads as zeros before the copy (a new image), so zero runs
    /// are skipped; false for `-n`, where they are zeroed.
    pub target_reads_zero: bool,
}

/// Creates DST (in temporary files beside it, published by [`Target::commit`]) as an
/// empty disk of `size` bytes in the format `options` names, opened for writing. Shared
/// by `convert` and `dd`.
pub fn stage_target(
    options: TargetOptions,
    raw_options: &[String],
    target: &Path,
    size: u64,
    force: bool,
) -> Result<(Target, Disk), CliError> {
    let staged = match options {
        TargetOptions::Fvd(opts) => {
            let create = CreateArgs {
                format: "fvd".into(),
                backing_file: None,
                backing_format: None,
                options: raw_options.to_vec(),
                unsafe_backing: false,
                force,
                quiet: true,
                file: Some(target.to_path_buf()),
                size: Some(size.to_string()),
            };
            let staged = stage_fvd(&create, opts)?;
            let storage = FileStorage {
                image: clone_file(&staged.image)?,
                data: staged.data.as_ref().map(clone_file).transpose()?,
                base: None,
                held: Default::default(),
                direct: None,
                unsafe_cache: false,
            };
            let data_path = staged
                .data
                .as_ref()
                .map_or(staged.image.path(), Staged::path)
                .to_path_buf();
            let dst = Disk::image_over(target, storage, data_path)?;
            (Target::Fvd(Box::new(staged)), dst)
        }
        TargetOptions::Qed(opts) => {
            let plan = qed_plan(&qed_geometry(opts, size))
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let staged = stage_qed(target, &plan)?;
            let storage = FileStorage {
                image: clone_file(&staged)?,
                data: None,
                base: None,
                held: Default::default(),
                direct: None,
                unsafe_cache: false,
            };
            let dst = Disk::image_over(target, storage, staged.path().to_path_buf())?;
            (Target::File(staged), dst)
        }
        TargetOptions::Raw => {
            let staged = stage_empty(target)?;
            let file = staged
                .file()
                .try_clone()
                .map_err(|e| CliError::io("open", target, e))?;
            file.set_len(size)
                .map_err(|e| CliError::io("write", target, e))?;
            let dst = Disk::raw_over(target, file, size);
            (Target::File(staged), dst)
        }
    };
    Ok(staged)
}

/// Copies every run of `src` that may hold non-zero bytes into `dst`: `src` is read
/// ahead on its own thread ([`Stream`]), which reports holes, zero runs and all-zero
/// blocks of the policy's size as zeros; those are skipped (or zeroed with `-n`). Returns
/// `src` for closing.
fn copy(
    src: Disk,
    dst: &mut Disk,
    policy: CopyPolicy,
    progress: &mut Progress,
    out: &mut dyn Write,
) -> Result<Disk, CliError> {
    let size = src.size();
    progress.show(out, 0)?;
    let mut stream = Stream::start(src, vec![(0, size)], policy.zero_block);
    let dst_path = dst.path().to_path_buf();
    let written = stream.for_each(|piece| {
        let end = piece.end();
        let at = match &piece {
            Piece::Zero { offset, .. } | Piece::Data { offset, .. } => *offset,
        };
        let what = || {
            format!(
                "error while writing '{}' at offset {at}",
                dst_path.display()
            )
        };
        let spare = match piece {
            Piece::Zero { offset, len } => {
                if !policy.target_reads_zero {
                    zero_run(dst, offset, len).map_err(|e| context(e, what()))?;
                }
                None
            }
            Piece::Data { offset, bytes } => {
                let aligned = !dst.format().is_image()
                    || (offset % SECTOR == 0 && bytes.len() as u64 % SECTOR == 0);
                if aligned {
                    Some(
                        dst.write_vec(offset, bytes)
                            .map_err(|e| context(e, what()))?,
                    )
                } else {
                    write_run(dst, offset, &bytes).map_err(|e| context(e, what()))?;
                    Some(bytes)
                }
            }
        };
        if end / WRITEBACK_EVERY != at / WRITEBACK_EVERY {
            dst.start_writeback();
        }
        progress.show(out, end)?;
        Ok(spare)
    });
    let src = stream.finish();
    written?;
    src
}

/// Writes the parts of `bytes` (guest bytes at `offset`) that are not all-zero blocks of
/// the policy's size, merging neighbouring blocks into one write; the zero blocks are
/// zeroed when the target does not read as zeros already.
pub fn write_non_zero(
    dst: &mut Disk,
    offset: u64,
    bytes: &[u8],
    policy: CopyPolicy,
) -> Result<(), CliError> {
    if policy.zero_block == 0 {
        return write_run(dst, offset, bytes);
    }
    let end = offset + bytes.len() as u64;
    // The current run of blocks that are all zero (true) or not (false), from its start.
    let mut run: Option<(u64, bool)> = None;
    let mut at = offset;
    let slice = |from: u64, to: u64| &bytes[(from - offset) as usize..(to - offset) as usize];
    let finish = |dst: &mut Disk, start: u64, zero: bool, to: u64| {
        if !zero {
            write_run(dst, start, slice(start, to))
        } else if !policy.target_reads_zero {
            zero_run(dst, start, to - start)
        } else {
            Ok(())
        }
    };
    while at < end {
        let block_end = end.min((at / policy.zero_block + 1) * policy.zero_block);
        let zero = is_zero(slice(at, block_end));
        match run {
            Some((_, kind)) if kind == zero => {}
            Some((start, kind)) => {
                finish(dst, start, kind, at)?;
                run = Some((at, zero));
            }
            None => run = Some((at, zero)),
        }
        at = block_end;
    }
    if let Some((start, kind)) = run {
        finish(dst, start, kind, end)?;
    }
    Ok(())
}

/// Makes `len` bytes at `offset` of `dst` read as zeros: sector-aligned ranges of an image
/// by a zero write, the unaligned tail (a raw source's last partial sector) as data.
fn zero_run(dst: &mut Disk, offset: u64, len: u64) -> Result<(), CliError> {
    let aligned = !dst.format().is_image() || (offset % SECTOR == 0 && len % SECTOR == 0);
    if aligned {
        return dst.write_zeroes(offset, len, false);
    }
    let head = (offset.div_ceil(SECTOR) * SECTOR).min(offset + len) - offset;
    let body = (len - head) / SECTOR * SECTOR;
    let tail = len - head - body;
    if head > 0 {
        write_run(dst, offset, &vec![0u8; head as usize])?;
    }
    if body > 0 {
        dst.write_zeroes(offset + head, body, false)?;
    }
    if tail > 0 {
        write_run(dst, offset + head + body, &vec![0u8; tail as usize])?;
    }
    Ok(())
}

/// Writes `bytes` at `offset`; for FVD targets a partial last sector (the tail of a raw
/// source whose size is not a sector multiple) is padded with zeros.
fn write_run(dst: &mut Disk, offset: u64, bytes: &[u8]) -> Result<(), CliError> {
    let len = bytes.len() as u64;
    if dst.format().is_image() && (offset % SECTOR != 0 || len % SECTOR != 0) {
        let lo = offset / SECTOR * SECTOR;
        let hi = ((offset + len).div_ceil(SECTOR) * SECTOR).min(dst.size());
        let mut padded = vec![0u8; (hi - lo) as usize];
        if lo < offset {
            dst.read(lo, &mut padded[..(offset - lo) as usize])?;
        }
        let from = (offset - lo) as usize;
        padded[from..from + bytes.len()].copy_from_slice(bytes);
        return dst.write(lo, &padded);
    }
    dst.write(offset, bytes)
}
