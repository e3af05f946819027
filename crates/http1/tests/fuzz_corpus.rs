//! The `http1_*` fuzz targets' inputs in the normal test suite (stable Rust, no cargo-fuzz): every file of
//! each target's seeds (`fuzz/seeds/<target>/`, kept in git: hand-made cases and crash inputs
//! kept as regressions) goes through the target's check (`anyedge_http1::fuzz`), and so do
//! the files of a local `cargo fuzz` run (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`),
//! when there are any.

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("http1_request", anyedge_http1::fuzz::request),
    ("http1_response", anyedge_http1::fuzz::response),
    ("http1_chunked", anyedge_http1::fuzz::chunked),
];

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

#[test]
fn every_target_has_seeds_and_every_seed_passes() {
    for (target, check) in TARGETS {
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

#[test]
fn local_corpus_and_crash_inputs_pass() {
    for (target, check) in TARGETS {
        for kind in ["corpus", "artifacts"] {
            let found = files(&fuzz_dir().join(kind).join(target));
            let failed = failures(check, &found);
            assert!(failed.is_empty(), "{target} fails on {failed:#?}");
        }
    }
}

#[test]
fn every_fuzz_target_is_run_here() {
    let manifest =
        std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml reads");
    // The other targets check `anyedge_backhaul::fuzz`: crates/backhaul/tests/fuzz_corpus.rs.
    let bins = manifest.matches("name = \"http1_").count();
    assert_eq!(
        bins,
        TARGETS.len(),
        "an http1_* fuzz target missing from TARGETS"
    );
    for (target, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} is not a target in fuzz/Cargo.toml"
        );
    }
}
