//! The action layer: every admin operation written once, whichever adapter asked for it (the
//! JSON API in `api`, the pages in `ui`). An action takes the state, the [`Actor`] and the
//! request's input; it validates, changes the store, records itself in the admin-action log
//! ([`AppState::record`]) and returns what changed, or an [`Error`] the adapter answers in its
//! own format. Adapters only parse input and render the outcome.
//!
//! Live sessions: no action closes one itself. Every change bumps the store's revision (its
//! triggers; `NOTIFY relay_catalog` on PostgreSQL), each relay node reloads its catalog within a
//! second and closes the sessions whose credential was revoked or whose tenant was disabled or
//! deleted. So a change made here reaches every node sharing the database, not only the one
//! serving this request.
//!
//! Reads that both adapters need sit here too: [`tenants::find`], [`sessions::live`],
//! [`nodes::live`], [`queue::overview`] and [`queue::detail`], and the audit filters in
//! [`audit`].

pub(crate) mod audit;
pub(crate) mod credentials;
pub(crate) mod hostnames;
pub(crate) mod nodes;
pub(crate) mod pairing;
pub(crate) mod policies;
pub(crate) mod queue;
pub(crate) mod sessions;
pub(crate) mod tenants;
pub(crate) mod tokens;

use std::fmt;

use crate::error::Error;

#[cfg(doc)]
use crate::AppState;

/// Largest `limit` of a listing.
pub(crate) const MAX_LIMIT: u32 = 1000;
/// Largest `offset` of a listing (the store counts in signed 64 bits).
pub(crate) const MAX_OFFSET: u64 = i64::MAX as u64;

/// Who performs an action, as the admin-action log names them: `user:NAME` from the pages,
/// `token:NAME` from the API (the CLI records `cli` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor(String);

impl Actor {
    /// An admin signed in to the pages.
    pub(crate) fn user(username: &str) -> Actor {
        Actor(format!("user:{username}"))
    }

    /// An API token.
    pub(crate) fn token(name: &str) -> Actor {
        Actor(format!("token:{name}"))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A listing's `limit` (default `default`) and `offset`, refused outside 1..=1000 and
/// 0..=2^63-1.
pub(crate) fn paging(limit: Option<u32>, offset: u64, default: u32) -> Result<u32, Error> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::BadQuery(format!(
            "limit {limit}: give 1 to {MAX_LIMIT}"
        )));
    }
    if offset > MAX_OFFSET {
        return Err(Error::BadQuery(format!(
            "offset {offset}: at most {MAX_OFFSET}"
        )));
    }
    Ok(limit)
}

/// A state over a fresh SQLite store in a temporary directory, for the actions' tests.
#[cfg(test)]
pub(crate) mod testing {
    use relay_store::{SecretHasher, Store};

    use crate::{AllowedHosts, AppState};

    /// The state and the directory holding its database (dropping it removes the database).
    pub(crate) async fn state() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let store = Store::connect(&url).await.expect("a SQLite store");
        let hasher = SecretHasher::new(b"a test pepper of thirty-two bytes");
        let state = AppState::new(store, hasher, AllowedHosts::loopback(None));
        (dir, state)
    }

    /// The admin-action log, oldest first, as (actor, action, object).
    pub(crate) async fn recorded(state: &AppState) -> Vec<(String, String, String)> {
        let mut all = state.store().admin_actions(1000).await.expect("the log");
        all.reverse();
        all.into_iter()
            .map(|a| (a.actor, a.action, a.object))
            .collect()
    }

    /// One log entry, for comparing with [`recorded`].
    pub(crate) fn entry(actor: &str, action: &str, object: &str) -> (String, String, String) {
        (actor.into(), action.into(), object.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_out_of_range_is_refused() {
        assert_eq!(paging(None, 0, 50).ok(), Some(50));
        assert_eq!(paging(Some(1), MAX_OFFSET, 50).ok(), Some(1));
        assert_eq!(paging(Some(MAX_LIMIT), 0, 50).ok(), Some(MAX_LIMIT));
        assert!(matches!(paging(Some(0), 0, 50), Err(Error::BadQuery(_))));
        assert!(paging(Some(MAX_LIMIT + 1), 0, 50).is_err());
        assert!(paging(None, MAX_OFFSET + 1, 50).is_err());
    }

    #[test]
    fn actors_are_named_as_the_log_shows_them() {
        assert_eq!(Actor::user("alice").as_str(), "user:alice");
        assert_eq!(Actor::token("ci").to_string(), "token:ci");
    }
}
