//! `fvd-img commit [-f fvd|qed] [-q] [-p] [-d] [-b BASE] FILE`: writes every run of guest
//! bytes FILE (an FVD or QED image) holds itself into its base image at the same offsets,
//! like `qemu-img commit`. The runs FILE holds are read through FILE on their own thread
//! ([`Stream`]: holes of its storage are not read) in large pieces and written to the
//! base; runs and 4 KiB blocks that read as zeros (unallocated chunks, which hide the
//! base; zero runs; all-zero blocks) are zeroed in the base instead; runs still in the
//! base are skipped.
//!
//! The base is a raw file (positioned writes; grown to FILE's size when smaller, as
//! qemu-img grows it, with `set_len` so the new part stays a hole: it already reads as
//! zeros, so zero runs there write nothing, and zero runs inside the old length punch
//! holes rather than allocate) or an FVD or QED image (opened read-write with its own
//! chain and written through the engine; it cannot grow, so a FILE larger than it is
//! //! refused before anything is written). The base is flushed at the end. FILE is left
//! unchanged: an FVD image cannot be emptied (bitmap bits never go back to 0), so `-d` is
//! accepted for qemu-img compatibility and changes nothing. `-b` may name only FILE's own
//! base (committing through an intermediate image is refused by name). FILE's guest view is the same afterwards,
//! since every byte the commit changed in the base is one FILE does not read from it.
//!
//! The base is a file FILE's header chose: it is opened through the open gate (a regular
//! file, neither FILE nor its data file, locked for writing) and, unless `-q`, its real
//! path is printed before anything is written to it.

use super::base::{self, BaseFormat};
use super::disk::{context, open_error, split_runs, Disk, DiskFormat, Piece, Stream};
use super::error::CliError;
use super::image::{name_path, name_text, open_fvd, same_file};
use super::io::CacheMode;
use super::open_flags::{self, ExternalData, ForceShare};
use super::progress::Progress;
use super::qed::open_qed;
use crate::host::direct::DirectFile;
use crate::host::driver::{Driver, DriverOptions};
use crate::host::files::{
    open_driver, open_opened_image, open_storage_with, write_zeroes_at, Base, FileStorage,
};
use crate::host::gate::{self, Access, Chain, OpenGate, Opened, Role};
use crate::host::lock::FileLock;
use clap::Args;
use fvd_core::zeros::HOLE_BLOCK;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Arguments of `fvd-img commit`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Writes the data FILE (FVD or QED) holds itself into its base image. A raw base smaller \
than FILE grows to FILE's size; an FVD or QED base cannot grow, so committing a larger \
FILE into one is refused. \
FILE is kept unchanged (-d is accepted and changes nothing).")]
pub struct CommitArgs {
    /// Format of FILE: fvd or qed (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Do not print 'Image committed.'
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    /// Skip emptying FILE afterwards (FILE is never emptied: accepted for scripts)
    #[arg(short = 'd', long = "skip-empty")]
    pub skip_empty: bool,
    /// The base to commit into: only FILE's own base is supported
    #[arg(short = 'b', value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// Cache mode of FILE and its base: none, writeback, writethrough, directsync or unsafe
    /// (none and directsync bypass the host page cache; the base is flushed at the end in
    /// every mode)
    #[arg(short = 't', value_name = "CACHE")]
    pub cache: Option<String>,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image to commit
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Bytes of zeros written to an FVD base per request.
const ZERO_PIECE: u64 = 64 << 20;

/// The base being written.
enum Target {
    /// A raw base; bytes from `old_len` on were added by growing it and read as zeros.
    Raw {
        file: File,
        /// `file` again with `O_DIRECT` (`-t none` / `directsync`) for aligned writes.
        direct: Option<DirectFile>,
        path: PathBuf,
        old_len: u64,
        _lock: FileLock,
    },
    /// An FVD or QED base, written through the engine.
    Image(Box<Driver<FileStorage>>),
}

fn image_error(err: impl std::fmt::Display) -> CliError {
    CliError::Image(err.to_string())
}

impl Target {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), CliError> {
        match self {
            Target::Raw {
                file, direct, path, ..
            } => {
                let done = match direct {
                    Some(direct) => direct
                        .write_at(offset, data)
                        .map_err(|e| CliError::io("write", path, e))?,
                    None => false,
                };
                if done {
                    return Ok(());
                }
                file.write_all_at(data, offset)
                    .map_err(|e| CliError::io("write", path, e))
            }
            Target::Image(driver) => driver.write(offset, data).map_err(image_error),
        }
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<(), CliError> {
        match self {
            Target::Raw {
                file,
                path,
                old_len,
                ..
            } => {
                // Past the old end the grown file is a hole already; before it, a punched
                // hole reads as zeros without allocating anything.
                let end = offset.saturating_add(len).min(*old_len);
                if end <= offset {
                    return Ok(());
                }
                write_zeroes_at(file, offset, end - offset, true)
                    .map_err(|e| CliError::io("write", path, e))
            }
            Target::Image(driver) => {
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(ZERO_PIECE);
                    driver.write_zeroes(at, n).map_err(image_error)?;
                    at += n;
                }
                Ok(())
            }
        }
    }

