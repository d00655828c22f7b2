//! A fleet's pool name and what is shown of a pool as a whole: the name
//! every connection of the fleet carries on `/connections` and every
//! per-fleet metric carries as its `pool` label, checked once when the
//! fleet is built.

use std::sync::Arc;

use wsfleet_proto::ConfigError;

/// The pool name of a fleet built without [`FleetBuilder::name`](super::FleetBuilder::name).
pub const DEFAULT_POOL: &str = "default";

/// The longest pool name accepted, in bytes (all of them ASCII).
pub const MAX_POOL_NAME: usize = 64;

/// Checks a pool name: 1 to [`MAX_POOL_NAME`] characters of
/// `[A-Za-z0-9_.-]`, so it reads the same in a TOML table name
/// (`[pool.NAME]`), a URL path, a log line and a metric label.
///
/// # Errors
/// A [`ConfigError`] on the field `name`, with the name as given.
pub(crate) fn validate(name: &str) -> Result<(), ConfigError> {
    let problem = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_POOL_NAME {
        "must be at most 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "may hold only the characters A-Z a-z 0-9 _ . -"
    } else {
        return Ok(());
    };
    Err(ConfigError {
        field: "name",
        value: name.to_owned(),
        problem,
    })
}

/// The default pool name, shared.
pub(crate) fn default_name() -> Arc<str> {
    Arc::from(DEFAULT_POOL)
}

/// A pool as a whole: what `/pools` serves for each fleet and `wsfleet
/// top` reads back for its per-pool summary lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct PoolInfo {
    /// The pool's name ([`FleetMonitor::name`](super::FleetMonitor::name)).
    pub pool: String,
    /// Slots: the connections the pool keeps.
    pub target: usize,
    /// Connections ready now, paused ones included.
    pub ready: usize,
    /// Whether the pool is paused as a whole (it keeps its connections
    /// but takes no new work); `false` when the server does not say.
    #[serde(default)]
    pub paused: bool,
}

impl PoolInfo {
    /// A pool's summary from its parts (for tests and other servers).
    pub fn new(pool: impl Into<String>, target: usize, ready: usize, paused: bool) -> Self {
        Self {
            pool: pool.into(),
            target,
            ready,
            paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in [
            "default",
            "a",
            "binance-spot_1.eu",
            "ABC_xyz-09",
            &"x".repeat(MAX_POOL_NAME),
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_are_named_with_the_field_and_the_reason() {
        for (name, problem) in [
            ("", "must not be empty"),
            (
                &*"x".repeat(MAX_POOL_NAME + 1),
                "must be at most 64 characters",
            ),
            (
                "two words",
                "may hold only the characters A-Z a-z 0-9 _ . -",
            ),
            ("quo\"te", "may hold only the characters A-Z a-z 0-9 _ . -"),
            (
                "new\nline",
                "may hold only the characters A-Z a-z 0-9 _ . -",
            ),
            (
                "back\\slash",
                "may hold only the characters A-Z a-z 0-9 _ . -",
            ),
            ("pool,b", "may hold only the characters A-Z a-z 0-9 _ . -"),
            ("émile", "may hold only the characters A-Z a-z 0-9 _ . -"),
        ] {
            let err = validate(name).unwrap_err();
            assert_eq!(
                (err.field, err.value.as_str(), err.problem),
                ("name", name, problem)
            );
        }
    }

    #[test]
    fn a_pool_summary_without_paused_reads_as_not_paused() {
        let info: PoolInfo =
            serde_json::from_str(r#"{"pool":"a","target":3,"ready":2}"#).expect("json");
        assert_eq!(info, PoolInfo::new("a", 3, 2, false));
    }
}
