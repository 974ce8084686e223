//! `-o KEY=VAL[,KEY=VAL...]` option strings: splitting them (`,,` is a literal comma, as in
//! qemu-img), checking keys and values against a format's option table, and the `-o help`
//! listing. The tables themselves belong to the subcommands that use them.

use super::error::CliError;
use super::size::parse_size;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// `on`/`off` (also `yes`/`no`, `true`/`false`).
    Bool,
    /// A size with an optional suffix (see [`super::size::parse_size`]).
    Size,
    /// A signed decimal integer.
    Int,
    /// Any text.
    Str,
}

impl OptionKind {
    /// How `-o help` shows the value.
    fn placeholder(self) -> &'static str {
        match self {
            OptionKind::Bool => "<bool (on/off)>",
            OptionKind::Size => "<size>",
            OptionKind::Int => "<num>",
            OptionKind::Str => "<str>",
        }
    }
}

/// One option a format accepts.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The key.
    pub name: &'static str,
    /// Its value type.
    pub kind: OptionKind,
    /// One line for `-o help`.
    pub help: &'static str,
}

/// A checked option value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// From an [`OptionKind::Bool`] option.
    Bool(bool),
    /// From an [`OptionKind::Size`] option, in bytes.
    Size(u64),
    /// From an [`OptionKind::Int`] option.
    Int(i64),
    /// From an [`OptionKind::Str`] option.
    Str(String),
}

/// The merged `-o` options of one command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedOptions {
    /// `help` or `?` appeared: list the options instead of running.
    pub help: bool,
    /// Every option given, by key; a later occurrence replaces an earlier one.
    pub values: BTreeMap<&'static str, OptionValue>,
}

impl ParsedOptions {
    /// Removes and returns a boolean option.
    pub fn take_bool(&mut self, name: &str) -> Option<bool> {
        match self.values.remove(name) {
            Some(OptionValue::Bool(value)) => Some(value),
            _ => None,
        }
    }

    /// Removes and returns a size option.
    pub fn take_size(&mut self, name: &str) -> Option<u64> {
        match self.values.remove(name) {
            Some(OptionValue::Size(value)) => Some(value),
            _ => None,
        }
    }

    /// Removes and returns an integer option.
    pub fn take_int(&mut self, name: &str) -> Option<i64> {
        match self.values.remove(name) {
            Some(OptionValue::Int(value)) => Some(value),
            _ => None,
        }
    }

    /// Removes and returns a text option.
    pub fn take_str(&mut self, name: &str) -> Option<String> {
        match self.values.remove(name) {
            Some(OptionValue::Str(value)) => Some(value),
            _ => None,
        }
    }
}

/// Splits one `-o` argument into `KEY[=VALUE]` items. `,,` stands for a comma inside a
/// value; empty items (a trailing comma) are skipped.
pub fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items.retain(|item| !item.is_empty());
    items
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

fn parse_value(spec: &OptionSpec, value: &str) -> Result<OptionValue, CliError> {
    let bad = |expected: &str| {
        CliError::Usage(format!(
            "Parameter '{}' expects {expected}, not '{value}'",
            spec.name
        ))
    };
    match spec.kind {
        OptionKind::Bool => parse_bool(value)
            .map(OptionValue::Bool)
            .ok_or_else(|| bad("'on' or 'off'")),
        OptionKind::Size => parse_size(value)
            .map(OptionValue::Size)
            .map_err(|_| bad("a size (bytes, or a number with suffix k, M, G, T)")),
        OptionKind::Int => value
            .trim()
            .parse::<i64>()
            .map(OptionValue::Int)
            .map_err(|_| bad("an integer")),
        OptionKind::Str => Ok(OptionValue::Str(value.to_string())),
    }
}

/// Parses every `-o` argument against `specs`, merging them in order. Unknown keys,
/// missing values and values of the wrong type are errors naming the option.
pub fn parse_options(args: &[String], specs: &[OptionSpec]) -> Result<ParsedOptions, CliError> {
    let mut parsed = ParsedOptions::default();
    for item in args.iter().flat_map(|arg| split_items(arg)) {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (item.as_str(), None),
        };
        if value.is_none() && (key == "help" || key == "?") {
            parsed.help = true;
            continue;
        }
        let spec = specs.iter().find(|spec| spec.name == key).ok_or_else(|| {
            CliError::Usage(format!(
                "Invalid parameter '{key}' (list the options with '-o help')"
            ))
        })?;
        let value = value.ok_or_else(|| {
            CliError::Usage(format!("Parameter '{key}' needs a value ({key}=VALUE)"))
        })?;
        parsed.values.insert(spec.name, parse_value(spec, value)?);
    }
    Ok(parsed)
}

/// The `-o help` listing for `format`: a title line, then one line per option.
pub fn help_text(format: &str, specs: &[OptionSpec]) -> String {
    let labels: Vec<String> = specs
        .iter()
        .map(|spec| format!("{}={}", spec.name, spec.kind.placeholder()))
        .collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    let mut text = format!("Supported {format} options:\n");
    for (label, spec) in labels.iter().zip(specs) {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "  {label:<width$} - {}", spec.help);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: [OptionSpec; 4] = [
        OptionSpec {
            name: "flag",
            kind: OptionKind::Bool,
            help: "a flag",
        },
        OptionSpec {
            name: "size",
            kind: OptionKind::Size,
            help: "a size",
        },
        OptionSpec {
            name: "delay",
            kind: OptionKind::Int,
            help: "a number",
        },
        OptionSpec {
            name: "name",
            kind: OptionKind::Str,
            help: "a name",
        },
    ];

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn items_split_on_single_commas() {
        assert_eq!(split_items("a=1,b=2"), ["a=1", "b=2"]);
        assert_eq!(split_items("a=x,,y,b=2,"), ["a=x,y", "b=2"]);
        assert!(split_items("").is_empty());
    }

    #[test]
    fn options_merge_and_later_ones_win() {
        let mut parsed = parse_options(
            &args(&["flag=on,size=64k", "delay=-5,name=a,,b", "flag=off"]),
            &SPECS,
        )
        .unwrap();
        assert!(!parsed.help);
        assert_eq!(parsed.take_bool("flag"), Some(false));
        assert_eq!(parsed.take_size("size"), Some(65536));
        assert_eq!(parsed.take_int("delay"), Some(-5));
        assert_eq!(parsed.take_str("name").as_deref(), Some("a,b"));
        assert!(parsed.values.is_empty());
    }

    #[test]
    fn help_is_recognised_anywhere() {
        assert!(parse_options(&args(&["help"]), &SPECS).unwrap().help);
        assert!(parse_options(&args(&["flag=on,?"]), &SPECS).unwrap().help);
    }

    #[test]
    fn bad_keys_and_values_are_errors() {
        for (bad, needle) in [
            ("nope=1", "Invalid parameter 'nope'"),
            (
                "flag=maybe",
                "Parameter 'flag' expects 'on' or 'off', not 'maybe'",
            ),
            ("size=abc", "Parameter 'size' expects a size"),
            ("delay=1.5", "Parameter 'delay' expects an integer"),
            ("flag", "Parameter 'flag' needs a value"),
        ] {
            let err = parse_options(&args(&[bad]), &SPECS)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn help_lists_every_option() {
        let text = help_text("test", &SPECS);
        assert!(text.starts_with("Supported test options:\n"));
        assert_eq!(text.lines().count(), 1 + SPECS.len());
        assert!(text.contains("  flag=<bool (on/off)> - a flag"));
    }
}