    /// Makes every write durable and closes the base.
    fn finish(self, name: &Path) -> Result<(), CliError> {
        match self {
            Target::Raw { file, path, .. } => {
                file.sync_all().map_err(|e| CliError::io("sync", &path, e))
            }
            Target::Image(mut driver) => {
                driver.flush().map_err(image_error)?;
                let (_, clean) = driver.close().map_err(image_error)?;
                if clean {
                    Ok(())
                } else {
                    Err(CliError::Image(format!(
                        "'{}' could not be marked clean; it will be repaired from its journal \
                         when opened next",
                        name.display()
                    )))
                }
            }
        }
    }
}

/// Opens FILE read-only with its data file but without its base (a base that refuses reads), its
/// chain checked through `gate`; also returns the files the base must differ from (FILE
/// and its data file).
fn open_detached(
    path: &Path,
    base_len: u64,
    gate: &OpenGate,
) -> Result<(Driver<FileStorage>, Chain), CliError> {
    let options = DriverOptions {
        writable: false,
        copy_on_read: Some(false),
        ..DriverOptions::default()
    };
    let mut storage = open_storage_with(path, options, gate).map_err(open_error)?;
    let mut own = Chain::default();
    for member in storage.held.chain.members() {
        if member.role == Role::Image || member.role == Role::DataFile(path.to_path_buf()) {
            own.admit(member.clone())?;
        }
    }
    // FILE is read only where it holds the data itself, so its own copy of the base
    // (which the commit is changing) must never be consulted: its base refuses reads.
    storage.base = Some(Base::Refused { len: base_len });
    let driver = open_driver(storage, path, options).map_err(open_error)?;
    Ok((driver, own))
}

/// What FILE's header says of its base: the name (byte for byte), the stated format
/// (`None`: probe), FILE's guest size and the base size FILE reads through.
struct NamedBase {
    name: PathBuf,
    format: Option<BaseFormat>,
    size: u64,
    base_len: u64,
}

/// Reads FILE's header (FVD or QED) for its base.
fn named_base(path: &Path, format: DiskFormat) -> Result<NamedBase, CliError> {
    let no_base = || CliError::Image("Image does not have a backing file".into());
    match format {
        DiskFormat::Raw => Err(no_base()),
        DiskFormat::Fvd => {
            let image = open_fvd(path)?;
            let base_layout = image.layout.base.ok_or_else(no_base)?;
            let format = match name_text(&image.header.base_img_fmt).as_str() {
                "" => None,
                other => Some(BaseFormat::parse(other)?),
            };
            Ok(NamedBase {
                name: name_path(&image.header.base_img),
                format,
                size: image.layout.virtual_size,
                base_len: base_layout.size,
            })
        }
        DiskFormat::Qed => {
            let image = open_qed(path)?;
            let name = image.backing_path().ok_or_else(no_base)?;
            let format = image.backing_format().map(BaseFormat::parse).transpose()?;
            // QED reads its base up to the base's own size.
            let base_len = base::inspect(path, &name, format)?.size;
            Ok(NamedBase {
                name,
                format,
                size: image.layout.image_size,
                base_len,
            })
        }
    }
}

/// Makes every file of `driver`'s chain bypass the host page cache (the first layer
/// writable).
fn bypass_page_cache(driver: &mut Driver<FileStorage>, path: &Path) -> Result<(), CliError> {
    for (layer, storage) in driver.layers_mut().enumerate() {
        storage
            .bypass_page_cache(layer == 0)
            .map_err(|e| CliError::io("open", path, e))?;
    }
    Ok(())
}

