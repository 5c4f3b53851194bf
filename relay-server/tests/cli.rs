//! The relay binary's command line: help, version, exit code 64 on bad config, provisioning.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay-server"))
}

#[test]
fn help_and_version() {
    let out = relay().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = relay().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("quickstart"));
}

#[test]
fn bad_configuration_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["tenant", "list"])
        .env("RELAY_LIMITS__MAX_BODDY_BYTES", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_boddy_bytes"));
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, "[listen]\nadmin = \"0.0.0.0:9090\"\n").unwrap();
    let out = relay()
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn provisioning_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = relay()
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["tenant", "create", "Contoso"]).0, Some(0));
    let (code, _, err) = run(&["tenant", "create", "contoso"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = run(&["tenant", "create", "bad/name"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid name"), "{err}");
    let (_, out, _) = run(&["tenant", "credential", "create", "contoso"]);
    let secret = out.lines().last().unwrap().trim().to_string();
    assert!(secret.starts_with("rsk_"));
    let (_, list, _) = run(&["tenant", "credential", "list", "contoso"]);
    assert!(list.contains("active") && !list.contains(&secret), "{list}");
    assert_eq!(
        run(&[
            "tenant",
            "hostname",
            "add",
            "contoso",
            "app.contoso.example",
            "--target",
            "app"
        ])
        .0,
        Some(0)
    );
    assert!(run(&["tenant", "hostname", "list", "contoso"])
        .1
        .contains("app.contoso.example"));
    let (code, _, err) = run(&[
        "tenant",
        "set",
        "contoso",
        "--description",
        "Contoso's intranet",
        "--audit-query-strings",
        "true",
        "--max-body-bytes",
        "1000",
        "--request-timeout",
        "5s",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, show, _) = run(&["tenant", "show", "contoso"]);
    assert!(show.contains("Contoso's intranet"), "{show}");
    assert!(show.contains("audit query strings: true"), "{show}");
    assert!(show.contains("max_body_bytes: Some(1000)"), "{show}");
    assert!(show.contains("request_timeout_ms: Some(5000)"), "{show}");
    let (code, _, err) = run(&["tenant", "set", "contoso", "--request-timeout", "0s"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("above zero"), "{err}");
    assert_eq!(run(&["tenant", "disable", "contoso"]).0, Some(0));
    assert!(run(&["tenant", "list"]).1.contains("false"));
    // API tokens: shown once, listed without the value, unique names, revocable.
    let (code, out, _) = run(&["admin", "token", "create", "ci-bot"]);
    assert_eq!(code, Some(0));
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("rat_"), "{out}");
    let (_, list, _) = run(&["admin", "token", "list"]);
    assert!(list.contains("ci-bot") && list.contains("active") && !list.contains(&token));
    let (code, _, err) = run(&["admin", "token", "create", "CI-bot"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(run(&["admin", "token", "revoke", "ci-bot"]).0, Some(0));
    assert!(run(&["admin", "token", "list"]).1.contains("revoked"));
    let (code, _, err) = run(&["admin", "token", "revoke", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    // Every change above is in the admin log, newest first.
    let (_, log, _) = run(&["admin", "log"]);
    let actions: Vec<&str> = log
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        actions,
        [
            "api_token.revoke",
            "api_token.create",
            "tenant.disable",
            "tenant.update",
            "hostname.add",
            "credential.create",
            "tenant.create"
        ],
        "{log}"
    );
    assert!(
        log.contains("cli") && log.contains("contoso/app.contoso.example"),
        "{log}"
    );
    // Neither the secret nor the token is anywhere in the data directory. Everything after the
    // prefix is searched: the random part may itself contain '_' (base64url), and a short piece
    // after the last one would match binary files by chance.
    let random_part = |v: &str| v.split_once('_').map_or(v, |(_, r)| r).to_string();
    let (secret, token) = (random_part(&secret), random_part(&token));
    assert!(secret.len() >= 20 && token.len() >= 20, "{secret} {token}");
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&secret), "{}", entry.display());
        assert!(!text.contains(&token), "{}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
