//! The `dagfs` binary as a user meets it: help, and one clear line plus exit 2 for bad config.

use std::io::Write;
use std::process::{Command, Output};

fn dagfs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dagfs"));
    command.args(args).env_remove("DAGFS_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run dagfs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One non-empty line on stderr and exit code 2.
fn assert_one_line_usage_error(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one line expected:\n{text}"
    );
    text
}

#[test]
fn help_lists_every_subcommand() {
    let output = dagfs(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for sub in [
        "sync", "push", "mount", "verify", "failover", "log", "status",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing:\n{help}"
        );
    }
    for flag in ["--config", "--log-format", "--verbose", "--quiet", "--set"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[test]
fn missing_config_file_is_one_clear_line() {
    let output = dagfs(&["--config", "/nonexistent", "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("/nonexistent") && text.contains("--config"),
        "{text}"
    );
}

#[test]
fn wrong_typed_key_names_key_value_and_expectation() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[store]\ntimeout = 30").unwrap();
    let path = file.path().to_str().unwrap();
    let output = dagfs(&["--config", path, "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    for part in ["store.timeout", "30", "expected a duration", path] {
        assert!(text.contains(part), "{part:?} missing: {text}");
    }
}

#[test]
fn bad_values_from_env_and_flags_are_attributed() {
    let output = dagfs(&["verify"], &[("DAGFS_LOG_FORMAT", "xml")]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("log.format") && text.contains("xml") && text.contains("environment"),
        "{text}"
    );

    let output = dagfs(&["--set", "store.timeout=soon", "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("store.timeout") && text.contains("soon") && text.contains("flags"),
        "{text}"
    );

    let output = dagfs(&["--set", "nonsense", "verify"], &[]);
    assert_one_line_usage_error(&output);
}

#[test]
fn unknown_key_is_rejected() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[store]\nurll = \"hdfs://x/y\"").unwrap();
    let output = dagfs(&["--config", file.path().to_str().unwrap(), "log"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("store.urll") && text.contains("url"),
        "{text}"
    );
}

#[test]
fn unbuilt_commands_say_so_and_exit_2() {
    let output = dagfs(&["failover"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(text.contains("not implemented yet"), "{text}");
}