/// Refuses `-b BASE` unless it is FILE's own base (`resolved`), and bad `-t` values.
fn check_flags(args: &CommitArgs, resolved: &Path) -> Result<(), CliError> {
    if let Some(mode) = &args.cache {
        CacheMode::parse(mode)?;
    }
    let Some(wanted) = &args.base else {
        return Ok(());
    };
    if same_file(wanted, resolved) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "'{}' is not the backing file of '{}' ('{}'); committing into a deeper base \
             is not supported",
            wanted.display(),
            args.file.display(),
            resolved.display()
        )))
    }
}

/// Runs `fvd-img commit`.
pub fn run(args: &CommitArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    let format = DiskFormat::given_or_probed(args.format.as_deref(), path)?;
    let NamedBase {
        name,
        format,
        size,
        base_len,
    } = named_base(path, format)?;
    check_flags(args, &base::resolve(path, &name))?;
    let gate = open_flags::gate(ForceShare::default(), args.external);
    let (mut top, own) = open_detached(path, base_len, &gate)?;
    // -t none / directsync: FILE and its base bypass the host page cache, as in QEMU.
    let direct_io = match &args.cache {
        Some(mode) => CacheMode::parse(mode)?.bypasses_page_cache(),
        None => false,
    };
    if direct_io {
        bypass_page_cache(&mut top, path)?;
    }
    // The base, through the gate: a regular file, not FILE nor its data file, and no
    // other process using it.
    let mut chain = own;
    let opened = gate::open_named(&gate, &mut chain, path, &name, false, Access::Write)?;
    let base = base::inspect(path, &name, format)?;
    if base.format != BaseFormat::Raw && size > base.size {
        return Err(CliError::Invalid(format!(
            "'{}' ({size} bytes) is larger than its base '{}' ({} bytes), and a base \
             image in {} format cannot grow",
            path.display(),
            base.path.display(),
            base.size,
            base.format.name()
        )));
    }

    if !args.quiet {
        // The header chose this file: say which one is about to change.
        let real = std::fs::canonicalize(&opened.path).unwrap_or_else(|_| opened.path.clone());
        writeln!(out, "Committing into base file '{}'", real.display())
            .map_err(CliError::Output)?;
        out.flush().map_err(CliError::Output)?;
    }
    let mut target = match base.format {
        BaseFormat::Raw => {
            let Opened { file, lock, .. } = opened;
            if size > base.size {
                // qemu-img commit grows a smaller base to the image's size.
                file.set_len(size)
                    .map_err(|e| CliError::io("resize", &base.path, e))?;
            }
            let direct = if direct_io {
                Some(
                    DirectFile::over(&file, true)
                        .map_err(|e| CliError::io("open", &base.path, e))?,
                )
            } else {
                None
            };
            Target::Raw {
                file,
                direct,
                path: base.path.clone(),
                old_len: base.size,
                _lock: lock,
            }
        }
        BaseFormat::Fvd | BaseFormat::Qed => {
            let options = DriverOptions {
                writable: true,
                copy_on_read: Some(false),
                ..DriverOptions::default()
            };
            let mut driver =
                open_opened_image(opened, options, &gate, chain).map_err(open_error)?;
            if direct_io {
                bypass_page_cache(&mut driver, &base.path)?;
            }
            Target::Image(Box::new(driver))
        }
    };

    let what = format!(
        "Could not commit '{}' into '{}'",
        path.display(),
        base.path.display()
    );
    let mut progress = Progress::new(args.progress && !args.quiet, size);
    progress.show(out, 0)?;
    let runs = split_runs(&mut top, size)
        .map_err(|e| context(e, &what))?
        .own;
    let src = Disk::over_driver(path, top, path.to_path_buf());
    let mut stream = Stream::start(src, runs, HOLE_BLOCK);
    let copied = stream.for_each(|piece| {
        let end = piece.end();
        let spare = match piece {
            Piece::Zero { offset, len } => {
                target.zero(offset, len)?;
                None
            }
            Piece::Data { offset, bytes } => {
                target.write(offset, &bytes)?;
                Some(bytes)
            }
        };
        progress.show(out, end)?;
        Ok(spare)
    });
    let src = stream.finish();
    copied.map_err(|e| context(e, &what))?;
    let top = src?
        .into_driver()
        .ok_or_else(|| CliError::Image("internal error: the image is not an image".into()))?;
    target.finish(&base.path)?;
    top.close().map_err(image_error)?;
    progress.finish(out)?;
    if !args.quiet {
        writeln!(out, "Image committed.").map_err(CliError::Output)?;
    }
    Ok(())
}
