//! Every example config in config/ and every TOML block in docs/configuration.md parses with the
//! real config loaders (relay blocks start with `# relay-server`, connector blocks with
//! `# connector`).

use std::path::{Path, PathBuf};

use connector::config::FileConfig as ConnectorFile;
use process_setup::layered::{self, Secret};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check_relay(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    relay_server::Config::load(Some(&path), &Vec::new(), toml::Table::new())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn check_connector(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connector.toml");
    std::fs::write(&path, text).unwrap();
    let mut file: ConnectorFile =
        layered::load(Some(&path), "CONNECTOR_", &Vec::new(), toml::Table::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    // The example's secret file does not exist here; validate the rest with an inline secret.
    if file.secret_file.take().is_some() {
        file.secret = Some(Secret::new("x"));
    }
    connector::Config::from_file(file, Some(&path)).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn example_configs_parse() {
    let relay = std::fs::read_to_string(root().join("config/relay-server.example.toml")).unwrap();
    check_relay(&relay, "config/relay-server.example.toml");
    let conn = std::fs::read_to_string(root().join("config/connector.example.toml")).unwrap();
    check_connector(&conn, "config/connector.example.toml");
}

#[test]
fn configuration_doc_blocks_parse() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut blocks = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed block");
        let block = &body[..end];
        let what = format!("docs/configuration.md block {}", blocks + 1);
        if block.starts_with("# relay-server") {
            check_relay(block, &what);
        } else if block.starts_with("# connector") {
            check_connector(block, &what);
        } else {
            panic!("{what}: start it with `# relay-server` or `# connector`");
        }
        blocks += 1;
        rest = &body[end + 3..];
    }
    assert!(blocks >= 2, "found {blocks} blocks");
}

#[test]
fn migration_folders_list_the_same_files() {
    let list = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("migrations/sqlite"), list("migrations/postgres"));
}
