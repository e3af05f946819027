//! Work-sample JSON errors: message, path and line.

use crate::{errors, line_of, ok, one};

fn sample(apps: &str) -> String {
    format!("{{\n  \"Apps\": [\n{apps}\n  ]\n}}\n")
}

fn entry(name: &str, ports: &str, targets: &str) -> String {
    format!("    {{\n      \"Name\": \"{name}\",\n      \"Ports\": [{ports}],\n      \"Targets\": [{targets}]\n    }}")
}

#[test]
fn valid_sample_maps_one_raw_service_per_app() {
    let c = ok(&sample(&entry("a", "1, 2", "\"h:9\"")));
    assert_eq!(c.apps[0].services[0].ports.len(), 2);
    assert_eq!(c.apps[0].instances[0].id, "h:9");
}

#[test]
fn port_repeated_across_apps() {
    let text = sample(&format!(
        "{},\n{}",
        entry("a", "5001, 5002", "\"h:1\""),
        entry("b", "6001,\n  5002", "\"h:2\"")
    ));
    let d = one(
        &text,
        "Apps[1].Ports[1]",
        "  5002]",
        "port 5002 is already used by app `a` (first at line 5); a port may belong to one app only",
    );
    assert_eq!(d.column, Some(3));
}

#[test]
fn port_repeated_within_an_app() {
    let text = sample(&entry("a", "5001,\n 5001", "\"h:1\""));
    one(
        &text,
        "Apps[0].Ports[1]",
        " 5001]",
        "port 5001 is listed twice in app `a`",
    );
}

#[test]
fn port_out_of_range() {
    let text = sample(&entry("a", "70000", "\"h:1\""));
    one(
        &text,
        "Apps[0].Ports[0]",
        "70000",
        "port 70000 is out of range (1-65535)",
    );
}

#[test]
fn target_without_port() {
    let text = sample(&entry("a", "1", "\"h:1\", \"tcp-echo.fly.dev\""));
    one(
        &text,
        "Apps[0].Targets[1]",
        "Targets",
        "invalid address `tcp-echo.fly.dev`: a port is required (host:port)",
    );
}

#[test]
fn target_garbage() {
    let text = sample(&entry("a", "1", "\"a b:c\""));
    one(
        &text,
        "Apps[0].Targets[0]",
        "Targets",
        "invalid address `a b:c`",
    );
}

#[test]
fn empty_targets() {
    let text = sample(&entry("a", "1", ""));
    one(
        &text,
        "Apps[0].Targets",
        "Targets",
        "an app needs at least one target",
    );
}

#[test]
fn empty_ports() {
    let text = sample(&entry("a", "", "\"h:1\""));
    one(
        &text,
        "Apps[0].Ports",
        "Ports",
        "an app needs at least one port",
    );
}

#[test]
fn duplicate_target() {
    let text = sample(&entry("a", "1", "\"h:1\", \"h:1\""));
    one(
        &text,
        "Apps[0].Targets[1]",
        "Targets",
        "target `h:1` is listed twice in app `a`",
    );
}

#[test]
fn unknown_keys_are_all_reported() {
    let text = "{\n  \"Apps\": [\n    {\"Name\": \"a\", \"Ports\": [1], \"Targets\": [\"h:1\"],\n     \"Weight\": 3}\n  ],\n  \"Version\": 2\n}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{}", crate::show(&errs));
    assert_eq!(
        (errs[0].path.as_str(), errs[0].line, errs[0].column),
        ("Apps[0].Weight", Some(4), Some(6))
    );
    assert_eq!(errs[0].message, "unknown key `Weight`");
    assert_eq!((errs[1].path.as_str(), errs[1].line), ("Version", Some(6)));
}

#[test]
fn duplicate_key() {
    let text = "{\"Apps\": [{\"Name\": \"a\",\n \"Name\": \"b\", \"Ports\": [1], \"Targets\": [\"h:1\"]}]}";
    let d = one(
        text,
        "Apps[0].Name",
        " \"Name\": \"b\"",
        "duplicate key `Name`",
    );
    assert_eq!((d.line, d.column), (Some(2), Some(2)));
}

#[test]
fn missing_key() {
    let text = "{\"Apps\": [\n {\"Name\": \"a\", \"Ports\": [1]}]}";
    one(text, "Apps[0]", "{\"Name\"", "missing field `Targets`");
}

#[test]
fn wrong_type() {
    let text = sample(&entry("a", "\"5001\"", "\"h:1\""));
    one(
        &text,
        "Apps[0].Ports[0]",
        "Ports",
        "invalid type: string \"5001\", expected an integer",
    );
}

#[test]
fn bad_app_name_and_duplicate_name() {
    let text = sample(&format!(
        "{},\n{}",
        entry("a", "1", "\"h:1\""),
        entry("a", "2", "\"h:2\"")
    ));
    let d = one(
        &text,
        "Apps[1].Name",
        "\"Name\": \"a\",\n      \"Ports\": [2]",
        "duplicate app name `a`",
    );
    assert_eq!(d.line, Some(line_of(&text, "[2]") - 1));
    one(
        &sample(&entry("", "1", "\"h:1\"")),
        "Apps[0].Name",
        "Name",
        "app name is empty",
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let errs = errors("{\n  \"Apps\": [1,]\n}");
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (Some(2), Some(14)));
    assert!(
        errs[0].message.starts_with("JSON syntax: trailing comma"),
        "{}",
        errs[0]
    );
}

#[test]
fn missing_apps() {
    one("{}", "", "{", "missing field `Apps`");
}
