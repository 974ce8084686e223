//! qemu-io's report lines: sizes and times the way it prints them, the two lines after a
//! finished request, and `-v` hex dumps.

use super::super::error::CliError;
use std::io::Write;
use std::time::Duration;

/// A byte count the way qemu-io's reports print it: three decimals and a binary unit,
/// with `.000` dropped (`64 KiB`, `1.500 KiB`, `512 bytes`).
pub fn report_size(value: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1_152_921_504_606_846_976.0, "EiB"),
        (1_125_899_906_842_624.0, "PiB"),
        (1_099_511_627_776.0, "TiB"),
        (1_073_741_824.0, "GiB"),
        (1_048_576.0, "MiB"),
        (1024.0, "KiB"),
    ];
    let (scaled, unit) = UNITS
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map_or((value, "bytes"), |(scale, unit)| (value / scale, *unit));
    let text = format!("{scaled:.3}");
    let text = text.strip_suffix(".000").unwrap_or(&text);
    format!("{text} {unit}")
}

/// An elapsed time the way qemu-io prints it: `00.01 sec`, `1:02.50`, `1:02:03.25`.
pub fn report_time(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let hundredths = elapsed.subsec_millis() / 10;
    if secs >= 3600 {
        format!(
            "{}:{:02}:{:02}.{hundredths:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    } else if secs >= 60 {
        format!("{}:{:02}.{hundredths:02}", secs / 60, secs % 60)
    } else {
        format!("{secs:02}.{hundredths:02} sec")
    }
}

/// The two report lines of a finished command.
pub fn report(verb: &str, offset: u64, len: u64, ops: u32, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{verb} {len}/{len} bytes at offset {offset}\n{}, {ops} ops; {} ({}/sec and {:.4} ops/sec)\n",
        report_size(len as f64),
        report_time(elapsed),
        report_size(len as f64 / secs),
        f64::from(ops) / secs
    )
}

/// Hex dump lines like qemu-io's `-v`: offset, 16 bytes in hex, their printable form.
pub fn dump(out: &mut dyn Write, offset: u64, bytes: &[u8]) -> Result<(), CliError> {
    let mut text = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        text += &format!("{:08x}:  ", offset + i as u64 * 16);
        for b in line {
            text += &format!("{b:02x} ");
        }
        text.push(' ');
        text.extend(line.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                char::from(b)
            } else {
                '.'
            }
        }));
        text.push('\n');
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}
