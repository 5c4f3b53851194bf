//! Layered configuration shared by the binaries: a TOML file, then `PREFIX_*` environment
//! variables, then command-line flags, merged into one table and parsed once with
//! `deny_unknown_fields`, so an unknown key anywhere stops the binary with a clear message.
//!
//! Environment mapping: `PREFIX_KEY` sets `key`; `PREFIX_SECTION__KEY` sets `section.key`
//! (double underscore between levels). Values are read as TOML values when they parse as one
//! (`30`, `true`, `["a"]`), else as strings (`30s`, `sqlite://x`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Where environment variables come from: the process, or a list in tests (which never call
/// `std::env::set_var`).
pub trait EnvSource {
    /// All variables as name/value pairs.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// A configuration error: the binary prints it and exits with 64 (EX_USAGE).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> ConfigError {
        ConfigError(msg.into())
    }
}

/// The exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 64;

/// Merges `file` (optional), the environment under `prefix` and `flags`, then deserialises.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    prefix: &str,
    env: &dyn EnvSource,
    flags: toml::Table,
) -> Result<T, ConfigError> {
    load_with_defaults(toml::Table::new(), file, prefix, env, flags)
}

/// Like [`load`], with `defaults` below everything else (a mode's own defaults).
pub fn load_with_defaults<T: DeserializeOwned>(
    defaults: toml::Table,
    file: Option<&Path>,
    prefix: &str,
    env: &dyn EnvSource,
    flags: toml::Table,
) -> Result<T, ConfigError> {
    let mut table = defaults;
    if let Some(path) = file {
        merge(&mut table, read_file(path)?);
    }
    let mut vars = env.vars();
    vars.sort();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::new(format!(
                "environment variable {name}: malformed name"
            )));
        }
        set_path(&mut table, &path, parse_value(&raw))
            .map_err(|e| ConfigError::new(format!("environment variable {name}: {e}")))?;
    }
    merge(&mut table, flags);
    let source = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "settings".into());
    T::deserialize(toml::Value::Table(table)).map_err(|e| {
        ConfigError::new(format!(
            "invalid configuration ({source} + {prefix}* + flags): {e}"
        ))
    })
}

/// Sets `table[path] = value`, creating intermediate tables.
pub fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::new(format!("config file {}: {e}", path.display())))
}

/// Resolves `path` relative to the directory of the config file, when there is one.
pub fn relative_to(base: Option<&Path>, path: &Path) -> PathBuf {
    match base.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A duration setting: `value`, or `default` when unset; refused (naming the key) when it is
/// zero, or shorter than `min` when one is given.
pub fn duration(
    name: &str,
    value: Option<std::time::Duration>,
    default: std::time::Duration,
    min: Option<std::time::Duration>,
) -> Result<std::time::Duration, ConfigError> {
    let d = value.unwrap_or(default);
    match min {
        Some(min) if d < min => Err(ConfigError::new(format!(
            "{name} must be at least {}",
            humantime::format_duration(min)
        ))),
        _ if d.is_zero() => Err(ConfigError::new(format!("{name} must be above zero"))),
        _ => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        name: String,
        port: u16,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        flag: bool,
        wait: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_and_nests() {
        let e = env(&[
            ("X_NAME", "a"),
            ("X_PORT", "80"),
            ("X_NESTED__FLAG", "true"),
            ("X_NESTED__WAIT", "30s"),
            ("OTHER", "1"),
        ]);
        let d: Demo = load(None, "X_", &e, toml::Table::new()).unwrap();
        assert_eq!((d.name.as_str(), d.port), ("a", 80));
        let n = d.nested.unwrap();
        assert!(n.flag);
        assert_eq!(n.wait, "30s");
    }

    #[test]
    fn flags_win_over_environment() {
        let mut flags = toml::Table::new();
        flags.insert("port".into(), toml::Value::Integer(81));
        let d: Demo = load(
            None,
            "X_",
            &env(&[("X_NAME", "a"), ("X_PORT", "80")]),
            flags,
        )
        .unwrap();
        assert_eq!(d.port, 81);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load::<Demo>(
            None,
            "X_",
            &env(&[("X_NAME", "a"), ("X_PORT", "1"), ("X_POTR", "2")]),
            toml::Table::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("potr"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
