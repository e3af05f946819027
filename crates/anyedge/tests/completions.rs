//! `anyedge completions bash|zsh|fish` and `anyedge man`: each script is accepted by its shell
//! and completes subcommands and option values; the man page renders without warnings.
//! (bash, zsh, fish and groff: `scripts/test` installs them.)

use std::process::Command;

fn anyedge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_anyedge"))
        .args(args)
        .output()
        .expect("run anyedge");
    assert!(out.status.success(), "anyedge {args:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn run(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{shell}: {e} (install it: scripts/test does)"));
    assert!(
        out.status.success(),
        "{shell} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn completion_scripts_work_in_their_shells() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    };
    let bash = write("anyedge.bash", anyedge(&["completions", "bash"]));
    let complete = |words: &str| {
        run(
            "bash",
            &[
                "-c",
                &format!("source {bash}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _anyedge; echo \"${{COMPREPLY[@]}}\""),
            ],
        )
    };
    assert!(complete("anyedge ''").contains("status"));
    assert!(complete("anyedge certs ''").contains("cluster-ca"));
    assert_eq!(complete("anyedge --log-format ''").trim(), "text json");
    assert_eq!(
        complete("anyedge completions ''")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>(),
        ["bash", "zsh", "fish"]
    );
    assert!(complete("anyedge status --j").contains("--json"));

    let zsh = write("_anyedge", anyedge(&["completions", "zsh"]));
    run("zsh", &["-n", &zsh]);

    let fish = write("anyedge.fish", anyedge(&["completions", "fish"]));
    run("fish", &["-n", &fish]);
    let offered = run(
        "fish",
        &[
            "-c",
            &format!("source {fish}; complete -C 'anyedge status --'"),
        ],
    );
    assert!(
        offered.contains("--admin") && offered.contains("--json"),
        "{offered}"
    );
    let offered = run(
        "fish",
        &["-c", &format!("source {fish}; complete -C 'anyedge apps '")],
    );
    assert!(
        offered.contains("put") && offered.contains("list"),
        "{offered}"
    );
}

#[test]
fn the_man_page_renders_without_warnings() {
    let dir = tempfile::tempdir().expect("dir");
    let page = dir.path().join("anyedge.1");
    std::fs::write(&page, anyedge(&["man"])).expect("write");
    let page = page.to_str().expect("utf-8 path");
    let warnings = run("groff", &["-man", "-z", "-ww", page]);
    assert!(warnings.trim().is_empty(), "groff: {warnings}");
    let text = run("groff", &["-man", "-Tascii", "-P-cbou", page]);
    for cmd in [
        "anyedge status",
        "anyedge completions",
        "anyedge run",
        "--admin",
    ] {
        assert!(text.contains(cmd), "{cmd} in the man page");
    }
}
