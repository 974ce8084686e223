//! Target `check`: `fvd-img check` on arbitrary FVD and QED images (built by
//! [`super::fvd`] and [`super::qed`], or raw input bytes), through the function the CLI
//! runs, on files in a RAM-backed scratch directory. The check must end with a status
//! (0, 2, 3, or 1 with a message); `check -r all` on a copy must leave an image whose
//! re-check finds no corruption (a repair never makes things worse) and that the engine
//! then opens for writing.

use super::input::Input;
use super::sparse::SparseStorage;
use super::{fvd, open, options, qed};
use crate::cli::run_with;
use crate::host::driver::DriverError;
use fvd_core::engine::OpenError;
use fvd_core::fvd::header::NAME_FIELD_LEN;
use fvd_core::fvd::FVD_MAGIC;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory for this process and thread, in /dev/shm when there is one.
    fn new() -> Scratch {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let thread = format!("{:?}", std::thread::current().id());
        let digits: String = thread.chars().filter(char::is_ascii_digit).collect();
        let dir = parent.join(format!("fvd-fuzz-check-{}-{digits}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One run of `fvd-img check`: exit status, the JSON report (statuses 0, 2, 3) and
/// stderr.
struct Report {
    status: u8,
    json: Option<Value>,
    stderr: String,
}

fn check(path: &Path, repair: bool) -> Report {
    let mut args = vec!["fvd-img", "check", "--output", "json"];
    if repair {
        args.extend(["-r", "all"]);
    }
    let path = path.to_str().expect("scratch paths are UTF-8");
    args.push(path);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = run_with(args, &mut out, &mut err);
    let stderr = String::from_utf8_lossy(&err).into_owned();
    // 63: the bytes are raw data (no image magic), which has nothing to check.
    assert!(
        matches!(status, 0..=3 | 63),
        "check exited with {status}: {stderr}"
    );
    let json = matches!(status, 0 | 2 | 3).then(|| {
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("check printed bad JSON: {e}"))
    });
    if matches!(status, 1 | 63) {
        assert!(!stderr.is_empty(), "check failed without a message");
    }
    Report {
        status,
        json,
        stderr,
    }
}

/// A counter of the JSON report, which leaves a zero counter out (as qemu-img does).
fn count(report: &Report, key: &str) -> u64 {
    let json = report
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("no JSON check report for '{key}'"));
    match json.get(key) {
        None => 0,
        Some(n) => n
            .as_u64()
            .unwrap_or_else(|| panic!("'{key}' in the check report is {n}")),
    }
}

/// An FVD header in `bytes` naming a data file gets the name `data` instead (a file in
/// the scratch directory), so arbitrary input never names a file elsewhere. True when
/// the image names one.
fn confine_data_file(bytes: &mut [u8]) -> bool {
    let is_fvd = bytes.get(..4) == Some(&FVD_MAGIC.to_le_bytes()[..]);
    match bytes.get_mut(32..32 + NAME_FIELD_LEN) {
        Some(field) if is_fvd && field[0] != 0 => {
            field.fill(0);
            field[..4].copy_from_slice(b"data");
            true
        }
        _ => false,
    }
}

/// Runs one input: the kind byte (`% 3`: FVD, QED, raw bytes), then the case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (mut image, base) = match input.u8() % 3 {
        0 => {
            let case = fvd::build(&mut input);
            (case.image, case.base)
        }
        1 => {
            let case = qed::build(&mut input);
            (case.image, case.base)
        }
        _ => (input.rest().to_vec(), None),
    };
    let data_file = confine_data_file(&mut image);
    let scratch = Scratch::new();
    let path = scratch.0.join("img");
    fs::write(&path, &image).expect("scratch write");
    fs::write(scratch.0.join("data"), [0u8; 4096]).expect("scratch write");
    if let Some(base) = &base {
        fs::write(scratch.0.join("base"), base).expect("scratch write");
    }
    let first = check(&path, false);
    if matches!(first.status, 1 | 63) {
        return;
    }
    let repaired = scratch.0.join("img-r");
    fs::copy(&path, &repaired).expect("scratch copy");
    let repair = check(&repaired, true);
    assert_ne!(
        repair.status, 1,
        "check -r all failed where check succeeded: {}",
        repair.stderr
    );
    let refused = repair
        .json
        .as_ref()
        .is_some_and(|j| j.get("repair-refused").is_some());
    if refused {
        let after = fs::read(&repaired).expect("scratch read");
        assert!(after == image, "a refused repair changed the image");
        return;
    }
    let again = check(&repaired, false);
    assert_ne!(
        again.status, 1,
        "the repaired image no longer checks: {}",
        again.stderr
    );
    assert_eq!(
        count(&again, "corruptions"),
        0,
        "check -r all left corruptions (before: {}): {}",
        count(&first, "corruptions"),
        again
            .json
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default()
    );
    let bytes = fs::read(&repaired).expect("scratch read");
    // A base of zeros stands in for one the image names but the case did not build.
    let base = base.unwrap_or_else(|| vec![0u8; 4096]);
    let mut storage = SparseStorage::new(&bytes, Some(&base));
    if data_file {
        let data = fs::read(scratch.0.join("data")).expect("scratch read");
        storage.data = Some(super::sparse::SparseFile::new(&data));
    }
    match open(storage, options(true)) {
        // Valid, and read-only to every writer (check does not call that a corruption).
        Ok(_) | Err(DriverError::Open(OpenError::EpochExhausted { .. })) => {}
        Err(e) => panic!("the engine refuses an image check -r all left clean: {e}"),
    }
}
