//! Settings from flags and `OUTBOXER_*` variables (both through clap), then the
//! `--config` TOML file, then defaults.

use crate::args::{Common, RelayOptions, StreamArg};
use crate::fail::Fail;
use crate::parse;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "sqlite:outboxer.db";

/// The TOML file. Every key is optional; unknown keys are refused (typos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: Option<String>,
    /// A file holding the store URL (relative paths from the working directory).
    pub store_file: Option<PathBuf>,
    pub stream: Option<String>,
    /// A file holding the stream URL.
    pub stream_file: Option<PathBuf>,
    pub table: Option<String>,
    pub migrate: Option<bool>,
    pub batch_size: Option<usize>,
    pub check_interval: Option<String>,
    pub lease: Option<String>,
    /// `locks` or `leases` (`--claim-mode`).
    pub claim_mode: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub cleanup_interval: Option<String>,
    pub cleanup_before: Option<String>,
    pub log_interval: Option<String>,
    /// `text` or `json` (`--log-format`).
    pub log_format: Option<String>,
    pub listen: Option<String>,
    pub metrics_interval: Option<String>,
}

impl FileConfig {
    pub fn load(common: &Common) -> Result<FileConfig, Fail> {
        match &common.config {
            None => Ok(FileConfig::default()),
            Some(path) => Self::read(path),
        }
    }

    fn read(path: &Path) -> Result<FileConfig, Fail> {
        let file = Self::parse(path)?;
        if let Some(f) = &file.log_format {
            if crate::logging::LogFormat::parse(f).is_none() {
                return Err(Fail::usage(format!(
                    "config file {}: log_format `{f}`: use `text` or `json`",
                    path.display()
                )));
            }
        }
        Ok(file)
    }

    fn parse(path: &Path) -> Result<FileConfig, Fail> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Fail::usage(format!("cannot read config file {}: {e}", path.display())))?;
        // toml's messages quote the offending line: a password there would be shown,
        // so only the message's first line (position and reason) is kept.
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let reason = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Fail::usage(format!("config file {}{at}: {reason}", path.display()))
        })
    }
}

/// Where the table lives.
pub struct Target {
    pub store: String,
    pub table: Option<String>,
}

/// The store URL from `--store`/`--store-file` (or their variables), else the
/// config file's `store`/`store_file`, else the default.
pub fn target(common: &Common, file: &FileConfig) -> Result<Target, Fail> {
    let store = match url_from(
        "--store-file",
        common.store.as_ref(),
        common.store_file.as_deref(),
    )? {
        Some(url) => url,
        None => url_from_config("store", file.store.as_ref(), file.store_file.as_deref())?
            .unwrap_or_else(|| DEFAULT_STORE.to_string()),
    };
    Ok(Target {
        store,
        table: common.table.clone().or_else(|| file.table.clone()),
    })
}

/// The stream URL from `--stream`/`--stream-file` (or their variables), else the
/// config file's `stream`/`stream_file`.
pub fn stream_url(arg: &StreamArg, file: &FileConfig) -> Result<Option<String>, Fail> {
    match url_from(
        "--stream-file",
        arg.stream.as_ref(),
        arg.stream_file.as_deref(),
    )? {
        Some(url) => Ok(Some(url)),
        None => url_from_config("stream", file.stream.as_ref(), file.stream_file.as_deref()),
    }
}

/// A URL given directly or in a file (clap keeps the two exclusive).
fn url_from(what: &str, url: Option<&String>, path: Option<&Path>) -> Result<Option<String>, Fail> {
    match (url, path) {
        (Some(url), _) => Ok(Some(url.clone())),
        (None, Some(path)) => read_url_file(what, path).map(Some),
        (None, None) => Ok(None),
    }
}

fn url_from_config(
    key: &str,
    url: Option<&String>,
    path: Option<&Path>,
) -> Result<Option<String>, Fail> {
    if url.is_some() && path.is_some() {
        return Err(Fail::usage(format!(
            "config file: `{key}` and `{key}_file` cannot both be set"
        )));
    }
    url_from(&format!("`{key}_file` of the config file"), url, path)
}

/// Reads a URL from a file, trimmed. Errors name the file, never what it holds
/// (a password).
pub fn read_url_file(what: &str, path: &Path) -> Result<String, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::usage(format!("{what} {}: cannot read: {e}", path.display())))?;
    let url = text.trim();
    if url.is_empty() {
        return Err(Fail::usage(format!(
            "{what} {}: the file is empty",
            path.display()
        )));
    }
    Ok(url.to_string())
}

/// The relay's resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySettings {
    pub migrate: bool,
    pub batch_size: usize,
    pub check_interval: Duration,
    pub lease: Duration,
    pub claim_mode: outboxer::ClaimMode,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub cleanup_interval: Option<Duration>,
    pub cleanup_before: Duration,
    pub log_interval: Duration,
    pub listen: Option<std::net::SocketAddr>,
    pub metrics_interval: Duration,
}

fn dur(
    flag: &str,
    cli: &Option<String>,
    file: &Option<String>,
    default: &str,
) -> Result<Duration, Fail> {
    let v = cli.as_deref().or(file.as_deref()).unwrap_or(default);
    parse::duration(v).map_err(|e| Fail::usage(format!("--{flag}: {e}")))
}

