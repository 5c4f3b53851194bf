//! The `connector` command line as an operator meets it: every command, argument and positional
//! explains itself in `--help` (walked through clap's introspection of the binary's own
//! definitions, and rendered by the real binary); `config check` prints the effective settings
//! with the secret masked or exits 64; logs written to a pipe carry no colour codes.

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;

#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

const BIN: &str = env!("CARGO_BIN_EXE_connector");

/// `(path, problem)` for every command below `cmd` (inclusive) that lacks help text.
fn missing_help(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
    if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
        found.push(format!("`{path}`: the command has no about text"));
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        // clap's own --help and --version explain themselves.
        if matches!(id, "help" | "version") {
            continue;
        }
        let documented = arg
            .get_help()
            .or(arg.get_long_help())
            .is_some_and(|h| !h.to_string().trim().is_empty());
        if !documented {
            let shown = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => format!("<{}>", id.to_uppercase()),
            };
            found.push(format!("`{path}`: {shown} has no help text"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            missing_help(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }
}

/// Every command path, e.g. `["service", "install"]`.
fn command_paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            let mut p = prefix.clone();
            p.push(sub.get_name().to_string());
            command_paths(sub, p, out);
        }
    }
}

#[test]
fn every_argument_has_help_text() {
    let cli = cli::Cli::command();
    cli.clone().debug_assert();
    let mut found = Vec::new();
    missing_help(&cli, "connector", &mut found);
    assert!(found.is_empty(), "missing help:\n{}", found.join("\n"));
}

#[test]
fn every_command_renders_its_help_through_the_binary() {
    let mut paths = Vec::new();
    command_paths(&cli::Cli::command(), Vec::new(), &mut paths);
    assert!(paths.len() >= 10, "{paths:?}");
    for path in paths {
        let out = Process::new(BIN)
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path:?}: {text}");
        assert!(text.contains("Usage: connector"), "{path:?}: {text}");
    }
}

#[test]
fn run_help_lists_the_target_options() {
    let out = Process::new(BIN).args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "timeout=",
        "ca-cert=",
        "insecure",
        "http2",
        "preserve-host",
        "upgrade=",
        "no-upgrades",
        "--inspect",
    ] {
        assert!(
            text.contains(option),
            "`run --help` lacks {option}:\n{text}"
        );
    }
}

#[test]
fn config_check_prints_the_effective_configuration_with_the_secret_masked() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "rsk_do-not-print-me").unwrap();
    let config = dir.path().join("connector.toml");
    std::fs::write(
        &config,
        "server = \"https://relay.example.com\"\ntenant = \"acme\"\nsecret_file = \"secret\"\n\
         [targets.app]\nurl = \"http://127.0.0.1:8080\"\n",
    )
    .unwrap();
    let out = Process::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&config)
        .args([
            "--target",
            "grpc=http://127.0.0.1:50051,http2,preserve-host",
            "--proxy",
            "http://user:pw-secret@proxy.internal:3128",
        ])
        .env("CONNECTOR_SESSION__COUNT", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("do-not-print-me"), "{text}");
    assert!(!text.contains("pw-secret"), "{text}");
    let shown: toml::Table = text.parse().expect("TOML");
    assert_eq!(shown["secret"].as_str(), Some("***"));
    assert_eq!(
        shown["server"].as_str(),
        Some("https://relay.example.com:443")
    );
    assert_eq!(
        shown["proxy"].as_str(),
        Some("http://***@proxy.internal:3128")
    );
    assert_eq!(shown["session"]["count"].as_integer(), Some(3));
    assert_eq!(shown["session"]["keep_alive"].as_str(), Some("1s"));
    let grpc = &shown["targets"]["grpc"];
    assert_eq!(grpc["http2"].as_bool(), Some(true));
    assert_eq!(grpc["preserve_host"].as_bool(), Some(true));
    assert_eq!(
        shown["targets"]["app"]["url"].as_str(),
        Some("http://127.0.0.1:8080/")
    );
}

#[test]
fn config_check_exits_64_with_the_error() {
    let out = Process::new(BIN)
        .args(["config", "check", "--server", "https://relay.example.com"])
        .args(["--tenant", "acme", "--target", "app=ftp://x"])
        .env("CONNECTOR_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must start with http:// or https://"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Logs to a pipe (a file, journald, a log shipper) carry no ANSI escape codes.
#[test]
fn logs_to_a_pipe_have_no_colour() {
    let mut child = Process::new(BIN)
        .args(["run", "--server", "https://127.0.0.1:9", "--tenant", "acme"])
        .args(["--target", "app=http://127.0.0.1:9"])
        .env("CONNECTOR_SECRET", "s")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("session attempt failed");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(log.contains("connector starting"), "{log}");
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains("\x1b["), "colour codes in piped logs:\n{log}");
}
