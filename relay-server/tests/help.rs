//! Every `relay-server` command, argument and positional explains itself in `--help`: the
//! command tree is walked through clap's introspection, and each command's help is also rendered
//! by the real binary.

use std::process::Command as Process;

use clap::CommandFactory;
use relay_server::cli::Cli;

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
        if sub.get_name() == "help" {
            continue;
        }
        missing_help(sub, &format!("{path} {}", sub.get_name()), found);
    }
}

/// Every command path, e.g. `["tenant", "credential", "create"]`.
fn command_paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut p = prefix.clone();
        p.push(sub.get_name().to_string());
        command_paths(sub, p, out);
    }
}

#[test]
fn every_argument_has_help_text() {
    let cli = Cli::command();
    cli.clone().debug_assert();
    let mut found = Vec::new();
    missing_help(&cli, "relay-server", &mut found);
    assert!(
        found.is_empty(),
        "arguments without help text:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_walk_finds_an_undocumented_positional() {
    // The check above must be able to fail: a command with a bare positional is reported.
    let cmd = clap::Command::new("demo")
        .about("A demo.")
        .subcommand(
            clap::Command::new("create")
                .about("Create.")
                .arg(clap::Arg::new("name").required(true)),
        )
        .arg(clap::Arg::new("label").long("label"));
    let mut found = Vec::new();
    missing_help(&cmd, "demo", &mut found);
    assert_eq!(
        found,
        [
            "`demo`: --label has no help text",
            "`demo create`: <NAME> has no help text"
        ]
    );
}

#[test]
fn the_binary_prints_help_for_every_command() {
    let mut paths = Vec::new();
    command_paths(&Cli::command(), Vec::new(), &mut paths);
    // The tree is what the binary really has (the groups named in the issue among them).
    for expected in [
        &["run"][..],
        &["config", "check"],
        &["admin", "token", "create"],
        &["tenant", "credential", "create"],
    ] {
        assert!(paths.iter().any(|p| p == expected), "no {expected:?}");
    }
    for path in paths {
        let out = Process::new(env!("CARGO_BIN_EXE_relay-server"))
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Usage:"),
            "relay-server {} --help: {:?}\n{text}{}",
            path.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn run_help_names_the_tls_flags_and_admin_says_what_it_holds() {
    let help = |args: &[&str]| {
        let out = Process::new(env!("CARGO_BIN_EXE_relay-server"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run = help(&["run"]);
    assert!(
        run.contains("--tls-cert <FILE>") && run.contains("--tls-key <FILE>"),
        "{run}"
    );
    let top = help(&[]);
    let admin_line = top
        .lines()
        .find(|l| l.trim_start().starts_with("admin "))
        .unwrap_or_default();
    assert!(
        admin_line.contains("API tokens") && admin_line.contains("log"),
        "{top}"
    );
}
