//! `fvd-img update FILE KEY=VAL...`: rewrites header fields in place, like the 2011
//! `qemu-img update`. Every setting is parsed and applied to a copy of the header first;
//! the result must pass `fvd_core::fvd::validate`, and only then is the whole header
//! written with one positioned write and flushed. Any error leaves the file untouched. A
//! `base_img` or `data_file` that is the image itself, or one file named as both, is
//! refused (by device and inode); the image stays locked for writing throughout.

use super::error::CliError;
use super::image::{
    chain_of, has_magic, header_reason, open_host_file_as, read_at_most, write_header_bytes,
};
use super::image_format::ImageFormat;
use super::size::parse_size;
use crate::host::gate::{self, FileKey, Member, Role};
use crate::host::lock::Usage;
use clap::Args;
use fvd_core::fvd::header::{name_field, set_name_field, FORMAT_FIELD_LEN, NAME_FIELD_LEN};
use fvd_core::fvd::{validate, RawHeader, FVD_MAGIC, RAW_HEADER_LEN};
use fvd_core::probe::{probe, Probe};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::mem::offset_of;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Arguments of `fvd-img update`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Keys: copy_on_read=on|off, need_zero_init=on|off, clean_shutdown=on|off (dangerous: marking \
a dirty image clean skips its journal replay), max_outstanding_copy_on_read_data=SIZE, \
prefetch_start_delay=SECONDS (<= 0 disables), num_prefetch_slots=N (>= 1), \
bytes_per_prefetch=SIZE (multiple of 512, >= 4096), prefetch_min_read_throughput, \
prefetch_min_write_throughput, prefetch_max_read_throughput, prefetch_max_write_throughput \
(KB/s), prefetch_read_throughput_measure_time, prefetch_write_throughput_measure_time, \
prefetch_throttle_time (ms), base_img=NAME, base_img_fmt=raw|fvd|qed, data_file=NAME.\n\
The size cannot be changed. Nothing is written unless every setting is valid and the \
resulting header validates.")]
pub struct UpdateArgs {
    /// Image format (fvd; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// The image to modify
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Header fields to set
    #[arg(value_name = "KEY=VAL", required = true)]
    pub settings: Vec<String>,
}

/// How a key's value is parsed and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `on`/`off`, stored as a u32 0/1.
    Bool,
    /// A decimal u64.
    Number,
    /// A size (suffixes allowed), stored as a u64.
    Size,
    /// A decimal i64.
    Signed,
    /// A u32 of at least 1.
    Slots,
    /// A size that is a multiple of 512 and at least 4096, stored as a u64.
    PrefetchUnit,
    /// A file name (NUL-terminated field of 1024 bytes).
    Name,
    /// A format name (NUL-terminated field of 16 bytes).
    Format,
}

/// One updatable header field.
#[derive(Debug)]
struct Key {
    name: &'static str,
    offset: usize,
    kind: Kind,
}

const fn key(name: &'static str, offset: usize, kind: Kind) -> Key {
    Key { name, offset, kind }
}

