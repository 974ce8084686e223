//! How results are printed: the `--output human|json` choice shared by the reporting
//! subcommands, and JSON pretty-printed the way qemu-img prints it (4-space indent).

use super::error::CliError;
use clap::ValueEnum;
use std::io::Write;

/// The `--output` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text for people, laid out like qemu-img's.
    #[default]
    Human,
    /// JSON with qemu-img's key names.
    Json,
}

/// `value` as pretty JSON with a 4-space indent, like qemu-img's `--output json`.
pub fn pretty_json(value: &serde_json::Value) -> String {
    // serde_json indents by two spaces. Serialized strings never contain a raw newline,
    // so every line's leading spaces are indentation and can simply be doubled.
    let two_space = format!("{value:#}");
    let mut text = String::with_capacity(two_space.len() * 2);
    for line in two_space.lines() {
        let body = line.trim_start_matches(' ');
        let depth = line.len() - body.len();
        text.extend(std::iter::repeat_n(' ', depth * 2));
        text.push_str(body);
        text.push('\n');
    }
    text
}

/// Writes `value` as [`pretty_json`].
pub fn write_json(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), CliError> {
    out.write_all(pretty_json(value).as_bytes())
        .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_by_four_spaces() {
        let value = serde_json::json!({"a": {"b": [1, "x  y"]}});
        assert_eq!(
            pretty_json(&value),
            "{\n    \"a\": {\n        \"b\": [\n            1,\n            \"x  y\"\n        ]\n    }\n}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&pretty_json(&value)).unwrap();
        assert_eq!(parsed, value);
    }
}
