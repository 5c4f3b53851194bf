//! Login rate limiting. A password check is reserved before it runs, in the same lock as the
//! limit check, so concurrent attempts cannot all slip past a limit; a success forgets it.
//!
//! Two limits, and no lockout that follows a user name across addresses:
//! - per (client address, user name): [`PER_KEY_ATTEMPTS`] failed or running checks per
//!   [`PER_KEY_WINDOW`] (counted from the first of them);
//! - across everything: [`GLOBAL_ATTEMPTS`] failed or running checks in any [`GLOBAL_WINDOW`]
//!   (sliding), so spraying many names or addresses buys at most a short pause for everyone.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed (or running) password checks allowed per client address and user name per window.
pub(crate) const PER_KEY_ATTEMPTS: u32 = 10;
/// The per-address-and-user window, from its first counted attempt.
pub(crate) const PER_KEY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Failed (or running) password checks allowed across all addresses and users per global window.
pub(crate) const GLOBAL_ATTEMPTS: usize = 20;
/// The global sliding window.
pub(crate) const GLOBAL_WINDOW: Duration = Duration::from_secs(10);
/// Keys remembered at most. The global limit already caps live keys at
/// `GLOBAL_ATTEMPTS × PER_KEY_WINDOW / GLOBAL_WINDOW` (600); this is a second fence.
const MAX_KEYS: usize = 10_000;

/// The limiter; one per [`crate::AppState`].
#[derive(Debug, Default)]
pub(crate) struct LoginLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<(IpAddr, String), Key>,
    /// Failed or running checks across all keys, oldest first: (attempt id, start). At most
    /// `GLOBAL_ATTEMPTS` long.
    recent: VecDeque<(u64, Instant)>,
    next_id: u64,
}

#[derive(Debug)]
struct Key {
    attempts: u32,
    since: Instant,
}

/// A reserved password check: say how it went with [`LoginLimiter::succeeded`],
/// [`LoginLimiter::failed`] or [`LoginLimiter::release`]. Dropped without a word, it stays
/// counted as a failure (a client that hangs up mid-check gets no discount).
#[must_use]
#[derive(Debug)]
pub(crate) struct Attempt {
    key: (IpAddr, String),
    id: u64,
}

impl LoginLimiter {
    /// Reserves one password check for `user` from `ip`, or says how long to wait.
    pub(crate) fn reserve(&self, ip: IpAddr, user: &str) -> Result<Attempt, Duration> {
        self.reserve_at(ip, user, Instant::now())
    }

    /// The check passed: forget this key's failures and this attempt.
    pub(crate) fn succeeded(&self, attempt: Attempt) {
        let mut s = self.lock();
        s.keys.remove(&attempt.key);
        s.recent.retain(|(id, _)| *id != attempt.id);
    }

    /// The check failed: it stays counted.
    pub(crate) fn failed(&self, attempt: Attempt) {
        let _ = attempt;
    }

    /// The check did not run (hashing busy, store down): give the reservation back.
    pub(crate) fn release(&self, attempt: Attempt) {
        let mut s = self.lock();
        if let Some(k) = s.keys.get_mut(&attempt.key) {
            k.attempts = k.attempts.saturating_sub(1);
        }
        s.recent.retain(|(id, _)| *id != attempt.id);
    }

