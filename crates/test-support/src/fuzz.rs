//! Fuzz targets' inputs as ordinary tests (stable Rust, no cargo-fuzz): every file of a target's
//! seeds (`fuzz/seeds/<target>/`, kept in git: hand-made cases and crash inputs kept as
//! regressions) goes through the target's check, and so do the files of a local `cargo fuzz`
//! run (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`) when there are any. Each crate with
//! fuzz targets runs its own (`crates/backhaul/tests/fuzz_corpus.rs`,
//! `crates/http1/tests/fuzz_corpus.rs`, ...), with [`fuzz_corpus_tests!`].

use std::path::{Path, PathBuf};

/// A target's check: panics on a finding.
pub type Check = fn(&[u8]);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files directly in `dir` (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run `check` over every file; the names of those it panicked on.
fn failures(check: Check, files: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for file in files {
        let data = std::fs::read(file).expect("a corpus file reads");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    failed
}

/// Every target has at least five seeds, and every seed passes its check.
pub fn check_seeds(targets: &[(&str, Check)]) {
    for &(target, check) in targets {
        let seeds = files(&fuzz_dir().join("seeds").join(target));
        assert!(
            seeds.len() >= 5,
            "{target}: only {} seeds in fuzz/seeds/{target}",
            seeds.len()
        );
        let failed = failures(check, &seeds);
        assert!(failed.is_empty(), "{target} fails on {failed:#?}");
    }
}

/// A local fuzzing run's corpus and crash inputs pass too.
pub fn check_local_corpus(targets: &[(&str, Check)]) {
    for &(target, check) in targets {
        for kind in ["corpus", "artifacts"] {
            let found = files(&fuzz_dir().join(kind).join(target));
            let failed = failures(check, &found);
            assert!(failed.is_empty(), "{target} fails on {failed:#?}");
        }
    }
}

/// The names of the fuzz targets in `fuzz/Cargo.toml` for which `mine` holds.
pub fn fuzz_bins(mine: impl Fn(&str) -> bool) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml reads");
    let mut bins: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section
                .lines()
                .find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_string())
        })
        .filter(|name| mine(name))
        .collect();
    bins.sort();
    bins
}

/// Every target of `mine` in `fuzz/Cargo.toml` is in `targets`, and the other way round.
pub fn check_all_run(targets: &[(&str, Check)], mine: impl Fn(&str) -> bool) {
    let mut ours: Vec<String> = targets.iter().map(|(t, _)| t.to_string()).collect();
    ours.sort();
    assert_eq!(
        fuzz_bins(mine),
        ours,
        "fuzz/Cargo.toml and this test's targets differ"
    );
}

/// The three tests every crate with fuzz targets runs (`tests/fuzz_corpus.rs`): every target
/// has seeds and passes them, a local corpus and crash inputs pass, and the crate's targets in
/// `fuzz/Cargo.toml` (those `$mine` accepts) are exactly `$targets`.
#[macro_export]
macro_rules! fuzz_corpus_tests {
    ($targets:expr, $mine:expr) => {
        #[test]
        fn every_target_has_seeds_and_every_seed_passes() {
            $crate::fuzz::check_seeds(&$targets);
        }

        #[test]
        fn local_corpus_and_crash_inputs_pass() {
            $crate::fuzz::check_local_corpus(&$targets);
        }

        #[test]
        fn every_fuzz_target_is_run_here() {
            $crate::fuzz::check_all_run(&$targets, $mine);
        }
    };
}
