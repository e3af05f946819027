//! `anyedge check` on the shipped examples and on broken files, and `anyedge demo`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_anyedge")
}

/// `anyedge check --config FILE`.
fn check(file: &Path) -> std::process::Output {
    Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(file)
        .output()
        .expect("run check")
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_example() {
    let files = examples();
    assert!(
        files.iter().any(|f| f.ends_with("work-sample.json")),
        "{files:?}"
    );
    for file in files {
        let out = check(&file);
        assert!(
            out.status.success(),
            "{} fails check:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn check_reports_every_problem_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[apps]]\nname = \"a\"\n  [[apps.services]]\n  ports = [ { port = 70000, handlers = [] } ]\n\
         [[apps]]\nname = \"b\"\nunknown_key = true\n",
    )
    .expect("write");
    let out = check(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:"),
        "port problem on line 4:\n{err}"
    );
    assert!(err.contains("bad.toml:7:"), "unknown key on line 7:\n{err}");
    assert!(err.contains("unknown_key"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent/anyedge.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
