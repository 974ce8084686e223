//! One qemu-io command line taken apart: getopt-style options, pattern bytes, OFF and LEN
//! operands, and qemu-io's limits on request lengths with its words for them.

use super::super::size::parse_size;

/// Longest request qemu-io accepts (QEMU's `BDRV_REQUEST_MAX_BYTES`): longer ones are
/// refused with qemu-io's messages, so no command allocates more than this.
pub const MAX_REQUEST_BYTES: u64 = 2_147_483_136;

/// How a command names a request that is too long, in qemu-io's words.
#[derive(Clone, Copy)]
pub enum TooLong {
    /// `read`, `discard`: "length cannot exceed N, given LEN".
    Length,
    /// `write`: "length cannot exceed N without -n, given LEN".
    LengthWithoutN,
    /// `aio_read`, `aio_write`: "Argument 'LEN' exceeds maximum size N".
    Argument,
}

/// Refuses `len` past [`MAX_REQUEST_BYTES`] with qemu-io's message for `kind`.
pub fn check_length(parsed: &Parsed, len: u64, kind: TooLong) -> Result<(), String> {
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

/// Options and operands of one command, parsed getopt-style.
#[derive(Debug, Default)]
pub struct Parsed {
    pub flags: Vec<char>,
    pub values: Vec<(char, String)>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn flag(&self, c: char) -> bool {
        self.flags.contains(&c)
    }

    pub fn value(&self, c: char) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `words` into options (`flags` without a value, `valued` with one, given as
/// `-P 1` or `-P1`, several flags in one word) and operands. `--` ends the options.
pub fn getopt(words: &[&str], flags: &str, valued: &str) -> Result<Parsed, String> {
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
pub fn parse_pattern(text: &str) -> Result<u8, String> {
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

/// One command's parsed operands: OFF and LEN.
pub fn offset_and_len(cmd: &str, parsed: &Parsed) -> Result<(u64, u64), String> {
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
