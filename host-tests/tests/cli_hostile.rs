//! Hostile and unusual input through `fvd-img`, run as a user would (the real binary in
//! scratch directories): growing a raw base keeps it sparse, persistent I/O errors end a
//! command with a clear error instead of a spin, requests and outputs stay bounded in
//! memory, probing never mistakes a damaged image for raw data, every geometry `create`
//! accepts opens, and each failure names its real cause. Commands that could hang run
//! under `timeout`, so a regression fails instead of hanging the suite.

mod common;

use common::{create_fvd, fails, ok, scratch, sparse_file};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const M: u64 = 1 << 20;

/// Bytes the file at `path` really occupies on disk (`st_blocks` × 512).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn commit_into_a_smaller_raw_base_keeps_the_grown_base_sparse() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "2G"]);
    // One piece of data far past the old end of the base, and nothing else.
    ok(d, &["io", "-c", "write -q -P 0x5a 1536M 64k", "top.fvd"]);
    let run = ok(d, &["commit", "top.fvd"]);
    assert_eq!(run.stdout, "Image committed.\n");
    let base = d.join("base.raw");
    assert_eq!(fs::metadata(&base).unwrap().len(), 2 << 30);
    // The overlay's 64 KiB is all the base may gain (plus file-system slack).
    assert!(
        allocated(&base) <= M,
        "a 2 GiB commit of 64 KiB of data allocated {} bytes in the base",
        allocated(&base)
    );
    let file = fs::File::open(&base).unwrap();
    let mut data = vec![0u8; 64 << 10];
    file.read_exact_at(&mut data, 1536 * M).unwrap();
    assert!(data.iter().all(|&b| b == 0x5a));
    file.read_exact_at(&mut data, 1536 * M + (64 << 10))
        .unwrap();
    assert!(data.iter().all(|&b| b == 0));
}
