//! The fuzz targets' committed seed corpus (`fuzz/seeds/<target>/`): the generated seeds
//! are exactly what `fvd_host::testing::fuzz::seeds` makes (regenerate with `FVD_REGENERATE=1`),
//! and every seed, generated or saved from a crash, runs through its target on stable
//! without a panic, so a fixed crash stays fixed without nightly.

use fvd_host::testing::fuzz::{self, seeds};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn regenerating() -> bool {
    std::env::var_os("FVD_REGENERATE").is_some()
}

#[test]
fn committed_seeds_are_exactly_what_the_generator_makes() {
    for target in fuzz::TARGETS {
        let dir = seed_dir(target);
        let made = seeds::seeds(target);
        assert!(made.len() >= 20, "{target}: only {} seeds", made.len());
        let names: BTreeSet<_> = made.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), made.len(), "{target}: duplicate seed names");
        if regenerating() {
            fs::create_dir_all(&dir).unwrap();
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("gen-") && !names.contains(&name) {
                    fs::remove_file(path).unwrap();
                }
            }
            for (name, bytes) in &made {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
        for (name, bytes) in &made {
            let committed = fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{target}/{name}: {e} (FVD_REGENERATE=1 writes it)"));
            assert!(
                committed == *bytes,
                "{target}/{name} differs from the generator (FVD_REGENERATE=1 rewrites it)"
            );
        }
        for entry in fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with("gen-") || names.contains(&name),
                "{target}/{name} is no longer generated: delete it"
            );
        }
    }
}

#[test]
fn every_committed_seed_runs_through_its_target_without_a_panic() {
    for target in fuzz::TARGETS {
        let mut ran = 0;
        for entry in fs::read_dir(seed_dir(target)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            let name = path.display().to_string();
            let outcome = std::panic::catch_unwind(|| fuzz::run(target, &bytes));
            assert!(outcome.is_ok(), "{target}: seed {name} panicked");
            ran += 1;
        }
        assert!(ran >= 20, "{target}: only {ran} seeds ran");
        eprintln!("{target}: {ran} seeds");
    }
}
