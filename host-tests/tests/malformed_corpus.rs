//! The malformed-image corpus (`corpus/malformed/`): every file is exactly what
//! `fvd_host::testing::malformed` generates, and every outcome `expected.json` lists for it holds
//! on this host: the probe, the engine's read-only and read-write opens and a read of the
//! first and last sector, `fvd-img`'s open of the file with its chain, and `fvd-img
//! check`'s exit status and findings. `FVD_REGENERATE=1` rewrites the files and the
//! outcomes (review the diff: every outcome is a claim about hostile input).

use fvd_core::probe::{probe, PROBE_LEN};
use fvd_host::cli::run_with;
use fvd_host::host::driver::{Driver, DriverError, DriverOptions};
use fvd_host::testing::fuzz::sparse::{SparseFile, SparseStorage};
use fvd_host::testing::fuzz::{open, options, request_error};
use fvd_host::testing::malformed::{corpus, Entry};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/malformed")
}

fn regenerating() -> bool {
    std::env::var_os("FVD_REGENERATE").is_some()
}

/// How the engine outcomes are obtained, recorded at the top of `expected.json`.
const ENGINE_NOTE: &str = "engine: the file alone on in-memory storage, opened with \
    fvd_core::engine::Engine (read_only, then read_write on a fresh copy); a base it names is \
    a raw file of 64 KiB of zeros, a data file it names likewise. open is \"ok\" or the Debug \
    form of the OpenError; read_first and read_last (512 bytes at 0 and at the last sector, \
    when the open succeeded) are \"ok\" or the Debug form of the RequestError.";
const FVD_IMG_NOTE: &str = "fvd_img: the file in a directory holding the whole corpus. open \
    is fvd_host::host::files::open_image read-only (the image, its data file and its base chain, \
    through the open gate) and is \"ok\" or the error message; check is `fvd-img check \
    --output json FILE`: its exit status and, when it completed, its counts and the kinds of \
    its findings (each once, in report order), or its error message.";

fn outcome_of_open(result: &Result<Driver<SparseStorage>, DriverError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(DriverError::Open(e)) => format!("{e:?}"),
        Err(DriverError::OpenIo { error, .. }) => format!("{error:?}"),
        Err(e) => panic!("unexpected open failure: {e}"),
    }
}

fn outcome_of_read(driver: &mut Driver<SparseStorage>, at: u64) -> String {
    match driver.read(at, 512) {
        Ok(_) => "ok".into(),
        Err(e) => match request_error(&e) {
            Some(error) => format!("{error:?}"),
            None => panic!("unexpected read failure: {e}"),
        },
    }
}

/// The engine's outcomes for `bytes`, opened read-only or read-write.
fn engine_outcome(bytes: &[u8], writable: bool) -> Value {
    let zeros = vec![0u8; 64 << 10];
    let mut storage = SparseStorage::new(bytes, Some(&zeros));
    let names_data_file =
        bytes.get(..4) == Some(b"FVD\0") && bytes.get(32).is_some_and(|&b| b != 0);
    if names_data_file {
        storage.data = Some(SparseFile::new(&zeros));
    }
    let mut opened = open(storage, options(writable));
    let mut out = json!({ "open": outcome_of_open(&opened) });
    if let Ok(driver) = &mut opened {
        let size = driver
            .engine()
            .virtual_size()
            .expect("an open image has a size");
        out["read_first"] = outcome_of_read(driver, 0).into();
        out["read_last"] = outcome_of_read(driver, size - 512).into();
    }
    out
}

/// `text` with the scratch directory's path taken out.
fn relative(text: &str, dir: &Path) -> String {
    text.replace(&format!("{}/", dir.display()), "")
        .trim_end()
        .to_string()
}

