//! `fvd-img create`: turns the command line into `fvd_core::fvd::create::CreateOptions` (FVD)
//! or `fvd_core::qed::QedCreateOptions` (QED), plans the header, writes the image (and an
//! FVD image's empty data file) without ever leaving a partial file behind, and prints
//! qemu-img's `Formatting ...` line.

use super::base::{self, Base, BaseFormat};
use super::error::CliError;
use super::image::same_file;
use super::image_format::ImageFormat;
use super::options::{help_text, parse_options, OptionKind, OptionSpec, ParsedOptions};
use super::qed::stage_qed;
use super::size::parse_size;
use super::sparse;
use super::writer::{stage_empty, stage_image, Staged};
use clap::Args;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions, DEFAULT_STORAGE_GROW_UNIT};
use fvd_core::fvd::RawHeader;
use fvd_core::qed::{plan as qed_plan, QedBacking, QedCreateOptions};
use fvd_core::units::{checked_round_up, PAGE_SIZE};
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Arguments of `fvd-img create`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
SIZE is in bytes, or a number with suffix k, M, G, T, P or E (powers of 1024). Without SIZE \
the image gets the size of its base image.\n\
FILE is never overwritten unless --force is given; on failure no file is left behind.\n\
List the -o options with: fvd-img create -f fvd -o help (or -f qed)")]
pub struct CreateArgs {
    /// Image format to create (fvd, qed or raw)
    #[arg(short = 'f', value_name = "FMT", default_value = "fvd")]
    pub format: String,
    /// Base (backing) image; a relative name is relative to FILE's directory
    #[arg(short = 'b', value_name = "BASE")]
    pub backing_file: Option<PathBuf>,
    /// Format of the base image: raw, fvd or qed (default: probed among these three, the
    /// result shown as backing_fmt= in the 'Formatting' line; other formats are refused)
    #[arg(short = 'F', value_name = "BASE_FMT")]
    pub backing_format: Option<String>,
    /// Format options KEY=VAL[,KEY=VAL...], may be repeated; '-o help' lists them
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Do not open the base image (it may not exist yet): SIZE and -F are then required,
    /// and an FVD image records SIZE as the base's size
    #[arg(short = 'u')]
    pub unsafe_backing: bool,
    /// Replace FILE (and the data file) if it already exists [fvd-img extension]
    #[arg(long)]
    pub force: bool,
    /// Do not print the 'Formatting ...' line
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The image file to create
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Virtual disk size
    #[arg(value_name = "SIZE")]
    pub size: Option<String>,
}

/// The `-o` options of `create -f fvd`.
pub const FVD_CREATE_OPTIONS: [OptionSpec; 13] = [
    OptionSpec {
        name: "backing_file",
        kind: OptionKind::Str,
        help: "File name of the base image (same as -b)",
    },
    OptionSpec {
        name: "backing_fmt",
        kind: OptionKind::Str,
        help: "Format of the base image: raw, fvd or qed (same as -F; default: probed among these)",
    },
    OptionSpec {
        name: "compact_image",
        kind: OptionKind::Bool,
        help: "Map chunks through a table and allocate storage on demand (default off)",
    },
    OptionSpec {
        name: "block_size",
        kind: OptionKind::Size,
        help: "Bytes per bitmap bit, a multiple of 512 (default: keeps the bitmap within 4 MiB)",
    },
    OptionSpec {
        name: "chunk_size",
        kind: OptionKind::Size,
        help: "Bytes per table entry of a compact image, rounded up to 4 KiB (default 1 MiB)",
    },
    OptionSpec {
        name: "storage_grow_unit",
        kind: OptionKind::Size,
        help: "Bytes a compact image's storage grows by, at least chunk_size, at most 1 GiB (default 100 MiB)",
    },
    OptionSpec {
        name: "journal_size",
        kind: OptionKind::Size,
        help:
            "Metadata journal size, 0 = no journal (default 16 MiB, raised to hold a whole table)",
    },
    OptionSpec {
        name: "copy_on_read",
        kind: OptionKind::Bool,
        help: "Copy data read from the base into the image by default (needs a base; default off)",
    },
    OptionSpec {
        name: "prefetch_start_delay",
        kind: OptionKind::Int,
        help: "Seconds after open before the whole base is prefetched; <= 0 disables (default -1)",
    },
    OptionSpec {
        name: "data_file",
        kind: OptionKind::Str,
        help: "Keep guest data in this separate file, created empty (relative to FILE's directory)",
    },
    OptionSpec {
        name: "data_file_fmt",
        kind: OptionKind::Str,
        help: "Format of the data file: raw (default raw)",
    },
    OptionSpec {
        name: "need_zero_init",
        kind: OptionKind::Bool,
        help: "Refuse data storage whose never-written areas may not read as zeros (default off)",
    },
    OptionSpec {
        name: "detect_sparse_hole",
        kind: OptionKind::Bool,
        help: "Scan the base and mark its all-zero blocks as in the image, so they are never \
               read from the base (needs a base; sets need_zero_init; default off)",
    },
];

