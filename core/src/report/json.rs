//! A streaming JSON writer over `core::fmt::Write`, without allocation: objects, arrays,
//! keys and scalar values written in the order the caller gives them, pretty-printed the
//! way `qemu-img --output json` prints (a 4-space indent, `[]` and `{}` when empty), and
//! strings escaped as JSON requires. It owns only the syntax; which keys a document has
//! is the business of [`super::info`], [`super::map`] and [`super::check`].

use core::fmt::{self, Write};

/// Deepest nesting the writer tracks (the documents here nest four levels).
pub const MAX_DEPTH: usize = 16;

/// A JSON document being written to `out`.
pub struct JsonWriter<'w, W: Write> {
    out: &'w mut W,
    depth: usize,
    /// No element yet in the innermost open container.
    first: bool,
    /// A key was written; the next value belongs to it.
    after_key: bool,
}

impl<'w, W: Write> JsonWriter<'w, W> {
    /// A writer at the start of a document.
    pub fn new(out: &'w mut W) -> Self {
        JsonWriter {
            out,
            depth: 0,
            first: true,
            after_key: false,
        }
    }

    fn indent(&mut self, depth: usize) -> fmt::Result {
        self.out.write_char('\n')?;
        for _ in 0..depth {
            self.out.write_str("    ")?;
        }
        Ok(())
    }

    /// The separator and indent before a value (none right after its key or at the top).
    fn element(&mut self) -> fmt::Result {
        if self.after_key {
            self.after_key = false;
            return Ok(());
        }
        if self.depth == 0 {
            return Ok(());
        }
        if !self.first {
            self.out.write_char(',')?;
        }
        self.first = false;
        self.indent(self.depth)
    }

    fn open(&mut self, bracket: char) -> fmt::Result {
        self.element()?;
        if self.depth >= MAX_DEPTH {
            return Err(fmt::Error);
        }
        self.out.write_char(bracket)?;
        self.depth += 1;
        self.first = true;
        Ok(())
    }

    fn close(&mut self, bracket: char) -> fmt::Result {
        self.depth = self.depth.checked_sub(1).ok_or(fmt::Error)?;
        if !self.first {
            self.indent(self.depth)?;
        }
        self.first = false;
        self.out.write_char(bracket)?;
        if self.depth == 0 {
            self.out.write_char('\n')?;
        }
        Ok(())
    }

    /// Opens an object.
    pub fn begin_object(&mut self) -> fmt::Result {
        self.open('{')
    }

    /// Closes the innermost object (the document ends with a newline).
    pub fn end_object(&mut self) -> fmt::Result {
        self.close('}')
    }

    /// Opens an array.
    pub fn begin_array(&mut self) -> fmt::Result {
        self.open('[')
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> fmt::Result {
        self.close(']')
    }

    /// Writes the key of the next member of the innermost object.
    pub fn key(&mut self, key: &str) -> fmt::Result {
        self.element()?;
        write_string(self.out, key)?;
        self.out.write_str(": ")?;
        self.after_key = true;
        Ok(())
    }

    /// Writes an unsigned number.
    pub fn u64(&mut self, value: u64) -> fmt::Result {
        self.element()?;
        write!(self.out, "{value}")
    }

    /// Writes a signed number.
    pub fn i64(&mut self, value: i64) -> fmt::Result {
        self.element()?;
        write!(self.out, "{value}")
    }

    /// Writes `true` or `false`.
    pub fn bool(&mut self, value: bool) -> fmt::Result {
        self.element()?;
        self.out.write_str(if value { "true" } else { "false" })
    }

    /// Writes a string.
    pub fn str(&mut self, value: &str) -> fmt::Result {
        self.element()?;
        write_string(self.out, value)
    }

    /// Writes bytes as a string, each invalid UTF-8 sequence replaced by U+FFFD (as
    /// `String::from_utf8_lossy` does).
    pub fn lossy(&mut self, bytes: &[u8]) -> fmt::Result {
        self.element()?;
        self.out.write_char('"')?;
        for chunk in bytes.utf8_chunks() {
            write_escaped(self.out, chunk.valid())?;
            if !chunk.invalid().is_empty() {
                self.out.write_char('\u{FFFD}')?;
            }
        }
        self.out.write_char('"')
    }

    /// Writes the text `value` displays as, as a string.
    pub fn display(&mut self, value: &dyn fmt::Display) -> fmt::Result {
        self.element()?;
        self.out.write_char('"')?;
        write!(Escaping(self.out), "{value}")?;
        self.out.write_char('"')
    }

    /// `key` and an unsigned number.
    pub fn member_u64(&mut self, key: &str, value: u64) -> fmt::Result {
        self.key(key)?;
        self.u64(value)
    }

    /// `key` and a boolean.
    pub fn member_bool(&mut self, key: &str, value: bool) -> fmt::Result {
        self.key(key)?;
        self.bool(value)
    }

    /// `key` and a string.
    pub fn member_str(&mut self, key: &str, value: &str) -> fmt::Result {
        self.key(key)?;
        self.str(value)
    }
}

/// `value` as a quoted JSON string.
pub fn write_string(out: &mut dyn Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    write_escaped(out, value)?;
    out.write_char('"')
}

/// `text` with `"`, `\` and control characters escaped.
fn write_escaped(out: &mut dyn Write, text: &str) -> fmt::Result {
    let mut plain = 0;
    for (at, c) in text.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.write_str(text.get(plain..at).unwrap_or_default())?;
        if escape.is_empty() {
            write!(out, "\\u{:04x}", c as u32)?;
        } else {
            out.write_str(escape)?;
        }
        plain = at + c.len_utf8();
    }
    out.write_str(text.get(plain..).unwrap_or_default())
}

/// A `Write` that escapes what goes through it.
struct Escaping<'a>(&'a mut dyn Write);

impl Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn nested_values_are_indented_by_four_spaces_and_empty_containers_stay_on_one_line() {
        let mut text = String::new();
        let mut j = JsonWriter::new(&mut text);
        j.begin_object().unwrap();
        j.key("a").unwrap();
        j.begin_object().unwrap();
        j.key("b").unwrap();
        j.begin_array().unwrap();
        j.u64(1).unwrap();
        j.str("x  y").unwrap();
        j.end_array().unwrap();
        j.key("e").unwrap();
        j.begin_array().unwrap();
        j.end_array().unwrap();
        j.key("o").unwrap();
        j.begin_object().unwrap();
        j.end_object().unwrap();
        j.end_object().unwrap();
        j.member_bool("t", true).unwrap();
        j.end_object().unwrap();
        assert_eq!(
            text,
            "{\n    \"a\": {\n        \"b\": [\n            1,\n            \"x  y\"\n        ],\n        \
             \"e\": [],\n        \"o\": {}\n    },\n    \"t\": true\n}\n"
        );
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_control_characters() {
        let mut text = String::new();
        let mut j = JsonWriter::new(&mut text);
        j.str("a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(text, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let mut text = String::new();
        JsonWriter::new(&mut text).lossy(b"ok\xff\"").unwrap();
        assert_eq!(text, "\"ok\u{FFFD}\\\"\"");
        let mut text = String::new();
        JsonWriter::new(&mut text).display(&"q\"").unwrap();
        assert_eq!(text, "\"q\\\"\"");
    }

    #[test]
    fn closing_more_than_was_opened_is_an_error_not_a_panic() {
        let mut text = String::new();
        let mut j = JsonWriter::new(&mut text);
        assert!(j.end_object().is_err());
        for _ in 0..MAX_DEPTH {
            j.begin_array().unwrap();
        }
        assert!(j.begin_array().is_err());
    }
}
