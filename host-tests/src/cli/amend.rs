//! `fvd-img amend`: qemu-img's name and syntax (`amend [-f fmt] -o KEY=VAL[,...] FILE`)
//! for rewriting header fields in place. The `-o` items are the settings of
//! [`update`](super::update), which does the work, so the two commands cannot disagree.

use super::disk::DiskFormat;
use super::error::CliError;
use super::options::split_items;
use super::update::{self, UpdateArgs};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `fvd-img amend`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The -o keys are those of 'fvd-img update' (see 'fvd-img update --help'); a comma inside a \
value is written ',,'. Nothing is written unless every setting is valid.")]
pub struct AmendArgs {
    /// Image format (fvd; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Header fields to set: KEY=VAL[,KEY=VAL...], repeatable
    #[arg(short = 'o', value_name = "OPTIONS", required = true)]
    pub options: Vec<String>,
    /// Print nothing (amend prints nothing on success anyway)
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The image to modify
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `fvd-img amend` as the `update` it stands for.
pub fn run(args: &AmendArgs, out: &mut dyn Write) -> Result<(), CliError> {
    // QEMU amends neither QED nor raw images, and says so before it looks at the options.
    match DiskFormat::given_or_probed(args.format.as_deref(), &args.file)? {
        DiskFormat::Fvd => {}
        other => {
            return Err(CliError::Invalid(format!(
                "Format driver '{}' does not support option amendment{}",
                other.name(),
                match other {
                    DiskFormat::Qed => " (to name another base, use 'fvd-img rebase -u')",
                    _ => "",
                }
            )))
        }
    }
    let settings: Vec<String> = args.options.iter().flat_map(|o| split_items(o)).collect();
    if settings.is_empty() {
        return Err(CliError::Usage(
            "Missing options to amend (-o KEY=VAL)".into(),
        ));
    }
    update::run(
        &UpdateArgs {
            format: args.format.clone(),
            file: args.file.clone(),
            settings,
        },
        out,
    )
}