/// The `-o` options of `create -f qed` (qemu-img's, less its host-file ones).
pub const QED_CREATE_OPTIONS: [OptionSpec; 6] = [
    OptionSpec {
        name: "backing_file",
        kind: OptionKind::Str,
        help: "File name of a base image (same as -b)",
    },
    OptionSpec {
        name: "backing_fmt",
        kind: OptionKind::Str,
        help: "Image format of the base image: raw, fvd or qed (same as -F; default: probed)",
    },
    OptionSpec {
        name: "cluster_size",
        kind: OptionKind::Size,
        help: "Cluster size (in bytes): a power of two from 4k to 64M (default 64k)",
    },
    OptionSpec {
        name: "table_size",
        kind: OptionKind::Size,
        help: "L1/L2 table size (in clusters): a power of two from 1 to 16 (default 4)",
    },
    OptionSpec {
        name: "copy_on_read",
        kind: OptionKind::Bool,
        help: "Copy data read from the base into the image by default (needs a base; the \
               2011 RFC's compatible feature bit; fvd-img io --cor/--no-cor overrides; \
               default off)",
    },
    OptionSpec {
        name: "size",
        kind: OptionKind::Size,
        help: "Virtual disk size (same as SIZE)",
    },
];

/// Runs `fvd-img create`, writing the `Formatting` line (or the `-o help` listing) to `out`.
pub fn run(args: &CreateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if args.format == "raw" {
        return create_raw(args, out);
    }
    match ImageFormat::parse(&args.format)? {
        ImageFormat::Fvd => create_fvd(args, out),
        ImageFormat::Qed => create_qed(args, out),
    }
}

