//! Helpers shared by the `fvd-img` command-line tests (`cli_*.rs`): running the real binary
//! in scratch directories, checking its exit status and output the way qemu-img users see
//! them, and reading its results back (JSON output, header fields, directory listings).
//!
//! Each test binary uses a subset of these.
#![allow(dead_code)]

use fvd_core::fvd::{parse, ImageLayout, RawHeader};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// What one run of a tool did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program ARGS` in `cwd` (a missing program fails the test).
pub fn run_tool(program: &str, cwd: &Path, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (it must be installed): {e}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `fvd-img ARGS` in `cwd`.
pub fn fvd_img(cwd: &Path, args: &[&str]) -> Run {
    run_tool(env!("CARGO_BIN_EXE_fvd-img"), cwd, args)
}

/// Runs `fvd-img ARGS` and requires exit status `code` with nothing on stderr.
pub fn status(cwd: &Path, args: &[&str], code: i32) -> Run {
    let run = fvd_img(cwd, args);
    assert_eq!(
        run.code, code,
        "fvd-img {args:?} should exit {code}: {run:#?}"
    );
    assert!(
        run.stderr.is_empty(),
        "fvd-img {args:?} wrote stderr: {run:#?}"
    );
    run
}

/// Runs `fvd-img ARGS` and requires success with nothing on stderr.
pub fn ok(cwd: &Path, args: &[&str]) -> Run {
    status(cwd, args, 0)
}

/// Runs `fvd-img ARGS` and requires exit status `code` with exactly one stderr line
/// `fvd-img: MESSAGE` (MESSAGE not empty); returns that line.
pub fn fails_with(cwd: &Path, code: i32, args: &[&str]) -> String {
    fails_with_run(fvd_img(cwd, args), code, args)
}

/// Runs `fvd-img ARGS` and requires a qemu-img-style failure: status 1, nothing on stdout,
/// exactly one stderr line `fvd-img: MESSAGE`. Returns that line.
pub fn fails(cwd: &Path, args: &[&str]) -> String {
    let run = fvd_img(cwd, args);
    assert!(
        run.stdout.is_empty(),
        "fvd-img {args:?} wrote stdout: {run:?}"
    );
    fails_with_run(run, 1, args)
}

/// The checks of [`fails_with`] on a run already made.
fn fails_with_run(run: Run, code: i32, args: &[&str]) -> String {
    assert_eq!(
        run.code, code,
        "fvd-img {args:?} should exit {code}: {run:?}"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "fvd-img {args:?}: want one stderr line: {run:?}"
    );
    assert!(
        lines[0].starts_with("fvd-img: ") && lines[0].len() > "fvd-img: ".len(),
        "fvd-img {args:?}: {run:?}"
    );
    lines[0].to_string()
}

/// A fresh scratch directory, removed when dropped.
pub fn scratch() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// `fvd-img create -q ARGS`, required to succeed.
pub fn create(dir: &Path, args: &[&str]) {
    let mut all = vec!["create", "-q"];
    all.extend_from_slice(args);
    ok(dir, &all);
}

/// `fvd-img create -q -f fvd ARGS`, required to succeed.
pub fn create_fvd(dir: &Path, args: &[&str]) {
    let mut all = vec!["-f", "fvd"];
    all.extend_from_slice(args);
    create(dir, &all);
}

/// A compact image `name` of `size` with 64 KiB chunks.
pub fn compact(dir: &Path, name: &str, size: &str) {
    create(dir, &["-o", "compact_image=on,chunk_size=64k", name, size]);
}

/// A sparse file of `len` zero bytes at `path`.
pub fn sparse_file(path: &Path, len: u64) {
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The names of the entries of `dir`.
pub fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `fvd-img info --output json FILE`, parsed.
pub fn info_json(cwd: &Path, file: &str) -> Value {
    let run = ok(cwd, &["info", "--output", "json", file]);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {}", run.stdout))
}

/// The FVD-specific part (`format-specific.data`) of `info --output json FILE`.
pub fn info_data(cwd: &Path, file: &str) -> Value {
    info_json(cwd, file)["format-specific"]["data"].clone()
}

/// `fvd-img map --output json FILE`: its list of runs.
pub fn map_json(cwd: &Path, file: &str) -> Vec<Value> {
    let run = ok(cwd, &["map", "--output", "json", file]);
    match serde_json::from_str(&run.stdout) {
        Ok(Value::Array(list)) => list,
        other => panic!("map JSON is not a list: {other:?}\n{}", run.stdout),
    }
}

/// The header, layout and file length of the image at `path`, checked by the core
/// validator.
pub fn header_of(path: &Path) -> (RawHeader, ImageLayout, u64) {
    let bytes = fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let (raw, layout) =
        parse(&bytes, len).unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()));
    (raw.clone(), layout, len)
}

/// The NUL-terminated string in a fixed-size header field (`base_img`, `data_file`, ...).
pub fn header_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(field[..end].to_vec()).unwrap()
}

/// Requires `text` (a tool's output) to contain `needle`, showing the whole text if not.
pub fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "want {needle:?} in:\n{text}");
}

/// `qemu-img ARGS` in `cwd`.
pub fn qemu_img(cwd: &Path, args: &[&str]) -> Run {
    run_tool("qemu-img", cwd, args)
}

/// `qemu-io -f qed -c CMD... FILE` in `cwd`, required to succeed with no failed command
/// (pattern checks included).
pub fn qemu_io_qed<S: AsRef<str>>(cwd: &Path, file: &str, commands: &[S]) {
    let mut args = vec!["-f", "qed"];
    for command in commands {
        args.push("-c");
        args.push(command.as_ref());
    }
    args.push(file);
    let run = run_tool("qemu-io", cwd, &args);
    assert_eq!(run.code, 0, "qemu-io {args:?}: {run:#?}");
    assert!(
        !run.stdout.contains("failed") && !run.stderr.contains("failed"),
        "qemu-io {args:?}: {run:#?}"
    );
}

/// A count in a check report, which leaves zero counts out as qemu-img does.
pub fn count(report: &Value, key: &str) -> u64 {
    report
        .get(key)
        .map_or(0, |n| n.as_u64().unwrap_or_else(|| panic!("{key}: {n}")))
}