/// Every key `update` accepts, with its field's offset in the header.
const KEYS: [Key; 17] = [
    key(
        "copy_on_read",
        offset_of!(RawHeader, copy_on_read),
        Kind::Bool,
    ),
    key(
        "need_zero_init",
        offset_of!(RawHeader, need_zero_init),
        Kind::Bool,
    ),
    key(
        "clean_shutdown",
        offset_of!(RawHeader, clean_shutdown),
        Kind::Bool,
    ),
    key(
        "max_outstanding_copy_on_read_data",
        offset_of!(RawHeader, max_outstanding_copy_on_read_data),
        Kind::Size,
    ),
    key(
        "prefetch_start_delay",
        offset_of!(RawHeader, prefetch_start_delay),
        Kind::Signed,
    ),
    key(
        "num_prefetch_slots",
        offset_of!(RawHeader, num_prefetch_slots),
        Kind::Slots,
    ),
    key(
        "bytes_per_prefetch",
        offset_of!(RawHeader, bytes_per_prefetch),
        Kind::PrefetchUnit,
    ),
    key(
        "prefetch_min_read_throughput",
        offset_of!(RawHeader, prefetch_min_read_throughput),
        Kind::Number,
    ),
    key(
        "prefetch_min_write_throughput",
        offset_of!(RawHeader, prefetch_min_write_throughput),
        Kind::Number,
    ),
    key(
        "prefetch_max_read_throughput",
        offset_of!(RawHeader, prefetch_max_read_throughput),
        Kind::Number,
    ),
    key(
        "prefetch_max_write_throughput",
        offset_of!(RawHeader, prefetch_max_write_throughput),
        Kind::Number,
    ),
    key(
        "prefetch_read_throughput_measure_time",
        offset_of!(RawHeader, prefetch_read_throughput_measure_time),
        Kind::Number,
    ),
    key(
        "prefetch_write_throughput_measure_time",
        offset_of!(RawHeader, prefetch_write_throughput_measure_time),
        Kind::Number,
    ),
    key(
        "prefetch_throttle_time",
        offset_of!(RawHeader, prefetch_throttle_time),
        Kind::Number,
    ),
    key("base_img", offset_of!(RawHeader, base_img), Kind::Name),
    key(
        "base_img_fmt",
        offset_of!(RawHeader, base_img_fmt),
        Kind::Format,
    ),
    key("data_file", offset_of!(RawHeader, data_file), Kind::Name),
];

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// The bytes `value` stores into the field of `key`.
fn encode(key: &Key, value: &str) -> Result<Vec<u8>, CliError> {
    let bad = |expected: &str| {
        CliError::Usage(format!(
            "Parameter '{}' expects {expected}, not '{value}'",
            key.name
        ))
    };
    Ok(match key.kind {
        Kind::Bool => {
            let on = parse_bool(value).ok_or_else(|| bad("'on' or 'off'"))?;
            u32::from(on).to_le_bytes().to_vec()
        }
        Kind::Number => value
            .parse::<u64>()
            .map_err(|_| bad("a non-negative integer"))?
            .to_le_bytes()
            .to_vec(),
        Kind::Size => parse_size(value)
            .map_err(|_| bad("a size (bytes, or a number with suffix k, M, G, T)"))?
            .to_le_bytes()
            .to_vec(),
        Kind::Signed => value
            .parse::<i64>()
            .map_err(|_| bad("an integer"))?
            .to_le_bytes()
            .to_vec(),
        Kind::Slots => match value.parse::<u32>() {
            Ok(n) if n >= 1 => n.to_le_bytes().to_vec(),
            _ => return Err(bad("an integer of at least 1")),
        },
        Kind::PrefetchUnit => match parse_size(value) {
            Ok(n) if n >= 4096 && n % 512 == 0 => n.to_le_bytes().to_vec(),
            _ => return Err(bad("a multiple of 512 of at least 4096")),
        },
        Kind::Name | Kind::Format => {
            let len = if key.kind == Kind::Name {
                NAME_FIELD_LEN
            } else {
                FORMAT_FIELD_LEN
            };
            let mut field = vec![0u8; len];
            if !set_name_field(&mut field, value.as_bytes()) {
                return Err(bad(&format!("a name of at most {} bytes", len - 1)));
            }
            field
        }
    })
}

/// Parses every `KEY=VAL` into (key, field bytes); the first bad one is the error.
fn parse_settings(settings: &[String]) -> Result<Vec<(&'static Key, Vec<u8>)>, CliError> {
    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    settings
        .iter()
        .map(|setting| {
            let (name, value) = setting
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("Expecting KEY=VALUE, not '{setting}'")))?;
            if name == "size" || name == "virtual_disk_size" {
                return Err(CliError::Usage(
                    "The image size cannot be changed with update".into(),
                ));
            }
            let key = KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
                CliError::Usage(format!(
                    "Invalid parameter '{name}' (update accepts: {})",
                    names.join(", ")
                ))
            })?;
            Ok((key, encode(key, value)?))
        })
        .collect()
}

/// Whether the name field at `offset` of `header` is non-empty.
fn names_something(header: &[u8], offset: usize) -> bool {
    name_field(&header[offset..offset + NAME_FIELD_LEN]).is_some_and(|name| !name.is_empty())
}

/// Refuses updates that would change what the image is rather than tune it.
fn check_meaning(old: &[u8], new: &[u8]) -> Result<(), CliError> {
    for (field, offset, what) in [
        ("base_img", offset_of!(RawHeader, base_img), "a base image"),
        (
            "data_file",
            offset_of!(RawHeader, data_file),
            "a separate data file",
        ),
    ] {
        match (names_something(old, offset), names_something(new, offset)) {
            (true, false) => {
                return Err(CliError::Invalid(format!(
                    "{field} cannot be removed: the image has {what} (update can only rename it)"
                )))
            }
            (false, true) => {
                return Err(CliError::Invalid(format!(
                    "{field} cannot be added: the image has no {} (update can only rename it)",
                    what.trim_start_matches("a ")
                )))
            }
            _ => {}
        }
    }
    let has_base = names_something(new, offset_of!(RawHeader, base_img));
    let flag = offset_of!(RawHeader, copy_on_read);
    if !has_base && new[flag..flag + 4] != [0; 4] {
        return Err(CliError::Invalid("copy_on_read needs a base image".into()));
    }
    let delay = offset_of!(RawHeader, prefetch_start_delay);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&new[delay..delay + 8]);
    if !has_base && i64::from_le_bytes(bytes) > 0 {
        return Err(CliError::Invalid(
            "prefetch_start_delay > 0 needs a base image".into(),
        ));
    }
    Ok(())
}

