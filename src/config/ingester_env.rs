//! The rsky ingester's environment (`REDIS_URL`, `INGESTER_*`) read as Spillway keys, so
//! its container's settings run Spillway unchanged.
//!
//! | ingester variable | Spillway key(s) |
//! |---|---|
//! | `REDIS_URL` | `redis_url` |
//! | `INGESTER_RELAY_HOSTS` (default `bsky.network`) | `relays` (modes `all`, `firehose`), `repo_listing_hosts` (modes `all`, `backfill`) |
//! | `INGESTER_LABELER_HOSTS` | `labelers` (modes `all`, `labeler`; none: no labeler) |
//! | `INGESTER_MODE` (`all`) | which of the three sources run |
//! | `INGESTER_HIGH_WATER_MARK` | `redis_high_water_events` (low water: half of it) |
//! | `INGESTER_BATCH_SIZE` | `sink_batch_events_max` |
//! | `INGESTER_BATCH_TIMEOUT_MS` | checked only: Spillway never holds a batch to fill it |
//!
//! Any `INGESTER_*` variable also sets `sink = "redis"` and `output_format = "rsky"`.
//! A bare host gets the ingester's scheme and path (`wss://H/xrpc/...subscribeRepos`,
//! `https://H` for the listing, `wss://H/xrpc/...subscribeLabels`); a host given with a
//! scheme keeps it (`ws://127.0.0.1:8080`), with `ws`/`http` and `wss`/`https` swapped as
//! each protocol needs. A key set both here and in the file or `SPILLWAY_<KEY>` with a
//! different value is refused, naming both.

use super::ConfigError;

/// Its lines of `spillway run --help`.
pub const HELP: &str = "
The rsky ingester's environment is accepted instead (a key set both ways with different values is refused):
  REDIS_URL                   redis_url
  INGESTER_MODE=all           all | firehose | backfill | labeler: which sources run (sets sink = redis, output_format = rsky)
  INGESTER_RELAY_HOSTS        relays (wss://H/xrpc/com.atproto.sync.subscribeRepos) and repo_listing_hosts (https://H); default bsky.network
  INGESTER_LABELER_HOSTS      labelers (wss://H/xrpc/com.atproto.label.subscribeLabels); none: no labeler
  INGESTER_HIGH_WATER_MARK    redis_high_water_events (low water: half)
  INGESTER_BATCH_SIZE         sink_batch_events_max
  INGESTER_BATCH_TIMEOUT_MS   accepted and checked; batches never wait to fill
  A host with a scheme (ws://127.0.0.1:9000, http://...) is used as given.";

/// The variables this module reads (anything else named `INGESTER_*` is refused).
pub const VARIABLES: [&str; 7] = [
    "REDIS_URL",
    "INGESTER_RELAY_HOSTS",
    "INGESTER_LABELER_HOSTS",
    "INGESTER_MODE",
    "INGESTER_HIGH_WATER_MARK",
    "INGESTER_BATCH_SIZE",
    "INGESTER_BATCH_TIMEOUT_MS",
];

/// The ingester's relay default when `INGESTER_RELAY_HOSTS` is unset.
const RELAY_HOSTS_DEFAULT: &str = "bsky.network";
const FIREHOSE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";
const LABELS_PATH: &str = "/xrpc/com.atproto.label.subscribeLabels";

/// One Spillway key set from the ingester's environment, with the variable it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The Spillway key.
    pub key: &'static str,
    /// Its value.
    pub value: toml::Value,
    /// The ingester variable(s) it came from, for errors.
    pub from: &'static str,
}

/// Which sources the ingester's `INGESTER_MODE` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    firehose: bool,
    backfill: bool,
    labeler: bool,
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

fn mode(value: Option<&str>) -> Result<Mode, ConfigError> {
    let (firehose, backfill, labeler) = match value.unwrap_or("all") {
        "all" => (true, true, true),
        "firehose" => (true, false, false),
        "backfill" => (false, true, false),
        "labeler" => (false, false, true),
        other => {
            return Err(invalid(
                "INGESTER_MODE",
                format!("{other:?}: expected all, firehose, backfill or labeler"),
            ))
        }
    };
    Ok(Mode {
        firehose,
        backfill,
        labeler,
    })
}

/// Comma-separated hosts, trimmed, empty items skipped (as the ingester reads them).
fn hosts(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect()
}

/// A WebSocket URL for `host`: a bare host gets `wss://` and `path`; a given scheme is
/// kept (`http`/`https` become `ws`/`wss`), and `path` added when the URL has none.
fn websocket_url(host: &str, path: &str, variable: &'static str) -> Result<String, ConfigError> {
    let (scheme, rest) = split_scheme(host, variable)?;
    let scheme = match scheme {
        None | Some("wss") | Some("https") => "wss",
        Some(_) => "ws",
    };
    Ok(with_path(scheme, rest, path))
}

/// An HTTP base URL for `host`: a bare host gets `https://`; a given scheme is kept
/// (`ws`/`wss` become `http`/`https`). The path is the listing source's to add.
fn http_url(host: &str, variable: &'static str) -> Result<String, ConfigError> {
    let (scheme, rest) = split_scheme(host, variable)?;
    let scheme = match scheme {
        None | Some("wss") | Some("https") => "https",
        Some(_) => "http",
    };
    // The standard path of a firehose URL given here names the host, not the listing.
    let rest = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{scheme}://{rest}"))
}

fn split_scheme<'a>(
    host: &'a str,
    variable: &'static str,
) -> Result<(Option<&'a str>, &'a str), ConfigError> {
    let Some((scheme, rest)) = host.split_once("://") else {
        return Ok((None, host.trim_end_matches('/')));
    };
    if !matches!(scheme, "ws" | "wss" | "http" | "https") {
        return Err(invalid(
            variable,
            format!(
                "{host:?}: a host is bare (bsky.network) or has ws://, wss://, http:// or https://"
            ),
        ));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(variable, format!("{host:?} has no host name")));
    }
    Ok((Some(scheme), rest.trim_end_matches('/')))
}

