//! `fvd-img`'s memory is bounded by its caches and the image's metadata regions, never by
//! how many problems, runs or bytes a command reports: each command runs here under an
//! address-space limit (`ulimit -v`) far below what holding its whole output would need,
//! on images with millions of findings or runs, made sparse so they cost little disk.

mod common;

use common::{create_fvd, ok, run_tool, scratch, sparse_file};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The address space a command may use (256 MiB): the metadata regions below are 16 MiB
/// each; holding every finding or run in memory took 0.7-1.5 GB.
const LIMIT_KIB: &str = "262144";

/// Runs `fvd-img ARGS` in `cwd` under the address-space limit, its standard output piped
/// through `filter` (a shell command) so the test never holds it either. Returns
/// fvd-img's own exit status, the filter's output and fvd-img's stderr.
fn limited_status(cwd: &Path, args: &[&str], filter: &str) -> (i32, String, String) {
    let script =
        format!("ulimit -v {LIMIT_KIB}; \"$0\" \"$@\" | {filter}; exit ${{PIPESTATUS[0]}}");
    let mut all = vec!["-c", &script, env!("CARGO_BIN_EXE_fvd-img")];
    all.extend_from_slice(args);
    let run = run_tool("bash", cwd, &all);
    (run.code, run.stdout, run.stderr)
}

#[test]
fn check_memory_does_not_grow_with_the_number_of_problems() {
    let dir = scratch();
    let d = dir.path();
    // 4 Mi chunks of 4 KiB: a 16 MiB table, here all zeros, so every chunk names
    // physical chunk 0: 4 Mi - 1 duplicates.
    create_fvd(d, &["-o", "compact_image=on,chunk_size=4k", "c.fvd", "16G"]);
    let path = d.join("c.fvd");
    let header = fs::read(&path).unwrap();
    let data_offset = u64::from_le_bytes(header[24..32].try_into().unwrap());
    let table_offset = u64::from_le_bytes(header[2188..2196].try_into().unwrap());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&vec![0u8; 16 << 20], table_offset)
        .unwrap();
    file.set_len(data_offset + 4096).unwrap();
    drop(file);
    let chunks: u64 = 4 << 20;

    let (code, stdout, stderr) = limited_status(d, &["check", "c.fvd"], "wc -l");
    assert_eq!(code, 2, "{stderr}");
    // One ERROR line per duplicate, then the summary lines.
    let lines: u64 = stdout.trim().parse().unwrap();
    assert_eq!(lines, chunks - 1 + 5, "{stderr}");

    let (code, stdout, stderr) = limited_status(d, &["check", "--output", "json", "c.fvd"], "cat");
    assert_eq!(code, 2, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["corruptions"], chunks - 1);
    assert_eq!(report["findings"].as_array().unwrap().len(), 1000);
    assert_eq!(report["findings-omitted"], chunks - 1 - 1000);
    assert_eq!(
        report["findings"][999]["message"],
        "chunks 0 and 1000 both map to physical chunk 0"
    );

    // A repair unmaps every duplicate, line by line, in the same memory.
    let (code, stdout, stderr) = limited_status(
        d,
        &["check", "-r", "all", "c.fvd"],
        "grep -c '^Repairing chunk'",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim().parse::<u64>().unwrap(), chunks - 1);
    ok(d, &["check", "c.fvd"]);
}

#[test]
fn map_memory_does_not_grow_with_the_number_of_runs() {
    let dir = scratch();
    let d = dir.path();
    // 1 Mi blocks of 512 bytes over a sparse base, alternately local and in the base:
    // 1 Mi runs.
    sparse_file(&d.join("base.raw"), 512 << 20);
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=512",
            "m.fvd",
            "512M",
        ],
    );
    let path = d.join("m.fvd");
    let header = fs::read(&path).unwrap();
    let bitmap_offset = u64::from_le_bytes(header[2120..2128].try_into().unwrap());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&vec![0x55u8; 128 << 10], bitmap_offset)
        .unwrap();
    drop(file);
    let runs: u64 = 1 << 20;
    let (code, stdout, stderr) = limited_status(d, &["map", "--output", "json", "m.fvd"], "wc -l");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim().parse::<u64>().unwrap(), runs);
    let (code, stdout, stderr) =
        limited_status(d, &["map", "--output", "json", "-l", "2k", "m.fvd"], "cat");
    assert_eq!(code, 0, "{stderr}");
    let data_offset = u64::from_le_bytes(header[24..32].try_into().unwrap());
    let run = |start: u64, local: bool| {
        let (depth, data, offset, kind) = if local {
            (0, true, data_offset + start, "local")
        } else {
            (1, false, start, "base")
        };
        format!(
            "{{ \"start\": {start}, \"length\": 512, \"depth\": {depth}, \"present\": true, \
             \"zero\": true, \"data\": {data}, \"compressed\": false, \"offset\": {offset}, \
             \"kind\": \"{kind}\"}}"
        )
    };
    let expected = format!(
        "[{},\n{},\n{},\n{}]\n",
        run(0, true),
        run(512, false),
        run(1024, true),
        run(1536, false)
    );
    assert_eq!(stdout, expected);
}