/// Refuses a header naming the image itself as its base or data file, or one file as
/// both (by device and inode: symlinks and hard links count). Names of files that do not
/// exist (yet) are left to the open that uses them.
fn check_distinct(path: &Path, image: &File, header: &[u8]) -> Result<(), CliError> {
    let mut chain = chain_of(image, path)?;
    for (offset, data) in [
        (offset_of!(RawHeader, data_file), true),
        (offset_of!(RawHeader, base_img), false),
    ] {
        let Some(name) = name_field(&header[offset..offset + NAME_FIELD_LEN]) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let resolved = gate::resolve(path, Path::new(OsStr::from_bytes(name)));
        let Ok(meta) = std::fs::metadata(&resolved) else {
            continue;
        };
        let role = if data {
            Role::DataFile(path.to_path_buf())
        } else {
            Role::Base(path.to_path_buf())
        };
        chain.admit(Member {
            key: FileKey::of(&meta),
            path: resolved,
            role,
        })?;
    }
    Ok(())
}

/// Runs `fvd-img update`.
pub fn run(args: &UpdateArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(format) = &args.format {
        match ImageFormat::parse(format)? {
            ImageFormat::Fvd => {}
            ImageFormat::Qed => {
                return Err(CliError::Usage(
                    "update rewrites FVD header fields; it does not support QED images".into(),
                ))
            }
        }
    }
    let settings = parse_settings(&args.settings)?;
    let path = args.file.as_path();
    // Refuses directories and other non-files with the same messages as `info`; the
    // image stays locked for writing until the new header is written.
    let host = open_host_file_as(path, Usage::WRITE)?;
    let old = read_at_most(&host.file, path, 0, RAW_HEADER_LEN)?;
    if old.len() < RAW_HEADER_LEN || !has_magic(&old, FVD_MAGIC) {
        // Say what the file is instead ("a raw disk image", "a QED image", ...).
        let seems = probe(&old);
        return Err(CliError::NotFvd {
            path: path.to_path_buf(),
            reason: if seems != Probe::Raw || old.len() >= RAW_HEADER_LEN {
                format!("it is {seems}; update changes FVD headers only")
            } else {
                format!(
                    "it is {seems} shorter than an FVD header ({RAW_HEADER_LEN} bytes); update \
                     changes FVD headers only"
                )
            },
        });
    }
    let mut new = old.clone();
    for (key, bytes) in &settings {
        new[key.offset..key.offset + bytes.len()].copy_from_slice(bytes);
    }
    check_meaning(&old, &new)?;
    check_distinct(path, &host.file, &new)?;
    let header = RawHeader::view(&new).ok_or_else(|| CliError::NotFvd {
        path: path.to_path_buf(),
        reason: "header too short".into(),
    })?;
    validate(header, host.len).map_err(|err| {
        CliError::Invalid(format!(
            "The updated header would be invalid: {}",
            header_reason(&err)
        ))
    })?;
    if new == old {
        return Ok(());
    }
    write_header_bytes(path, &new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings_parse_into_field_bytes() {
        let parsed = parse_settings(&args(&[
            "copy_on_read=on",
            "prefetch_start_delay=-5",
            "num_prefetch_slots=3",
            "bytes_per_prefetch=64k",
            "base_img_fmt=raw",
        ]))
        .unwrap();
        assert_eq!(parsed[0].1, 1u32.to_le_bytes());
        assert_eq!(parsed[1].1, (-5i64).to_le_bytes());
        assert_eq!(parsed[2].1, 3u32.to_le_bytes());
        assert_eq!(parsed[3].1, 65536u64.to_le_bytes());
        assert_eq!(&parsed[4].1[..4], b"raw\0");
        assert_eq!(parsed[4].1.len(), FORMAT_FIELD_LEN);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (bad, needle) in [
            ("nope=1", "Invalid parameter 'nope'"),
            ("size=1G", "size cannot be changed"),
            ("copy_on_read", "Expecting KEY=VALUE"),
            ("copy_on_read=maybe", "expects 'on' or 'off'"),
            ("num_prefetch_slots=0", "at least 1"),
            ("bytes_per_prefetch=1000", "multiple of 512"),
            ("bytes_per_prefetch=2048", "at least 4096"),
            ("prefetch_throttle_time=-1", "non-negative"),
            ("base_img_fmt=a-very-long-format-name", "at most 15 bytes"),
        ] {
            let err = parse_settings(&args(&[bad])).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