/// One of two spellings of the same setting (`-b` and `-o backing_file`): either, or both
/// when they agree.
fn one_of<T: PartialEq>(
    flag: Option<T>,
    option: Option<T>,
    flag_name: &str,
    option_name: &str,
) -> Result<Option<T>, CliError> {
    match (flag, option) {
        (Some(a), Some(b)) if a != b => Err(CliError::Usage(format!(
            "{flag_name} and -o {option_name} disagree; give only one"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// What `create -f fvd` was asked for, with every argument checked but no file touched.
#[derive(Debug)]
struct FvdRequest {
    file: PathBuf,
    size: Option<u64>,
    backing: Option<(PathBuf, Option<BaseFormat>)>,
    compact_image: bool,
    block_size: Option<u64>,
    chunk_size: Option<u64>,
    storage_grow_unit: Option<u64>,
    journal_size: Option<u64>,
    copy_on_read: bool,
    prefetch_start_delay: i64,
    data_file: Option<(OsString, String)>,
    need_zero_init: bool,
    detect_sparse_hole: bool,
}

/// `-b`/`-o backing_file` and `-F`/`-o backing_fmt`, checked (the same for every format).
fn requested_backing(
    args: &CreateArgs,
    opts: &mut ParsedOptions,
) -> Result<Option<(PathBuf, Option<BaseFormat>)>, CliError> {
    let backing_name = one_of(
        args.backing_file.clone(),
        opts.take_str("backing_file").map(PathBuf::from),
        "-b",
        "backing_file",
    )?;
    let backing_fmt = one_of(
        args.backing_format.clone(),
        opts.take_str("backing_fmt"),
        "-F",
        "backing_fmt",
    )?
    .map(|name| BaseFormat::parse(&name))
    .transpose()?;
    match (backing_name, backing_fmt) {
        (Some(name), _) if name.as_os_str().is_empty() => {
            Err(CliError::Usage("The backing file name is empty".into()))
        }
        (Some(name), format) => Ok(Some((name, format))),
        (None, Some(_)) => Err(CliError::Usage(
            "A backing format (-F) needs a backing file (-b)".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// The base named for a new image `file`, inspected (format probed when not given, size
/// read); an image may not be its own base. With `-u` the base is not opened: its format
/// must be given and its size is taken to be `size`, the one the command line gives.
fn inspect_backing(
    file: &Path,
    backing: &Option<(PathBuf, Option<BaseFormat>)>,
    args: &CreateArgs,
    size: Option<u64>,
) -> Result<Option<Base>, CliError> {
    let Some((name, format)) = backing else {
        return Ok(None);
    };
    let base = if args.unsafe_backing {
        let (Some(format), Some(size)) = (format, size) else {
            return Err(CliError::Usage(
                "With -u the base is not opened: give its format (-F) and the image size".into(),
            ));
        };
        Base {
            name: name.clone(),
            path: base::resolve(file, name),
            format: *format,
            size,
        }
    } else {
        base::inspect(file, name, *format)?
    };
    if same_file(&base.path, file) {
        return Err(CliError::Usage(
            "Trying to create an image with the same file name as its backing file".into(),
        ));
    }
    Ok(Some(base))
}

/// The SIZE given, or else the base's size (qemu-img's default).
fn size_or_backing(size: Option<u64>, base: Option<&Base>) -> Result<u64, CliError> {
    size.or(base.map(|base| base.size))
        .ok_or_else(|| CliError::Usage("Image creation needs a size parameter".into()))
}

/// The SIZE argument, parsed with qemu-img's suffixes.
fn requested_size(args: &CreateArgs) -> Result<Option<u64>, CliError> {
    args.size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| CliError::Usage(format!("Invalid image size specified: {e}")))
}

impl FvdRequest {
    fn new(args: &CreateArgs, mut opts: ParsedOptions, file: PathBuf) -> Result<Self, CliError> {
        let defaults = CreateOptions::default();
        let backing = requested_backing(args, &mut opts)?;

        let size = requested_size(args)?;
        if size.is_none() && backing.is_none() {
            return Err(CliError::Usage(
                "Image creation needs a size parameter (or a backing file to take it from)".into(),
            ));
        }

        let compact_image = opts
            .take_bool("compact_image")
            .unwrap_or(defaults.compact_image);
        let chunk_size = opts.take_size("chunk_size");
        let storage_grow_unit = opts.take_size("storage_grow_unit");
        if !compact_image {
            for (name, given) in [
                ("chunk_size", chunk_size.is_some()),
                ("storage_grow_unit", storage_grow_unit.is_some()),
            ] {
                if given {
                    return Err(CliError::Usage(format!(
                        "{name} applies only to compact images (add compact_image=on)"
                    )));
                }
            }
        }
        let journal_size = opts.take_size("journal_size");
        if journal_size.is_some_and(|size| size > 0) && !compact_image && backing.is_none() {
            return Err(CliError::Usage(
                "journal_size applies only to images with a backing file or compact_image=on \
                 (a plain image has no metadata to journal)"
                    .into(),
            ));
        }

        let data_name = opts.take_str("data_file");
        let data_fmt = opts.take_str("data_file_fmt");
        let data_file = match (data_name, data_fmt) {
            (Some(name), _) if name.is_empty() => {
                return Err(CliError::Usage("The data_file name is empty".into()))
            }
            (Some(_), Some(fmt)) if fmt != "raw" => {
                return Err(CliError::Usage(format!(
                    "Unsupported data_file_fmt '{fmt}': the data file must be raw"
                )))
            }
            (Some(name), _) => Some((OsString::from(name), "raw".to_string())),
            (None, Some(_)) => {
                return Err(CliError::Usage("data_file_fmt needs a data_file".into()))
            }
            (None, None) => None,
        };

        // Zero detection marks base blocks local without writing them: they must read as
        // zeros from never-written storage, which is what need_zero_init promises.
        let detect_sparse_hole = opts.take_bool("detect_sparse_hole").unwrap_or(false);
        let need_zero_init = opts.take_bool("need_zero_init");
        if detect_sparse_hole {
            if backing.is_none() {
                return Err(CliError::Usage(
                    "detect_sparse_hole needs a backing file (-b)".into(),
                ));
            }
            if need_zero_init == Some(false) {
                return Err(CliError::Usage(
                    "detect_sparse_hole=on needs need_zero_init=on (blocks found to be zero \
                     are read from never-written storage)"
                        .into(),
                ));
            }
        }

        let request = FvdRequest {
            file,
            size,
            backing,
            compact_image,
            block_size: opts.take_size("block_size").or(defaults.block_size),
            chunk_size: chunk_size.or(defaults.chunk_size),
            // The default growth step is never below one chunk (the 2011 rule); `plan`
            // would refuse its 100 MiB default next to a larger chunk_size.
            storage_grow_unit: storage_grow_unit
                .or(defaults.storage_grow_unit)
                .or_else(|| {
                    chunk_size
                        .and_then(|size| checked_round_up(size, PAGE_SIZE))
                        .filter(|&size| size > DEFAULT_STORAGE_GROW_UNIT)
                }),
            journal_size: journal_size.or(defaults.journal_size),
            copy_on_read: opts
                .take_bool("copy_on_read")
                .unwrap_or(defaults.copy_on_read),
            prefetch_start_delay: opts
                .take_int("prefetch_start_delay")
                .unwrap_or(defaults.prefetch_start_delay),
            data_file,
            need_zero_init: detect_sparse_hole || need_zero_init.unwrap_or(defaults.need_zero_init),
            detect_sparse_hole,
        };
        // Every key of FVD_CREATE_OPTIONS is taken above; one that is not would otherwise
        // be ignored silently.
        if let Some(key) = opts.values.keys().next() {
            return Err(CliError::Invalid(format!(
                "internal error: option '{key}' is not handled"
            )));
        }
        Ok(request)
    }
}

/// Refuses to create `path` when something is already there, unless `force` (and even
/// then never over a directory).
pub fn check_target(path: &Path, force: bool) -> Result<(), CliError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(CliError::NotAFile {
            path: path.to_path_buf(),
            reason: "Is a directory",
        }),
        Ok(_) if !force => Err(CliError::Exists {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::io("create", path, e)),
    }
}

fn on_off(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}

/// qemu-img's `Formatting 'FILE', fmt=... size=...` line, listing every option in effect.
fn formatting_line(file: &Path, header: &RawHeader, base: Option<&Base>) -> String {
    let mut line = format!(
        "Formatting '{}', fmt=fvd size={}",
        file.display(),
        header.virtual_disk_size.get()
    );
    if let Some(base) = base {
        line += &format!(
            " backing_file={} backing_fmt={}",
            base.name.display(),
            base.format.name()
        );
    }
    let compact = header.table_size.get() != 0;
    line += &format!(" compact_image={}", on_off(compact));
    if compact {
        line += &format!(
            " chunk_size={} storage_grow_unit={}",
            header.chunk_size.get(),
            header.storage_grow_unit.get()
        );
    }
    line += &format!(
        " block_size={} journal_size={} copy_on_read={} prefetch_start_delay={}",
        header.block_size.get(),
        header.journal_size.get(),
        on_off(header.copy_on_read.get() != 0),
        header.prefetch_start_delay.get()
    );
    let data_file = super::image::name_text(&header.data_file);
    if !data_file.is_empty() {
        line += &format!(
            " data_file={} data_file_fmt={}",
            data_file,
            super::image::name_text(&header.data_file_fmt)
        );
    }
    line += &format!(
        " need_zero_init={}",
        on_off(header.need_zero_init.get() != 0)
    );
    line
}

fn create_fvd(args: &CreateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let opts = parse_options(&args.options, &FVD_CREATE_OPTIONS)?;
    if opts.help {
        return out
            .write_all(help_text("fvd", &FVD_CREATE_OPTIONS).as_bytes())
            .map_err(CliError::Output);
    }
    let staged = stage_fvd(args, opts)?;
    let line = staged.formatting_line();
    staged.commit(args.force)?;
    if !args.quiet {
        writeln!(out, "{line}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// What `create -f qed` was asked for, with every argument checked but no file touched.
#[derive(Debug)]
struct QedRequest {
    file: PathBuf,
    size: Option<u64>,
    backing: Option<(PathBuf, Option<BaseFormat>)>,
    cluster_size: u64,
    table_size: u64,
    table_size_given: bool,
    copy_on_read: bool,
}

impl QedRequest {
    fn new(args: &CreateArgs, mut opts: ParsedOptions) -> Result<Self, CliError> {
        let file = args
            .file
            .clone()
            .ok_or_else(|| CliError::Usage("Expecting image file name".into()))?;
        let backing = requested_backing(args, &mut opts)?;
        let size = requested_size(args)?;
        let size = one_of(size, opts.take_size("size"), "SIZE", "size")?;
        if size.is_none() && backing.is_none() {
            return Err(CliError::Usage(
                "Image creation needs a size parameter (or a backing file to take it from)".into(),
            ));
        }
        let defaults = QedCreateOptions::default();
        let table_size = opts.take_size("table_size");
        let request = QedRequest {
            file,
            size,
            backing,
            cluster_size: opts
                .take_size("cluster_size")
                .unwrap_or(defaults.cluster_size),
            table_size: table_size.unwrap_or(defaults.table_size),
            table_size_given: table_size.is_some(),
            copy_on_read: opts.take_bool("copy_on_read").unwrap_or(false),
        };
        if let Some(key) = opts.values.keys().next() {
            return Err(CliError::Invalid(format!(
                "internal error: option '{key}' is not handled"
            )));
        }
        Ok(request)
    }
}

/// `create -f raw`: a sparse file of SIZE bytes, as qemu-img makes it (no options, no base).
fn create_raw(args: &CreateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let opts = parse_options(&args.options, &RAW_CREATE_OPTIONS)?;
    if opts.help {
        return out
            .write_all(help_text("raw", &RAW_CREATE_OPTIONS).as_bytes())
            .map_err(CliError::Output);
    }
    if args.backing_file.is_some() || args.backing_format.is_some() || args.unsafe_backing {
        return Err(CliError::Usage(
            "Backing file not supported for file format 'raw'".into(),
        ));
    }
    let file = args
        .file
        .as_deref()
        .ok_or_else(|| CliError::Usage("Expecting image file name".into()))?;
    let mut opts = opts;
    let size = one_of(
        requested_size(args)?,
        opts.take_size("size"),
        "SIZE",
        "size",
    )?
    .ok_or_else(|| CliError::Usage("Image creation needs a size parameter".into()))?;
    check_target(file, args.force)?;
    let staged = stage_empty(file)?;
    staged
        .file()
        .set_len(size)
        .map_err(|e| CliError::io("write", file, e))?;
    staged.commit(args.force)?;
    if !args.quiet {
        writeln!(out, "Formatting '{}', fmt=raw size={size}", file.display())
            .map_err(CliError::Output)?;
    }
    Ok(())
}

/// The `-o` options of `create -f raw`.
const RAW_CREATE_OPTIONS: [OptionSpec; 1] = [OptionSpec {
    name: "size",
    kind: OptionKind::Size,
    help: "Virtual disk size",
}];

fn create_qed(args: &CreateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let opts = parse_options(&args.options, &QED_CREATE_OPTIONS)?;
    if opts.help {
        return out
            .write_all(help_text("qed", &QED_CREATE_OPTIONS).as_bytes())
            .map_err(CliError::Output);
    }
    let request = QedRequest::new(args, opts)?;
    let file = request.file.as_path();
    check_target(file, args.force)?;
    let base = inspect_backing(file, &request.backing, args, request.size)?;
    if base.as_ref().map(|base| base.format) == Some(BaseFormat::Fvd) {
        // QEMU, the QED format's other reader, does not know FVD and would probe the base
        // as raw data: the image would show the FVD container to the guest.
        return Err(CliError::Usage(
            "A QED image's backing file must be raw or qed: QEMU cannot read an FVD base \
             (convert the base with 'fvd-img convert -O qed' first)"
                .into(),
        ));
    }
    let size = size_or_backing(request.size, base.as_ref())?;
    let options = QedCreateOptions {
        size,
        cluster_size: request.cluster_size,
        table_size: request.table_size,
        backing: base.as_ref().map(|base| QedBacking {
            name: base.name.as_os_str().as_bytes(),
            format: base.format.name().as_bytes(),
        }),
    };
    let mut plan = qed_plan(&options).map_err(|e| CliError::Invalid(e.to_string()))?;
    if request.copy_on_read {
        plan.set_copy_on_read()
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let staged = stage_qed(file, &plan)?;
    let mut line = format!(
        "Formatting '{}', fmt=qed size={}",
        file.display(),
        plan.header.image_size.get()
    );
    if let Some(base) = &base {
        line += &format!(
            " backing_file={} backing_fmt={}",
            base.name.display(),
            base.format.name()
        );
    }
    line += &format!(" cluster_size={}", plan.header.cluster_size.get());
    if request.table_size_given {
        line += &format!(" table_size={}", plan.header.table_size.get());
    }
    if request.copy_on_read {
        line += " copy_on_read=on";
    }
    staged.commit(args.force)?;
    if !args.quiet {
        writeln!(out, "{line}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// A new FVD image (and its empty data file) written beside its target but not yet
/// renamed into place: dropping it removes everything, [`StagedFvd::commit`] publishes it.
/// `convert` fills the staged files before committing them.
pub struct StagedFvd {
    /// The image's path as given.
    pub file: PathBuf,
    /// The header written.
    pub header: RawHeader,
    /// The base image, if any.
    pub base: Option<Base>,
    /// The staged image file.
    pub image: Staged,
    /// The staged data file, if the image has one.
    pub data: Option<Staged>,
    /// The base's all-zero blocks were marked as in the image.
    pub detect_sparse_hole: bool,
}

impl StagedFvd {
    /// qemu-img's `Formatting ...` line for this image.
    pub fn formatting_line(&self) -> String {
        let line = formatting_line(&self.file, &self.header, self.base.as_ref());
        if self.detect_sparse_hole {
            line + " detect_sparse_hole=on"
        } else {
            line
        }
    }

    /// Renames the staged files into place (the data file first). Without `force` an
    /// existing file is an error; on failure nothing new is left behind.
    pub fn commit(self, force: bool) -> Result<(), CliError> {
        let StagedFvd { image, data, .. } = self;
        if let Some(data) = data {
            let data_target = data.target().to_path_buf();
            let existed = std::fs::symlink_metadata(&data_target).is_ok();
            data.commit(force)?;
            if let Err(err) = image.commit(force) {
                if !existed {
                    let _ = std::fs::remove_file(&data_target);
                }
                return Err(err);
            }
        } else {
            image.commit(force)?;
        }
        Ok(())
    }
}

/// The header `create -f fvd` writes for `request`, with this size and base.
fn fvd_header(
    request: &FvdRequest,
    virtual_size: u64,
    base: Option<&Base>,
) -> Result<RawHeader, CliError> {
    let options = CreateOptions {
        virtual_size,
        base: base.map(|base| BaseSpec {
            name: base.name.as_os_str().as_bytes(),
            format: base.format.name().as_bytes(),
            size: base.size,
        }),
        compact_image: request.compact_image,
        block_size: request.block_size,
        chunk_size: request.chunk_size,
        storage_grow_unit: request.storage_grow_unit,
        journal_size: request.journal_size,
        copy_on_read: request.copy_on_read,
        prefetch_start_delay: request.prefetch_start_delay,
        data_file: request.data_file.as_ref().map(|(name, _)| name.as_bytes()),
        data_file_fmt: request
            .data_file
            .as_ref()
            .map_or(&b""[..], |(_, fmt)| fmt.as_bytes()),
        need_zero_init: request.need_zero_init,
    };
    plan(&options).map_err(|e| CliError::Invalid(e.to_string()))
}

/// The header `create -f fvd -o OPTIONS FILE SIZE` would write, with no file touched and
/// no base (for `measure`).
pub fn planned_fvd_header(options: &[String], size: u64) -> Result<RawHeader, CliError> {
    let opts = parse_options(options, &FVD_CREATE_OPTIONS)?;
    let args = CreateArgs {
        format: "fvd".into(),
        backing_file: None,
        backing_format: None,
        options: options.to_vec(),
        unsafe_backing: false,
        force: false,
        quiet: true,
        file: None,
        size: Some(size.to_string()),
    };
    let request = FvdRequest::new(&args, opts, PathBuf::from("measure"))?;
    if request.backing.is_some() || request.data_file.is_some() {
        return Err(CliError::Usage(
            "measure takes no backing_file or data_file option".into(),
        ));
    }
    fvd_header(&request, size, None)
}

/// Checks `args` and the already parsed `-o` options `opts` (without `help`), plans the
/// header and writes the new image and data file beside their targets. Nothing is renamed
/// into place: see [`StagedFvd::commit`].
pub fn stage_fvd(args: &CreateArgs, opts: ParsedOptions) -> Result<StagedFvd, CliError> {
    let file = args
        .file
        .clone()
        .ok_or_else(|| CliError::Usage("Expecting image file name".into()))?;
    let request = FvdRequest::new(args, opts, file)?;
    let file = request.file.as_path();
    check_target(file, args.force)?;

    if args.unsafe_backing && request.detect_sparse_hole {
        return Err(CliError::Usage(
            "detect_sparse_hole=on reads the base, which -u does not open".into(),
        ));
    }
    let base = inspect_backing(file, &request.backing, args, request.size)?;
    // FvdRequest::new has checked that there is a size or a base to take it from.
    let virtual_size = size_or_backing(request.size, base.as_ref())?;

    let header = fvd_header(&request, virtual_size, base.as_ref())?;

    let data_path = match &request.data_file {
        Some((name, _)) => {
            let path = base::resolve(file, Path::new(name));
            check_target(&path, args.force)?;
            if path == file || same_file(&path, file) {
                return Err(CliError::Usage(
                    "The data file and the image must be different files".into(),
                ));
            }
            if let Some(base) = base.as_ref().filter(|base| same_file(&path, &base.path)) {
                return Err(CliError::Usage(format!(
                    "The data file '{}' is the backing file '{}'; they must be different files",
                    path.display(),
                    base.path.display()
                )));
            }
            Some(path)
        }
        None => None,
    };

    let image = stage_image(file, &header)?;
    if let (true, Some(base)) = (request.detect_sparse_hole, &base) {
        let bitmap =
            sparse::zero_blocks(base, header.base_img_size.get(), header.block_size.get())?;
        sparse::write_bitmap(image.file(), file, header.bitmap_offset.get(), &bitmap)?;
    }
    let data = data_path.as_deref().map(stage_empty).transpose()?;
    Ok(StagedFvd {
        file: file.to_path_buf(),
        header,
        base,
        image,
        data,
        detect_sparse_hole: request.detect_sparse_hole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &[&str]) -> CreateArgs {
        CreateArgs {
            format: "fvd".into(),
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            options: options.iter().map(|s| s.to_string()).collect(),
            unsafe_backing: false,
            force: false,
            quiet: false,
            file: Some("x.fvd".into()),
            size: Some("1G".into()),
        }
    }

    #[test]
    fn every_option_is_consumed() {
        let every = "backing_file=base.raw,backing_fmt=raw,compact_image=on,block_size=4k,\
                     chunk_size=64k,storage_grow_unit=1M,journal_size=1M,copy_on_read=on,\
                     prefetch_start_delay=5,data_file=d.raw,data_file_fmt=raw,need_zero_init=on,\
                     detect_sparse_hole=on";
        let a = args(&[every]);
        let opts = parse_options(&a.options, &FVD_CREATE_OPTIONS).unwrap();
        assert_eq!(opts.values.len(), FVD_CREATE_OPTIONS.len());
        let request = FvdRequest::new(&a, opts, "x.fvd".into()).unwrap();
        assert!(request.compact_image && request.copy_on_read && request.need_zero_init);
        assert!(request.detect_sparse_hole);
        assert_eq!(request.block_size, Some(4096));
        assert_eq!(request.chunk_size, Some(65536));
        assert_eq!(request.storage_grow_unit, Some(1 << 20));
        assert_eq!(request.journal_size, Some(1 << 20));
        assert_eq!(request.prefetch_start_delay, 5);
        assert_eq!(request.size, Some(1 << 30));
        assert_eq!(
            request.data_file,
            Some((OsString::from("d.raw"), "raw".to_string()))
        );
        assert_eq!(
            request.backing,
            Some((PathBuf::from("base.raw"), Some(BaseFormat::Raw)))
        );
    }

    #[test]
    fn a_large_chunk_raises_the_default_grow_unit() {
        let a = args(&["compact_image=on,chunk_size=256M"]);
        let opts = parse_options(&a.options, &FVD_CREATE_OPTIONS).unwrap();
        let request = FvdRequest::new(&a, opts, "x.fvd".into()).unwrap();
        assert_eq!(request.storage_grow_unit, Some(256 << 20));
        let a = args(&["compact_image=on,chunk_size=64k"]);
        let opts = parse_options(&a.options, &FVD_CREATE_OPTIONS).unwrap();
        let request = FvdRequest::new(&a, opts, "x.fvd".into()).unwrap();
        assert_eq!(request.storage_grow_unit, None);
    }

    #[test]
    fn conflicting_spellings_are_refused() {
        let a = args(&["backing_file=other.raw"]);
        let opts = parse_options(&a.options, &FVD_CREATE_OPTIONS).unwrap();
        let err = FvdRequest::new(&a, opts, "x.fvd".into()).unwrap_err();
        assert!(err.to_string().contains("-b and -o backing_file"), "{err}");
    }
}
