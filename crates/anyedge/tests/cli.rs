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

/// `steering = "sk_lookup"` on a machine that lacks something: `check` names each lack at the
/// `steering` line with how to fix it, and exits 1 (never "ok" and a silent fallback).
#[test]
fn check_says_what_sk_lookup_lacks_and_how_to_fix_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("steer.toml");
    let not_bpffs = dir.path().join("pins");
    let text = format!(
        "[node]\nid = \"n1\"\nsteering = \"sk_lookup\"\nbpf_pin_dir = \"{}\"\n",
        not_bpffs.display()
    );
    std::fs::write(&file, text).expect("write");
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = format!("{}:3: node.steering:", file.display());
    assert!(stderr.contains(&at), "{stderr}");
    assert!(stderr.contains("is not on a BPF filesystem"), "{stderr}");
    assert!(stderr.contains("mount -t bpf bpf /sys/fs/bpf"), "{stderr}");

    // Without privileges: the capabilities too (run as nobody where the test runs as root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && Path::new("/usr/bin/setpriv").exists() {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.path(), readable).expect("chmod");
        let out = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("missing capabilities CAP_BPF, CAP_NET_ADMIN: run as root"),
            "{stderr}"
        );
    }
    // The same file with steering overridden to sockets is fine.
    let out = Command::new(bin())
        .args(["check", "--steering", "sockets", "--config"])
        .arg(&file)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
