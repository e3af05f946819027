//! The fuzz targets' inputs in the normal test suite (stable Rust, no cargo-fuzz): every file of
//! each target's seeds (`fuzz/seeds/<target>/`, kept in git: hand-made cases and crash inputs
//! kept as regressions) goes through the target's check (`anyedge_backhaul::fuzz`), and so do
//! the files of a local `cargo fuzz` run (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`),
//! when there are any.

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 4] = [
    ("tcp_header", anyedge_backhaul::fuzz::tcp_header),
    ("stream_header", anyedge_backhaul::fuzz::stream_header),
    ("retry_reason", anyedge_backhaul::fuzz::retry_reason),
    ("load_feed", anyedge_backhaul::fuzz::load_feed),
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
    // The `http1_*` targets check `anyedge_http1::fuzz`: crates/http1/tests/fuzz_corpus.rs.
    let http1_bins = manifest.matches("name = \"http1_").count();
    let bins = manifest.matches("[[bin]]").count() - http1_bins;
    assert_eq!(bins, TARGETS.len(), "a fuzz target missing from TARGETS");
    for (target, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} is not a target in fuzz/Cargo.toml"
        );
    }
}