fn fvd_img_outcome(dir: &Path, file: &str) -> Value {
    let path = dir.join(file);
    let opened = fvd_host::host::files::open_image(
        &path,
        DriverOptions {
            writable: false,
            ..Default::default()
        },
    );
    let open = match opened {
        Ok(_) => "ok".to_string(),
        Err(e) => relative(&e.to_string(), dir),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = [
        "fvd-img",
        "check",
        "--output",
        "json",
        path.to_str().unwrap(),
    ];
    let status = run_with(args, &mut out, &mut err);
    // 1: the check could not be made; 63: the file is raw data, with nothing to check.
    let check = if status == 1 || status == 63 {
        json!({ "exit": status, "error": relative(&String::from_utf8_lossy(&err), dir) })
    } else {
        let report: Value = serde_json::from_slice(&out).unwrap();
        // Each kind once, in the order first reported.
        let mut kinds: Vec<Value> = Vec::new();
        for finding in report["findings"].as_array().unwrap() {
            if !kinds.contains(&finding["kind"]) {
                kinds.push(finding["kind"].clone());
            }
        }
        let mut check = json!({
            "exit": status,
            // Zero counts are left out of the report, as qemu-img leaves them out.
            "corruptions": report.get("corruptions").cloned().unwrap_or(json!(0)),
            "leaks": report.get("leaks").cloned().unwrap_or(json!(0)),
            "findings": kinds,
        });
        if let Some(records) = report.get("journal-records") {
            check["journal_records"] = records.clone();
        }
        check
    };
    json!({ "open": open, "check": check })
}

fn outcome(dir: &Path, entry: &Entry) -> Value {
    let head = &entry.bytes[..entry.bytes.len().min(PROBE_LEN)];
    json!({
        "file": entry.file,
        "class": entry.class,
        "description": entry.description,
        "probe": format!("{:?}", probe(head)),
        "engine": {
            "read_only": engine_outcome(&entry.bytes, false),
            "read_write": engine_outcome(&entry.bytes, true),
        },
        "fvd_img": fvd_img_outcome(dir, entry.file),
    })
}

#[test]
fn corpus_files_are_exactly_what_the_generator_makes() {
    let dir = corpus_dir();
    let entries = corpus();
    if regenerating() {
        fs::create_dir_all(&dir).unwrap();
        for entry in &entries {
            fs::write(dir.join(entry.file), &entry.bytes).unwrap();
        }
    }
    let names: BTreeSet<&str> = entries.iter().map(|e| e.file).collect();
    assert_eq!(names.len(), entries.len(), "two entries share a file name");
    for entry in &entries {
        let committed = fs::read(dir.join(entry.file))
            .unwrap_or_else(|e| panic!("{}: {e} (FVD_REGENERATE=1 writes it)", entry.file));
        assert!(
            committed == entry.bytes,
            "{} differs from the generator (FVD_REGENERATE=1 rewrites it)",
            entry.file
        );
    }
    for file in fs::read_dir(&dir).unwrap() {
        let name = file.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "expected.json" || names.contains(name.as_str()),
            "corpus/malformed/{name} is not generated: delete it or add it to the generator"
        );
    }
}

#[test]
fn every_corpus_file_has_exactly_its_expected_outcomes() {
    let scratch = tempfile::tempdir().unwrap();
    let entries = corpus();
    for entry in &entries {
        fs::write(scratch.path().join(entry.file), &entry.bytes).unwrap();
    }
    let images: Vec<Value> = entries.iter().map(|e| outcome(scratch.path(), e)).collect();
    let expected_path = corpus_dir().join("expected.json");
    let document = json!({
        "about": "Malformed images and what every host must do with them. Regenerate the files \
                  and this list with FVD_REGENERATE=1 cargo test -p fvd-host --test \
                  malformed_corpus (host-tests/src/testing/malformed.rs builds the files).",
        "engine": ENGINE_NOTE,
        "fvd_img": FVD_IMG_NOTE,
        "images": images,
    });
    if regenerating() {
        let text = serde_json::to_string_pretty(&document).unwrap() + "\n";
        fs::write(&expected_path, text).unwrap();
    }
    for (entry, image) in entries.iter().zip(&images) {
        assert!(
            image.to_string().contains(entry.shows),
            "{}: its outcomes no longer show {:?}: {image:#}",
            entry.file,
            entry.shows
        );
    }
    let committed: Value =
        serde_json::from_str(&fs::read_to_string(&expected_path).unwrap()).unwrap();
    let committed_images = committed["images"].as_array().unwrap();
    assert_eq!(
        committed_images.len(),
        images.len(),
        "expected.json lists another set of files"
    );
    for (want, got) in committed_images.iter().zip(&images) {
        assert_eq!(
            want, got,
            "outcomes of {} differ from expected.json",
            got["file"]
        );
    }
    assert_eq!(committed, document, "expected.json's notes differ");
}

#[test]
fn the_corpus_has_every_class_of_the_hostile_input_issue_and_stays_small() {
    let entries = corpus();
    let classes: BTreeSet<&str> = entries.iter().map(|e| e.class).collect();
    for class in [
        "overlapping regions",
        "table entry past the end of the storage",
        "bitmap too small for the base",
        "torn journal sector",
        "bad-CRC journal sector",
        "future-epoch journal sector",
        "journal record past the table",
        "two table entries naming one physical chunk",
        "data_offset that would wrap",
        "storage_grow_unit above 1 TiB",
        "stable_journal_epoch above 2^63",
        "QED L1 entry misaligned",
        "QED L1 entry past EOF",
        "QED L1 entry into the header",
        "QED L2 entry misaligned",
        "QED L2 entry past EOF",
        "QED L2 entry into the header",
        "QED L1 entry pointing at another table's data cluster",
        "QED need-check set with an L1 table running past EOF",
        "cyclic chain",
        "image naming itself as base",
        "sizes whose products overflow",
        "damaged FVD magic",
        "the 2011 FVD magic",
        "truncated header",
        "random bytes",
        "qcow2-looking file",
    ] {
        assert!(
            classes.contains(class),
            "no corpus file for class {class:?}"
        );
    }
    let total: usize = entries.iter().map(|e| e.bytes.len()).sum();
    assert!(total < 1 << 20, "the corpus is {total} bytes");
}