fn with_path(scheme: &str, rest: &str, path: &str) -> String {
    if rest.contains('/') {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}{path}")
    }
}

fn number(value: &str, variable: &'static str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|e| invalid(variable, format!("{value:?} is not a whole number: {e}")))
}

fn strings(items: Vec<String>) -> toml::Value {
    toml::Value::Array(items.into_iter().map(toml::Value::String).collect())
}

/// The Spillway keys the ingester's variables in `env` stand for; empty when none is set.
/// `REDIS_URL` alone maps to `redis_url` only; any `INGESTER_*` variable makes it the
/// ingester's whole configuration (its defaults included).
///
/// # Errors
/// A malformed value, or an `INGESTER_*` variable the ingester does not have; each error
/// names the variable.
pub fn mapped(env: &[(String, String)]) -> Result<Vec<Mapped>, ConfigError> {
    let get = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut out = Vec::new();
    if let Some(url) = get("REDIS_URL") {
        out.push(Mapped {
            key: "redis_url",
            value: toml::Value::String(url.to_string()),
            from: "REDIS_URL",
        });
    }
    if let Some((name, _)) = env
        .iter()
        .find(|(n, _)| n.starts_with("INGESTER_") && !VARIABLES.contains(&n.as_str()))
    {
        return Err(ConfigError::Invalid {
            key: "INGESTER_*",
            reason: format!(
                "{name} is not one of the rsky ingester's variables ({})",
                VARIABLES[1..].join(", ")
            ),
        });
    }
    if !env.iter().any(|(n, _)| n.starts_with("INGESTER_")) {
        return Ok(out);
    }
    let mode = mode(get("INGESTER_MODE"))?;
    let relay_hosts = hosts(get("INGESTER_RELAY_HOSTS").unwrap_or(RELAY_HOSTS_DEFAULT));
    let labeler_hosts = hosts(get("INGESTER_LABELER_HOSTS").unwrap_or(""));
    if (mode.firehose || mode.backfill) && relay_hosts.is_empty() {
        return Err(invalid(
            "INGESTER_RELAY_HOSTS",
            "names no host, and INGESTER_MODE runs the firehose or the backfill".into(),
        ));
    }
    if mode == mode_only_labeler() && labeler_hosts.is_empty() {
        return Err(invalid(
            "INGESTER_LABELER_HOSTS",
            "names no host, and INGESTER_MODE=labeler runs only the labeler".into(),
        ));
    }
    let firehose = if mode.firehose {
        relay_hosts
            .iter()
            .map(|h| websocket_url(h, FIREHOSE_PATH, "INGESTER_RELAY_HOSTS"))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let listing = if mode.backfill {
        relay_hosts
            .iter()
            .map(|h| http_url(h, "INGESTER_RELAY_HOSTS"))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let labelers = if mode.labeler {
        labeler_hosts
            .iter()
            .map(|h| websocket_url(h, LABELS_PATH, "INGESTER_LABELER_HOSTS"))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let sources = "INGESTER_MODE + INGESTER_RELAY_HOSTS";
    out.push(Mapped {
        key: "relays",
        value: strings(firehose),
        from: sources,
    });
    out.push(Mapped {
        key: "repo_listing_hosts",
        value: strings(listing),
        from: sources,
    });
    out.push(Mapped {
        key: "labelers",
        value: strings(labelers),
        from: "INGESTER_MODE + INGESTER_LABELER_HOSTS",
    });
    let implied = "INGESTER_* (the rsky ingester writes Redis in its own format)";
    out.push(Mapped {
        key: "sink",
        value: toml::Value::String("redis".into()),
        from: implied,
    });
    out.push(Mapped {
        key: "output_format",
        value: toml::Value::String("rsky".into()),
        from: implied,
    });
    if let Some(value) = get("INGESTER_HIGH_WATER_MARK") {
        let high = number(value, "INGESTER_HIGH_WATER_MARK")?;
        if high == 0 {
            return Err(invalid(
                "INGESTER_HIGH_WATER_MARK",
                format!("{value:?} must be greater than zero"),
            ));
        }
        out.push(Mapped {
            key: "redis_high_water_events",
            value: toml::Value::Integer(i64::try_from(high).unwrap_or(i64::MAX)),
            from: "INGESTER_HIGH_WATER_MARK",
        });
        out.push(Mapped {
            key: "redis_low_water_events",
            value: toml::Value::Integer(i64::try_from(high / 2).unwrap_or(i64::MAX)),
            from: "INGESTER_HIGH_WATER_MARK",
        });
    }
    if let Some(value) = get("INGESTER_BATCH_SIZE") {
        let size = number(value, "INGESTER_BATCH_SIZE")?;
        if size == 0 {
            return Err(invalid(
                "INGESTER_BATCH_SIZE",
                format!("{value:?} must be greater than zero"),
            ));
        }
        out.push(Mapped {
            key: "sink_batch_events_max",
            value: toml::Value::Integer(i64::try_from(size).unwrap_or(i64::MAX)),
            from: "INGESTER_BATCH_SIZE",
        });
    }
    if let Some(value) = get("INGESTER_BATCH_TIMEOUT_MS") {
        // Checked so a typo is not silently taken; a sink batch never waits to fill.
        number(value, "INGESTER_BATCH_TIMEOUT_MS")?;
    }
    Ok(out)
}

fn mode_only_labeler() -> Mode {
    Mode {
        firehose: false,
        backfill: false,
        labeler: true,
    }
}

/// Applies `mapped` to `table` (the file and `SPILLWAY_*` keys), refusing a key that is
/// already set there with a different value.
///
/// # Errors
/// [`ConfigError::Conflict`] naming the variable and the key.
pub fn apply(table: &mut toml::Table, mapped: Vec<Mapped>) -> Result<(), ConfigError> {
    for Mapped { key, value, from } in mapped {
        match table.get(key) {
            Some(existing) if *existing != value => {
                let shown = |v: &toml::Value| {
                    if key == "redis_url" {
                        // A URL may carry a password: never print it.
                        crate::sink::redis::redact_url(v.as_str().unwrap_or_default())
                    } else {
                        v.to_string()
                    }
                };
                return Err(ConfigError::Conflict {
                    variable: from,
                    key,
                    ingester_value: shown(&value),
                    spillway_value: shown(existing),
                });
            }
            Some(_) => {}
            None => {
                table.insert(key.to_string(), value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn value<'a>(mapped: &'a [Mapped], key: &str) -> Option<&'a toml::Value> {
        mapped.iter().find(|m| m.key == key).map(|m| &m.value)
    }

    fn list(items: &[&str]) -> toml::Value {
        strings(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn no_ingester_variable_maps_nothing() {
        assert!(mapped(&env(&[("HOME", "/root")])).unwrap().is_empty());
    }

    #[test]
    fn redis_url_alone_maps_only_the_url() {
        let m = mapped(&env(&[("REDIS_URL", "redis://10.0.0.5:6380")])).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            value(&m, "redis_url"),
            Some(&toml::Value::String("redis://10.0.0.5:6380".into()))
        );
    }

    #[test]
    fn mode_all_with_bare_hosts_runs_the_three_sources_as_the_ingester_does() {
        let m = mapped(&env(&[
            ("INGESTER_MODE", "all"),
            ("INGESTER_RELAY_HOSTS", "bsky.network, relay.example.com"),
            ("INGESTER_LABELER_HOSTS", "mod.bsky.app"),
            ("INGESTER_HIGH_WATER_MARK", "5000"),
            ("INGESTER_BATCH_SIZE", "200"),
            ("INGESTER_BATCH_TIMEOUT_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(
            value(&m, "relays"),
            Some(&list(&[
                "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos",
                "wss://relay.example.com/xrpc/com.atproto.sync.subscribeRepos"
            ]))
        );
        assert_eq!(
            value(&m, "repo_listing_hosts"),
            Some(&list(&[
                "https://bsky.network",
                "https://relay.example.com"
            ]))
        );
        assert_eq!(
            value(&m, "labelers"),
            Some(&list(&[
                "wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels"
            ]))
        );
        assert_eq!(
            value(&m, "output_format"),
            Some(&toml::Value::String("rsky".into()))
        );
        assert_eq!(
            value(&m, "redis_high_water_events"),
            Some(&toml::Value::Integer(5000))
        );
        assert_eq!(
            value(&m, "redis_low_water_events"),
            Some(&toml::Value::Integer(2500))
        );
        assert_eq!(
            value(&m, "sink_batch_events_max"),
            Some(&toml::Value::Integer(200))
        );
    }

    #[test]
    fn relay_hosts_default_to_bsky_network_and_no_labeler_host_means_no_labeler() {
        let m = mapped(&env(&[("INGESTER_MODE", "all")])).unwrap();
        assert_eq!(
            value(&m, "relays"),
            Some(&list(&[
                "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
            ]))
        );
        assert_eq!(value(&m, "labelers"), Some(&list(&[])));
    }

    #[test]
    fn hosts_with_a_scheme_are_used_as_given_with_each_protocol_s_scheme() {
        let m = mapped(&env(&[
            ("INGESTER_RELAY_HOSTS", "ws://127.0.0.1:9001"),
            ("INGESTER_LABELER_HOSTS", "http://127.0.0.1:9002/"),
        ]))
        .unwrap();
        assert_eq!(
            value(&m, "relays"),
            Some(&list(&[
                "ws://127.0.0.1:9001/xrpc/com.atproto.sync.subscribeRepos"
            ]))
        );
        assert_eq!(
            value(&m, "repo_listing_hosts"),
            Some(&list(&["http://127.0.0.1:9001"]))
        );
        assert_eq!(
            value(&m, "labelers"),
            Some(&list(&[
                "ws://127.0.0.1:9002/xrpc/com.atproto.label.subscribeLabels"
            ]))
        );
    }

    #[test]
    fn each_mode_runs_only_its_source() {
        let m = mapped(&env(&[("INGESTER_MODE", "backfill")])).unwrap();
        assert_eq!(value(&m, "relays"), Some(&list(&[])));
        assert_eq!(
            value(&m, "repo_listing_hosts"),
            Some(&list(&["https://bsky.network"]))
        );
        let m = mapped(&env(&[
            ("INGESTER_MODE", "labeler"),
            ("INGESTER_LABELER_HOSTS", "mod.bsky.app"),
        ]))
        .unwrap();
        assert_eq!(value(&m, "relays"), Some(&list(&[])));
        assert_eq!(value(&m, "repo_listing_hosts"), Some(&list(&[])));
        let m = mapped(&env(&[("INGESTER_MODE", "firehose")])).unwrap();
        assert_eq!(value(&m, "repo_listing_hosts"), Some(&list(&[])));
        assert_eq!(value(&m, "labelers"), Some(&list(&[])));
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let cases = [
            ("INGESTER_MODE", "everything"),
            ("INGESTER_HIGH_WATER_MARK", "lots"),
            ("INGESTER_BATCH_SIZE", "0"),
            ("INGESTER_BATCH_TIMEOUT_MS", "1s"),
            ("INGESTER_RELAY_HOSTS", "ftp://relay.example"),
            ("INGESTER_HIGHWATER_MARK", "10"),
        ];
        for (name, bad) in cases {
            let error = mapped(&env(&[(name, bad)])).unwrap_err().to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            if name != "INGESTER_HIGHWATER_MARK" {
                assert!(error.contains(bad), "{name}={bad}: {error}");
            }
        }
        let error = mapped(&env(&[("INGESTER_MODE", "labeler")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("INGESTER_LABELER_HOSTS"), "{error}");
    }

    #[test]
    fn a_conflict_names_both_forms_and_hides_a_password() {
        let mut table = toml::Table::new();
        table.insert(
            "redis_url".into(),
            toml::Value::String("redis://:hunter2@127.0.0.1:6379".into()),
        );
        let m = mapped(&env(&[(
            "REDIS_URL",
            "redis://:other-secret@10.0.0.1:6379",
        )]))
        .unwrap();
        let error = apply(&mut table, m).unwrap_err().to_string();
        assert!(error.contains("REDIS_URL"), "{error}");
        assert!(error.contains("redis_url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(!error.contains("other-secret"), "{error}");
        // The same value in both forms is no conflict.
        let mut table = toml::Table::new();
        table.insert("output_format".into(), toml::Value::String("rsky".into()));
        let m = mapped(&env(&[("INGESTER_MODE", "firehose")])).unwrap();
        apply(&mut table, m).unwrap();
        assert_eq!(
            table.get("sink"),
            Some(&toml::Value::String("redis".into()))
        );
    }

    #[test]
    fn config_load_takes_redis_url_and_refuses_it_beside_a_different_spillway_key() {
        let loaded =
            crate::config::Config::load(None, env(&[("REDIS_URL", "redis://10.0.0.5:6380")]))
                .unwrap();
        assert_eq!(loaded.redis_url, "redis://10.0.0.5:6380");
        let error = crate::config::Config::load(
            None,
            env(&[
                ("SPILLWAY_REDIS_URL", "redis://127.0.0.1:6379"),
                ("REDIS_URL", "redis://10.0.0.5:6380"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("REDIS_URL (the rsky ingester"), "{error}");
        assert!(error.contains("SPILLWAY_REDIS_URL"), "{error}");
    }
}
