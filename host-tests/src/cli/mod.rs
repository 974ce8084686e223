//! The `fvd-img` command line: the clap definition of every subcommand, dispatch, and
//! qemu-img-style failure reporting (one `fvd-img: message` line on stderr, exit status 1,
//! clap's usage errors included; `compare` exits 2 on errors because 1 means "different").
//!
//! A new subcommand is a module with an `Args` struct and a `run(args, out)` function,
//! plus one variant in [`Command`] and one arm in [`Command::run`].

pub mod amend;
pub mod base;
pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod disk;
pub mod error;
pub mod flatten;
pub mod image;
pub mod image_format;
pub mod info;
pub mod io;
pub mod map;
pub mod measure;
pub mod open_flags;
pub mod options;
pub mod output;
pub mod prefetch;
pub mod progress;
pub mod qed;
pub mod rebase;
pub mod rebase_qed;
pub mod resize;
pub mod size;
pub mod sparse;
pub mod update;
pub mod writer;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use error::CliError;
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The program name used in messages.
pub const PROGRAM: &str = "fvd-img";

/// Exit status of any failure (qemu-img uses 1 for everything, usage errors included).
pub const EXIT_FAILURE: u8 = 1;

/// `fvd-img`: create, inspect and convert FVD and QED disk images, with qemu-img's habits.
#[derive(Parser, Debug)]
#[command(
    name = "fvd-img",
    version,
    about = "Create, inspect and convert FVD (Fast Virtual Disk) and QED (QEMU Enhanced Disk) images; the commands and options follow qemu-img and qemu-io"
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new image: create [-f fvd|qed|raw] [-b BASE [-F raw|fvd|qed]] [-u] [-o OPTIONS] FILE [SIZE]
    Create(create::CreateArgs),
    /// Show an image's header, regions and allocation: info [-f fmt] [--output human|json] [--backing-chain] [-U] FILE
    Info(info::InfoArgs),
    /// Run qemu-io style commands on an image: io [-f fmt] [-t cache] [-r] [--cor|--no-cor] [-c CMD]... FILE
    Io(io::IoArgs),
    /// Copy a disk into a new image: convert [-f fmt] [-O raw|fvd|qed] [-o OPTIONS] [-p] [-n] [-S SIZE] SRC DST
    Convert(convert::ConvertArgs),
    /// Compare the guest contents of two disks: compare [-f fmt] [-F fmt] [-s] [-q] A B
    Compare(compare::CompareArgs),
    /// Show where each run of the guest disk lives: map [-f fmt] [--output human|json] FILE
    Map(map::MapArgs),
    /// Check an image's metadata, and repair it: check [-f fvd|qed] [-q] [-r leaks|all] [--output human|json] FILE
    Check(check::CheckArgs),
    /// Rewrite FVD header fields in place: update [-f fvd] FILE KEY=VAL...
    Update(update::UpdateArgs),
    /// Copy every base block into the image now: prefetch [-r RATE] [-q] FILE
    Prefetch(prefetch::PrefetchArgs),
    /// Write an image's own data into its base image: commit [-f fvd|qed] [-q] [-p] [-b BASE] FILE
    Commit(commit::CommitArgs),
    /// Put an image over another base image: rebase [-f fvd|qed] [-p] -b NEW [-F raw|fvd|qed] [-u] FILE
    Rebase(rebase::RebaseArgs),
    /// Copy part of a disk into a new one: dd [-f fmt] [-O fmt] [bs=N] [count=N] [skip=N] if=INPUT of=OUTPUT
    Dd(dd::DdArgs),
    /// Size of a new image: measure [--output human|json] [-O fmt] [-o OPTIONS] (--size N | [-f fmt] FILE)
    Measure(measure::MeasureArgs),
    /// Change a disk's virtual size: resize [-f fmt] [--shrink] [-q] FILE [+|-]SIZE
    Resize(resize::ResizeArgs),
    /// Rewrite header fields in place, qemu-img's way: amend [-f fvd] -o KEY=VAL[,...] FILE
    Amend(amend::AmendArgs),
}

impl Command {
    /// Runs the subcommand, writing its normal output to `out` and, for commands that go
    /// on after a failure (`io`), the failure lines to `err`.
    pub fn run(&self, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
        match self {
            Command::Create(args) => create::run(args, out),
            Command::Info(args) => info::run(args, out),
            Command::Io(args) => io::run(args, out, err),
            Command::Convert(args) => convert::run(args, out),
            Command::Compare(args) => compare::run(args, out),
            Command::Map(args) => map::run(args, out),
            Command::Check(args) => check::run(args, out),
            Command::Update(args) => update::run(args, out),
            Command::Prefetch(args) => prefetch::run(args, out),
            Command::Commit(args) => commit::run(args, out),
            Command::Rebase(args) => rebase::run(args, out),
            Command::Amend(args) => amend::run(args, out),
            Command::Resize(args) => resize::run(args, out),
            Command::Measure(args) => measure::run(args, out),
            Command::Dd(args) => dd::run(args, out),
        }
    }
}

/// The subcommand `args` name, if any.
fn subcommand_name(args: &[OsString]) -> Option<String> {
    let command = <Cli as clap::CommandFactory>::command();
    args.iter().skip(1).find_map(|arg| {
        command
            .get_subcommands()
            .map(clap::Command::get_name)
            .find(|name| arg.to_str() == Some(*name))
            .map(str::to_string)
    })
}

/// Exit status of a usage error: 1, except for `compare`, where 1 means "different" and
/// every error exits with 2.
fn usage_status(args: &[OsString]) -> u8 {
    if subcommand_name(args).as_deref() == Some("compare") {
        compare::EXIT_ERROR
    } else {
        EXIT_FAILURE
    }
}

/// The help command to point at: `fvd-img SUBCOMMAND --help` when `args` name one.
fn help_hint(args: &[OsString]) -> String {
    match subcommand_name(args) {
        Some(name) => format!("{PROGRAM} {name} --help"),
        None => format!("{PROGRAM} --help"),
    }
}

/// Condenses a clap error to one line: its message (without `error: `) and any
/// continuation lines such as `[possible values: ...]`, but not the usage block or tips.
fn clap_error_line(err: &clap::Error, hint: &str) -> String {
    let rendered = err.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() {
            if parts.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("{} (see '{hint}')", parts.join(" "))
}

/// Runs `fvd-img` with `args` (program name first). Results go to `out`, the error line
/// to `err`; returns the exit status.
pub fn run_with<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    match write!(out, "{}", e.render()) {
                        Ok(()) => 0,
                        Err(_) => EXIT_FAILURE,
                    }
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = writeln!(
                        err,
                        "{PROGRAM}: Not enough arguments (see '{}')",
                        help_hint(&args)
                    );
                    usage_status(&args)
                }
                _ => {
                    let _ = writeln!(err, "{PROGRAM}: {}", clap_error_line(&e, &help_hint(&args)));
                    usage_status(&args)
                }
            };
        }
    };
    let result = cli
        .command
        .run(out, err)
        .and_then(|()| out.flush().map_err(CliError::Output));
    match result {
        Ok(()) => 0,
        Err(CliError::Exit(status)) => {
            let _ = out.flush();
            status
        }
        Err(e) => {
            let _ = out.flush();
            let _ = writeln!(err, "{PROGRAM}: {e}");
            e.status()
        }
    }
}

/// The `fvd-img` program: runs with the process arguments, stdout and stderr.
pub fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = run_with(std::env::args_os(), &mut stdout.lock(), &mut stderr.lock());
    ExitCode::from(code)
}
