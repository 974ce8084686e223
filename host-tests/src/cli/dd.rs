//! `fvd-img dd`: qemu-img's `dd [-U] [-f fmt] [-O output_fmt] [bs=N] [count=N] [skip=N]
//! if=INPUT of=OUTPUT`: a new disk holding INPUT's guest bytes from `skip * bs` on, `count`
//! blocks of them (or all), created like `convert` creates its target (nothing left behind
//! on failure, all-zero blocks not written).

use super::convert::{stage_target, write_non_zero, CopyPolicy, TargetOptions};
use super::create::{check_target, FVD_CREATE_OPTIONS, QED_CREATE_OPTIONS};
use super::disk::{context, Disk, DiskFormat, SECTOR};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use super::options::parse_options;
use super::size::parse_size;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Bytes copied at a time.
const PIECE: u64 = 2 << 20;

/// Arguments of `fvd-img dd`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Operands: if=INPUT, of=OUTPUT (created; never overwritten unless --force), bs=BLOCK_SIZE \
(default 512, suffixes k, M, G), count=BLOCKS (the copy ends at input block BLOCKS; as with \
qemu-img, the skipped blocks count), skip=BLOCKS (blocks of INPUT skipped). An FVD or QED \
output's size is rounded up to a multiple of 512.")]
pub struct DdArgs {
    /// Format of INPUT: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Format of OUTPUT: raw, fvd or qed
    #[arg(short = 'O', value_name = "OUTPUT_FMT", default_value = "raw")]
    pub output_format: String,
    /// Replace OUTPUT if it already exists [fvd-img extension]
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// KEY=VALUE operands: if, of, bs, count, skip
    #[arg(value_name = "OPERAND", required = true)]
    pub operands: Vec<String>,
}

/// The operands, checked.
struct Operands {
    input: PathBuf,
    output: PathBuf,
    block: u64,
    count: Option<u64>,
    skip: u64,
}

fn operands(words: &[String]) -> Result<Operands, CliError> {
    let (mut input, mut output, mut block, mut count, mut skip) = (None, None, 512, None, 0);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(CliError::Usage(format!("unrecognized operand {word}")));
        };
        let number = |what: &str| {
            parse_size(value)
                .map_err(|_| CliError::Usage(format!("invalid number: '{value}' ({what})")))
        };
        match key {
            "if" => input = Some(PathBuf::from(value)),
            "of" => output = Some(PathBuf::from(value)),
            "bs" => {
                block = number("bs")?;
                if block == 0 {
                    return Err(CliError::Usage("invalid number: '0' (bs)".into()));
                }
            }
            "count" => count = Some(number("count")?),
            "skip" => skip = number("skip")?,
            _ => return Err(CliError::Usage(format!("unrecognized operand {word}"))),
        }
    }
    let input = input.ok_or_else(|| CliError::Usage("Must specify an input file (if=)".into()))?;
    let output =
        output.ok_or_else(|| CliError::Usage("Must specify an output file (of=)".into()))?;
    Ok(Operands {
        input,
        output,
        block,
        count,
        skip,
    })
}

/// Runs `fvd-img dd`.
pub fn run(args: &DdArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    let ops = operands(&args.operands)?;
    let output = DiskFormat::parse(&args.output_format)?;
    let format = DiskFormat::given_or_probed(args.format.as_deref(), &ops.input)?;
    let gate = open_flags::gate(args.share, args.external);
    let mut src = Disk::open_gated(&ops.input, format, false, None, gate)?;
    let too_big = || CliError::Usage("the requested range is too large".into());
    let start = ops.skip.checked_mul(ops.block).ok_or_else(too_big)?;
    // qemu-img's rule: the input ends at block `count` (skipped blocks included).
    let end = match ops.count {
        Some(count) => count
            .checked_mul(ops.block)
            .ok_or_else(too_big)?
            .min(src.size()),
        None => src.size(),
    };
    let len = end.saturating_sub(start);
    let size = if output.is_image() {
        len.div_ceil(SECTOR) * SECTOR
    } else {
        len
    };
    check_target(&ops.output, args.force)?;
    let options = match output {
        DiskFormat::Fvd => TargetOptions::Fvd(parse_options(&[], &FVD_CREATE_OPTIONS)?),
        DiskFormat::Qed => TargetOptions::Qed(parse_options(&[], &QED_CREATE_OPTIONS)?),
        DiskFormat::Raw => TargetOptions::Raw,
    };
    let (staged, mut dst) = stage_target(options, &[], &ops.output, size, args.force)?;
    let policy = CopyPolicy {
        zero_block: 4096,
        target_reads_zero: true,
    };
    let mut buf = Vec::new();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(PIECE);
        buf.resize(n as usize, 0);
        src.read(start + at, &mut buf)
            .map_err(|e| context(e, format!("error while reading '{}'", ops.input.display())))?;
        write_non_zero(&mut dst, at, &buf, policy)
            .map_err(|e| context(e, format!("error while writing '{}'", ops.output.display())))?;
        at += n;
    }
    dst.flush()?;
    dst.close()?;
    src.close()?;
    staged.commit(args.force)
}
