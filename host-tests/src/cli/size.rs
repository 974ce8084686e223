//! Byte counts on the command line: parsing `SIZE` arguments and size-valued `-o` options
//! with qemu-img's binary suffixes, and printing sizes the way `qemu-img info` does.

/// Why a size argument was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional suffix.
    #[error("'{0}' is not a size (bytes, or a number with suffix B, k, M, G, T, P or E)")]
    Invalid(String),
    /// A fractional number of bytes.
    #[error("'{0}' is a fractional number of bytes")]
    Fractional(String),
    /// Does not fit in 64 bits.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Most fraction digits accepted (`1.5G`): enough for any unit, small enough that the
/// arithmetic below stays inside `u128`.
const MAX_FRACTION_DIGITS: usize = 19;

/// The multiplier of a size suffix (case-insensitive, binary units as in qemu-img).
fn suffix_unit(suffix: &str) -> Option<u64> {
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return None,
    };
    Some(1u64 << shift)
}

/// Parses a size: decimal or `0x` hexadecimal bytes, or a decimal number (fraction
/// allowed) followed by one of `B`, `k`, `M`, `G`, `T`, `P`, `E` (powers of 1024, any case).
/// A fraction of a byte is truncated (`1.0001k` = 1024); a fractional count of bytes is an
/// error, as in qemu-img.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(text.to_string());
    let too_large = || SizeError::TooLarge(text.to_string());
    let s = text.trim();

    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let (digits, suffix) = hex.split_at(end);
        if digits.is_empty() {
            return Err(invalid());
        }
        let unit = suffix_unit(suffix).ok_or_else(invalid)?;
        let value = u64::from_str_radix(digits, 16).map_err(|_| too_large())?;
        return value.checked_mul(unit).ok_or_else(too_large);
    }

    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int_digits, rest) = s.split_at(int_end);
    let (frac_digits, suffix) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            after.split_at(end)
        }
        None => ("", rest),
    };
    let has_point = rest.starts_with('.');
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(invalid());
    }
    let unit = suffix_unit(suffix).ok_or_else(invalid)?;
    if has_point && unit == 1 {
        return Err(SizeError::Fractional(text.to_string()));
    }
    if frac_digits.len() > MAX_FRACTION_DIGITS {
        return Err(invalid());
    }

    let int_value: u64 = if int_digits.is_empty() {
        0
    } else {
        int_digits.parse().map_err(|_| too_large())?
    };
    let whole = int_value.checked_mul(unit).ok_or_else(too_large)?;
    let fraction = if frac_digits.is_empty() {
        0
    } else {
        // frac < 10^19 and unit <= 2^60, so the product fits in u128.
        let frac: u128 = frac_digits.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(frac_digits.len() as u32);
        u64::try_from(frac * u128::from(unit) / scale).map_err(|_| too_large())?
    };
    whole.checked_add(fraction).ok_or_else(too_large)
}

/// A byte count as `qemu-img info` prints it: three significant digits and a binary unit
/// (`10 GiB`, `196 KiB`, `1.5 MiB`, `0 B`). Values of 1000 units or more move to the next
/// unit (`0.977 MiB`), as qemu-img does.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut index = 0;
    while index + 1 < UNITS.len() && bytes as f64 >= 1000.0 * 1024f64.powi(index as i32) {
        index += 1;
    }
    let value = bytes as f64 / 1024f64.powi(index as i32);
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        while text.ends_with('0') {
            text.pop();
        }
        if text.ends_with('.') {
            text.pop();
        }
    }
    format!("{text} {}", UNITS[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_suffixed_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1b"), Ok(1));
        assert_eq!(parse_size("1B"), Ok(1));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert_eq!(parse_size(" 1k "), Ok(1024));
        assert_eq!(parse_size("0x10"), Ok(16));
        assert_eq!(parse_size("0xb"), Ok(11));
        assert_eq!(parse_size("0x1k"), Ok(1024));
    }

    #[test]
    fn fractions_are_truncated_to_bytes() {
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
        assert_eq!(parse_size("10.0000001k"), Ok(10240));
        assert_eq!(parse_size(".5k"), Ok(512));
        assert_eq!(parse_size("1.5"), Err(SizeError::Fractional("1.5".into())));
        assert_eq!(
            parse_size("1.5b"),
            Err(SizeError::Fractional("1.5b".into()))
        );
    }

    #[test]
    fn garbage_and_overflow_are_refused() {
        for bad in [
            "", " ", "abc", "k", "1Q", "1kb", "1KiB", "-1", "1e3", "0x", "0x1.5k", "1..5k", ".k",
            "1 k", "+1",
        ] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Invalid(_))),
                "{bad:?} -> {:?}",
                parse_size(bad)
            );
        }
        assert_eq!(parse_size("16E"), Err(SizeError::TooLarge("16E".into())));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge("99999999999999999999".into()))
        );
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("15.99999999999999999999E").is_err());
        assert_eq!(parse_size("15.9999999999999999999E").map(|_| ()), Ok(()));
    }

    #[test]
    fn human_sizes_look_like_qemu_img() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(200_704), "196 KiB");
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(10 << 30), "10 GiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }
}
