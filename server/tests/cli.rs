//! The binary's command line: every documented flag and variable is listed, bad settings are
//! refused with the setting's name and exit code 2.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::Command;

/// A JWT secret for runs that get past configuration (a Redis store requires one).
const JWT_SECRET: &str = "cli-test-jwt-secret-0123456789abcdef0123";

fn portcullis(args: &[&str]) -> std::process::Output {
    portcullis_with_env(args, &[])
}

fn portcullis_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run portcullis")
}

#[test]
fn help_lists_every_flag_and_its_variable() {
    let out = portcullis(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, var) in [
        ("--listen", "PORTCULLIS_LISTEN"),
        ("--config", "PORTCULLIS_CONFIG"),
        ("--redis-url", "PORTCULLIS_REDIS_URL"),
        ("--redis-cluster", "PORTCULLIS_REDIS_CLUSTER"),
        ("--envoy-config", "PORTCULLIS_ENVOY_CONFIG"),
        ("--default-limit", "PORTCULLIS_DEFAULT_LIMIT"),
        ("--fail-mode", "PORTCULLIS_FAIL_MODE"),
        ("--store-timeout", "PORTCULLIS_STORE_TIMEOUT"),
        ("--jwt-key-set", "PORTCULLIS_JWT_KEY_SET"),
        ("--jwt-issuer", "PORTCULLIS_JWT_ISSUER"),
        ("--jwt-audience", "PORTCULLIS_JWT_AUDIENCE"),
        ("--access-token-ttl", "PORTCULLIS_ACCESS_TOKEN_TTL"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(var), "{var} missing from --help");
    }
}

#[test]
fn invalid_settings_exit_2_naming_the_setting() {
    let out = portcullis(&["--default-limit", "sixty"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--default-limit"), "{err}");

    let out = portcullis(&[
        "--redis-url",
        "redis://:s3cr3t-pass@h",
        "--redis-cluster",
        "redis://h",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains("s3cr3t-pass"),
        "secrets are never printed: {err}"
    );
}

/// Before: an Envoy limit finer than a microsecond started without a word, and then every
/// ShouldRateLimit for it was refused as the caller's INVALID_ARGUMENT. Now the start stops,
/// naming the file, the descriptor path and the rule.
#[test]
fn an_unusable_envoy_limit_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("limits.yaml");
    std::fs::write(
        &path,
        "domain: edge\ndescriptors:\n  - key: client\n    value: c1\n    rate_limit: { unit: second, requests_per_unit: 1000000000 }\n",
    )
    .unwrap();
    let out = portcullis(&["--envoy-config", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for part in [
        "limits.yaml",
        "descriptor client=c1",
        "descriptors[0].rate_limit",
        "at most one per microsecond of the period",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

/// A `[[limits.override]]` of the TOML file that no request could use stops the start too,
/// naming the file, the entry and the rule.
#[test]
fn an_unusable_file_limit_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("portcullis.toml");
    std::fs::write(
        &toml,
        "[[limits.override]]\ntenant = \"acme\"\nrate = 2000\nperiod = \"1ms\"\n",
    )
    .unwrap();
    let out = portcullis(&["--config", toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for part in [
        toml.to_str().unwrap(),
        "limits.override[0].rate",
        "must be at most one per microsecond of the period",
    ] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
}

#[test]
fn redis_errors_never_show_the_password() {
    for args in [
        ["--redis-url", "redis://:hunter2secret@bad host:notaport/x"],
        ["--redis-cluster", "redis://:hunter2secret@127.0.0.1:1"],
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args);
        let out = portcullis_with_env(&all, &[("JWT_SECRET_KEY", JWT_SECRET)]);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("Redis"), "says what failed: {err}");
        assert!(!err.contains("hunter2secret"), "{err}");
    }
}
