//! Configuration layers: built-in defaults → `minicloud.toml` → `MINICLOUD_*`
//! environment → flags. clap does defaults, environment and flags; the file is folded
//! in as flags placed before the user's own, for settings the environment does not
//! set, with later flags overriding earlier ones.
//!
//! A file key names a flag: top-level `database_url` is `--database-url`, and
//! `access_token_ttl` under `[auth]` is `--auth-access-token-ttl`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// The config file: `--config`/`MINICLOUD_CONFIG`, else `minicloud.toml` if present.
fn config_path(argv: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some((PathBuf::from(path), true));
        }
        if arg == "--config" {
            return iter.next().map(|path| (PathBuf::from(path), true));
        }
    }
    if let Ok(path) = std::env::var("MINICLOUD_CONFIG") {
        return Some((PathBuf::from(path), true));
    }
    Some((PathBuf::from("minicloud.toml"), false))
}

/// Flattens a TOML document into `(flag name, value)` pairs.
pub fn flatten_toml(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).context("parsing the config file")?;
    let mut out = Vec::new();
    fn scalar(key: &str, value: &toml::Value) -> anyhow::Result<String> {
        Ok(match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!("setting {key}: expected a string, number or boolean"),
        })
    }
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) => {
                for (inner, value) in section {
                    let flag = format!("{key}-{inner}").replace('_', "-");
                    out.push((flag, scalar(&format!("{key}.{inner}"), value)?));
                }
            }
            value => out.push((key.replace('_', "-"), scalar(key, value)?)),
        }
    }
    Ok(out)
}

/// `argv` with the config file's settings inserted as flags right after the
/// subcommand, skipping settings whose environment variable is set.
pub fn layered_args(command: &clap::Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some((path, explicit)) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if !explicit && error.kind() == std::io::ErrorKind::NotFound => return Ok(argv),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let settings = flatten_toml(&text).with_context(|| format!("in {}", path.display()))?;
    let Some(sub_name) = argv.get(1).map(|s| s.to_string_lossy().into_owned()) else {
        return Ok(argv);
    };
    let Some(sub) = command.find_subcommand(&sub_name) else {
        return Ok(argv);
    };
    let known_anywhere = |flag: &str| {
        command
            .get_subcommands()
            .any(|s| s.get_arguments().any(|a| a.get_long() == Some(flag)))
    };
    let mut inserted = Vec::new();
    for (flag, value) in settings {
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
        else {
            if known_anywhere(&flag) {
                continue;
            }
            bail!("unknown setting {flag:?} in {}", path.display());
        };
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        inserted.push(OsString::from(format!("--{flag}={value}")));
    }
    let mut out = Vec::with_capacity(argv.len() + inserted.len());
    out.extend(argv[..2].iter().cloned());
    out.extend(inserted);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn toml_sections_become_prefixed_flags() {
        let flags =
            flatten_toml("database_url = \"postgres://x\"\n[auth]\naccess_token_ttl = 60\n")
                .unwrap();
        assert!(flags.contains(&("database-url".into(), "postgres://x".into())));
        assert!(flags.contains(&("auth-access-token-ttl".into(), "60".into())));
        assert!(flatten_toml("[auth]\nx = [1]\n").is_err());
        assert!(flatten_toml("not toml at all = = =").is_err());
    }
}
