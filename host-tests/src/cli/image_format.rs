//! The image formats `fvd-img` can create and inspect (`-f`), by their qemu-img names.
//! Adding a format means adding a variant here and an arm in each subcommand's dispatch.

use super::error::CliError;

/// A format `-f` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Fast Virtual Disk.
    Fvd,
}

impl ImageFormat {
    /// Every supported format.
    pub const ALL: [ImageFormat; 1] = [ImageFormat::Fvd];

    /// The name qemu-img and the header use.
    pub const fn name(self) -> &'static str {
        match self {
            ImageFormat::Fvd => "fvd",
        }
    }

    /// Parses a `-f` argument (case-sensitive, like qemu-img).
    pub fn parse(text: &str) -> Result<Self, CliError> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| CliError::UnknownFormat(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(ImageFormat::parse("fvd").unwrap(), ImageFormat::Fvd);
        assert_eq!(
            ImageFormat::parse("qcow2").unwrap_err().to_string(),
            "Unknown file format 'qcow2'"
        );
        assert!(ImageFormat::parse("FVD").is_err());
    }
}
