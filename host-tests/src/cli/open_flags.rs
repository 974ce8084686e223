//! The command-line side of file locking and of the open gate: `-U` / `--force-share`
//! (qemu-img's: read without refusing other processes anything) and
//! `--allow-external-data-file` (use a data file outside the image's directory), flattened
//! into the arguments of the commands that open images, and the [`OpenGate`] they make.

use super::error::CliError;
use crate::host::gate::OpenGate;
use clap::Args;

/// `-U` / `--force-share`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct ForceShare {
    /// Open read-only without locking anyone else out, like qemu-img -U (what is read may
    /// be inconsistent while another process writes)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
}

impl ForceShare {
    /// Refuses `-U` for a command that writes.
    pub fn check_read_only(self, writable: bool) -> Result<(), CliError> {
        if self.force_share && writable {
            return Err(CliError::Usage(
                "force-share (-U) can only be used with read-only images".into(),
            ));
        }
        Ok(())
    }
}

/// `--allow-external-data-file`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct ExternalData {
    /// Read and write a data file that an image names outside its own directory (only for
    /// images you trust: the header chooses the file)
    #[arg(long = "allow-external-data-file")]
    pub allow_external_data_file: bool,
}

/// The gate for a command with these flags.
pub fn gate(share: ForceShare, external: ExternalData) -> OpenGate {
    OpenGate {
        allow_external_data_file: external.allow_external_data_file,
        force_share: share.force_share,
        no_share: false,
        force_share_bases: false,
    }
}

/// The gate of a command that writes an image and only reads its bases, with `-U`
/// sharing the bases only (`rebase -U`, as qemu-img).
pub fn bases_gate(share: ForceShare, external: ExternalData) -> OpenGate {
    OpenGate {
        force_share_bases: share.force_share,
        ..gate(ForceShare::default(), external)
    }
}
