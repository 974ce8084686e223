//! What the benchmark programs (`fvd-cor-bench`, `fvd-prefetch-bench`) share: their
//! argument parsing, the slow base they model (a delay before every base read) and the
//! fresh overlay each run starts from.

use crate::host::faults::{Fault, FaultPlan, Kinds, Rule};
use fvd_core::engine::FileId;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The value after `name` in `args`, if any.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The comma-separated values after `name` (those that parse), or `default`.
pub fn list<T: std::str::FromStr + Clone>(args: &[String], name: &str, default: &[T]) -> Vec<T> {
    match arg(args, name) {
        Some(s) => s.split(',').filter_map(|v| v.parse().ok()).collect(),
        None => default.to_vec(),
    }
}

/// A base that makes every read wait `micros` first: a remote or slow base.
pub fn delayed_base_reads(micros: u64) -> FaultPlan {
    FaultPlan::with(
        Rule::from(0, Fault::Delay { micros })
            .on(FileId::Base)
            .kinds(Kinds::READS),
    )
}

/// A fresh FVD image `bench.fvd` in `dir` over the raw `base.raw` there, with
/// `block_size` (`None`: the default geometry), made by the `fvd-img` next to the running
/// program.
pub fn fresh_overlay(dir: &Path, block_size: Option<u64>) -> PathBuf {
    let image = dir.join("bench.fvd");
    let _ = std::fs::remove_file(&image);
    let program = std::env::current_exe()
        .expect("the running program's path")
        .with_file_name("fvd-img");
    let mut create = Command::new(program);
    create.args(["create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw"]);
    if let Some(block) = block_size {
        create.args(["-o", &format!("block_size={block}")]);
    }
    let status = create.arg(&image).status().expect("run fvd-img create");
    assert!(status.success(), "fvd-img create failed");
    image
}