    fn reserve_at(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt, Duration> {
        let mut s = self.lock();
        while s
            .recent
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= GLOBAL_WINDOW)
        {
            s.recent.pop_front();
        }
        if s.recent.len() >= GLOBAL_ATTEMPTS {
            let oldest = s.recent.front().map_or(now, |(_, t)| *t);
            return Err(GLOBAL_WINDOW.saturating_sub(now.saturating_duration_since(oldest)));
        }
        let key = (ip, user.to_lowercase());
        if !s.keys.contains_key(&key) && s.keys.len() >= MAX_KEYS {
            s.keys
                .retain(|_, k| now.saturating_duration_since(k.since) < PER_KEY_WINDOW);
            if s.keys.len() >= MAX_KEYS {
                return Err(GLOBAL_WINDOW);
            }
        }
        let entry = s.keys.entry(key.clone()).or_insert(Key {
            attempts: 0,
            since: now,
        });
        let age = now.saturating_duration_since(entry.since);
        if age >= PER_KEY_WINDOW {
            *entry = Key {
                attempts: 0,
                since: now,
            };
        } else if entry.attempts >= PER_KEY_ATTEMPTS {
            return Err(PER_KEY_WINDOW - age);
        }
        entry.attempts += 1;
        let id = s.next_id;
        s.next_id += 1;
        s.recent.push_back((id, now));
        Ok(Attempt { key, id })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_key_is_limited_and_other_addresses_are_not_locked_out() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        // Spread over time so the global window never fills.
        for i in 0..PER_KEY_ATTEMPTS {
            let t = t0 + GLOBAL_WINDOW * i;
            let a = l
                .reserve_at(ip("192.0.2.1"), "admin", t)
                .expect("under the limit");
            l.failed(a);
        }
        let t = t0 + GLOBAL_WINDOW * PER_KEY_ATTEMPTS;
        let wait = l.reserve_at(ip("192.0.2.1"), "Admin", t).unwrap_err();
        assert_eq!(wait, PER_KEY_WINDOW - GLOBAL_WINDOW * PER_KEY_ATTEMPTS);
        // The same user from another address, and another user from this one, still may try.
        let a = l.reserve_at(ip("192.0.2.2"), "admin", t).unwrap();
        l.succeeded(a);
        let a = l.reserve_at(ip("192.0.2.1"), "other", t).unwrap();
        l.failed(a);
        // Once the window has passed the key may try again.
        let later = t0 + PER_KEY_WINDOW;
        let a = l.reserve_at(ip("192.0.2.1"), "admin", later).unwrap();
        l.succeeded(a);
        // A success forgets the key's failures.
        for _ in 0..PER_KEY_ATTEMPTS - 1 {
            let a = l.reserve_at(ip("192.0.2.1"), "admin", later).unwrap();
            l.failed(a);
        }
        let later = later + GLOBAL_WINDOW;
        let a = l.reserve_at(ip("192.0.2.1"), "admin", later).unwrap();
        l.succeeded(a);
        let a = l.reserve_at(ip("192.0.2.1"), "admin", later).unwrap();
        l.failed(a);
    }

    #[test]
    fn concurrent_reservations_count_before_any_check_ends() {
        let l = LoginLimiter::default();
        let t = Instant::now();
        let held: Vec<Attempt> = (0..PER_KEY_ATTEMPTS)
            .map(|_| l.reserve_at(ip("192.0.2.1"), "admin", t).unwrap())
            .collect();
        // None has finished, yet the eleventh is refused.
        assert!(l.reserve_at(ip("192.0.2.1"), "admin", t).is_err());
        // A released one (never ran) frees its place.
        let mut held = held.into_iter();
        l.release(held.next().unwrap());
        let a = l.reserve_at(ip("192.0.2.1"), "admin", t).unwrap();
        l.failed(a);
        assert!(l.reserve_at(ip("192.0.2.1"), "admin", t).is_err());
        for a in held {
            l.failed(a);
        }
    }

    #[test]
    fn many_keys_failing_at_once_pause_everyone_briefly() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..GLOBAL_ATTEMPTS {
            let a = l
                .reserve_at(ip("198.51.100.7"), &format!("user{i}"), t0)
                .unwrap();
            l.failed(a);
        }
        // A fresh address and user: paused too, for the rest of the window only.
        let t1 = t0 + Duration::from_secs(3);
        let wait = l.reserve_at(ip("192.0.2.9"), "admin", t1).unwrap_err();
        assert_eq!(wait, GLOBAL_WINDOW - Duration::from_secs(3));
        let a = l
            .reserve_at(ip("192.0.2.9"), "admin", t0 + GLOBAL_WINDOW)
            .expect("the pause is over");
        l.succeeded(a);
        // Successes do not fill the global window.
        let t2 = t0 + GLOBAL_WINDOW * 2;
        for _ in 0..GLOBAL_ATTEMPTS * 2 {
            let a = l.reserve_at(ip("192.0.2.9"), "admin", t2).unwrap();
            l.succeeded(a);
        }
    }
}