/// `--claim-mode`: `locks` (the default) or `leases`.
fn claim_mode(v: Option<&str>) -> Result<outboxer::ClaimMode, Fail> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("locks") => Ok(outboxer::ClaimMode::RowLocks),
        Some("leases") => Ok(outboxer::ClaimMode::Leases),
        Some(other) => Err(Fail::usage(format!(
            "--claim-mode `{other}`: use `locks` or `leases`"
        ))),
    }
}

impl RelaySettings {
    pub fn resolve(o: &RelayOptions, f: &FileConfig) -> Result<RelaySettings, Fail> {
        let cleanup = o
            .cleanup_interval
            .as_deref()
            .or(f.cleanup_interval.as_deref())
            .unwrap_or("60s");
        Ok(RelaySettings {
            migrate: o.migrate.or(f.migrate).unwrap_or(false),
            batch_size: o.batch_size.or(f.batch_size).unwrap_or(500),
            check_interval: dur("check-interval", &o.check_interval, &f.check_interval, "1s")?,
            lease: dur("lease", &o.lease, &f.lease, "30s")?,
            claim_mode: claim_mode(o.claim_mode.as_deref().or(f.claim_mode.as_deref()))?,
            max_attempts: o.max_attempts.or(f.max_attempts).unwrap_or(10),
            backoff_base: dur("backoff-base", &o.backoff_base, &f.backoff_base, "500ms")?,
            backoff_max: dur("backoff-max", &o.backoff_max, &f.backoff_max, "5m")?,
            cleanup_interval: if cleanup.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(
                    parse::duration(cleanup)
                        .map_err(|e| Fail::usage(format!("--cleanup-interval: {e} (or `off`)")))?,
                )
            },
            cleanup_before: dur("cleanup-before", &o.cleanup_before, &f.cleanup_before, "0s")?,
            log_interval: dur("log-interval", &o.log_interval, &f.log_interval, "10s")?,
            listen: match o.listen.as_deref().or(f.listen.as_deref()) {
                None => None,
                Some(a) => Some(a.parse().map_err(|e| {
                    Fail::usage(format!("--listen {a}: {e} (expected e.g. 127.0.0.1:9464)"))
                })?),
            },
            metrics_interval: dur(
                "metrics-interval",
                &o.metrics_interval,
                &f.metrics_interval,
                "15s",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            "store = 'postgres://h/db'\nbatch_size = 50\ncheck_interval = '2s'\ncleanup_interval = 'off'",
        )
        .expect("toml");
        let flags = RelayOptions {
            batch_size: Some(7),
            ..Default::default()
        };
        let s = RelaySettings::resolve(&flags, &file).expect("settings");
        assert_eq!(s.batch_size, 7);
        assert_eq!(s.check_interval, Duration::from_secs(2));
        assert_eq!(s.cleanup_interval, None);
        assert_eq!(s.claim_mode, outboxer::ClaimMode::RowLocks);
        let leases: FileConfig = toml::from_str("claim_mode = 'leases'").expect("toml");
        let l = RelaySettings::resolve(&RelayOptions::default(), &leases).expect("settings");
        assert_eq!(l.claim_mode, outboxer::ClaimMode::Leases);
        let bad = RelayOptions {
            claim_mode: Some("rows".into()),
            ..Default::default()
        };
        let e = RelaySettings::resolve(&bad, &FileConfig::default()).expect_err("refused");
        assert!(format!("{e:?}").contains("locks"), "{e:?}");
        assert_eq!(s.lease, Duration::from_secs(30));
        let t = target(&Common::default(), &file).expect("target");
        assert_eq!(t.store, "postgres://h/db");
        assert_eq!(
            target(&Common::default(), &FileConfig::default())
                .expect("target")
                .store,
            DEFAULT_STORE
        );
    }

    #[test]
    fn urls_from_files_are_trimmed_and_their_errors_show_no_contents() {
        let dir = std::env::temp_dir().join(format!("outboxer-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("store");
        std::fs::write(&good, "  postgres://u:s3cret@h/db\n").expect("write");
        let common = Common {
            store_file: Some(good.clone()),
            ..Common::default()
        };
        let t = target(&common, &FileConfig::default()).expect("target");
        assert_eq!(t.store, "postgres://u:s3cret@h/db");

        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").expect("write");
        for path in [empty, dir.join("missing")] {
            let common = Common {
                store_file: Some(path.clone()),
                ..Common::default()
            };
            let f = target(&common, &FileConfig::default())
                .err()
                .expect("refused");
            assert_eq!(f.code, crate::fail::USAGE);
            assert!(
                f.message.contains(&path.display().to_string()),
                "{}",
                f.message
            );
        }

        let both: FileConfig =
            toml::from_str("stream = 'amqp://h'\nstream_file = '/x'").expect("toml");
        let f = stream_url(&StreamArg::default(), &both).expect_err("refused");
        assert!(f.message.contains("cannot both"), "{}", f.message);
        let from_file: FileConfig =
            toml::from_str(&format!("store_file = '{}'", good.display())).expect("toml");
        let t = target(&Common::default(), &from_file).expect("target");
        assert_eq!(t.store, "postgres://u:s3cret@h/db");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("batchsize = 5").is_err());
    }
}
