//! Waiting for state that converges asynchronously: [`eventually`] polls a check, bounded in time,
//! and panics naming what it awaited. Readiness that a handle signals directly (a returned
//! address, `connected()`, a `watch` channel) needs no polling and should be awaited as such.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `check` until it settles and returns the value it settled with. Panics when it has not
/// settled within `within`, naming `what` and the last state the check reported.
///
/// The check returns an [`Outcome`]: a `bool`, an `Option<T>` (`Some` settles) or a
/// `Result<T, E>` (`Ok` settles; an `Err` carries what the check saw into the panic message, so
/// return the observed state there). Careful: `Ok(None)` settles a `Result<Option<T>, E>`.
///
/// Checks run back to back at first, then with pauses that double from 5 ms to 100 ms. A check
/// that has not returned by the deadline (at least 1 s after it started) panics too, so the whole
/// wait ends within `within` + 1 s. The wait uses tokio's clock: under a paused clock
/// (`#[tokio::test(start_paused = true)]`) it advances the clock instead of sleeping.
///
/// ```no_run
/// # async fn example(backend: testkit::Backend) {
/// use std::time::Duration;
/// testkit::eventually(Duration::from_secs(10), "the backend stream to end", || async {
///     backend.active_streams() == 0
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<C, F, O>(within: Duration, what: &str, mut check: C) -> O::Value
where
    C: FnMut() -> F,
    F: Future<Output = O>,
    O: Outcome,
{
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        let started = Instant::now();
        let Ok(outcome) =
            tokio::time::timeout_at(deadline.max(started + CHECK_GRACE), check()).await
        else {
            panic!("not within {within:?}: {what} (a check did not return)");
        };
        let last = match outcome.settled() {
            Ok(value) => return value,
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            match last {
                Some(seen) => panic!("not within {within:?}: {what} (last seen: {seen})"),
                None => panic!("not within {within:?}: {what}"),
            }
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What a check of [`eventually`] reports: settled with a value, or not yet.
pub trait Outcome {
    /// What [`eventually`] returns once the check settles.
    type Value;

    /// `Ok(value)` once settled; otherwise what the check observed, if it says.
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

/// The first pause between two checks.
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between two checks: short, so that a wait ends soon after its state does,
/// and long enough that a check doing I/O (a request, a query) does not load what it watches.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// The least time a check gets to return, even when it starts at the deadline.
const CHECK_GRACE: Duration = Duration::from_secs(1);

// === impl Outcome ===

impl Outcome for bool {
    type Value = ();

    fn settled(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;

    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:?}")))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_the_check_holds() {
        let (checks, started) = (Cell::new(0), Instant::now());
        eventually(Duration::from_secs(10), "the third check", || async {
            checks.set(checks.get() + 1);
            checks.get() == 3
        })
        .await;
        assert_eq!(checks.get(), 3);
        // Two pauses: 5 ms, then 10 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(15));
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_to_a_bound() {
        let (checks, started) = (Cell::new(0u64), Instant::now());
        eventually(Duration::from_secs(10), "the tenth check", || async {
            checks.set(checks.get() + 1);
            checks.get() == 10
        })
        .await;
        // 5, 10, 20, 40, 80, then 100 ms four times.
        assert_eq!(started.elapsed(), Duration::from_millis(555));
    }

    #[tokio::test(start_paused = true)]
    async fn returns_what_the_check_settled_with() {
        let checks = Cell::new(0);
        let found = eventually(Duration::from_secs(1), "a value", || async {
            checks.set(checks.get() + 1);
            (checks.get() > 1).then_some("found")
        })
        .await;
        assert_eq!(found, "found");
        let counted: u32 = eventually(Duration::from_secs(1), "a count", || async {
            checks.set(checks.get() + 1);
            if checks.get() > 4 {
                Ok(checks.get())
            } else {
                Err(checks.get())
            }
        })
        .await;
        assert_eq!(counted, 5);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "not within 2s: the answer (last seen: \"still 41\")")]
    async fn a_timeout_names_what_was_awaited_and_what_was_seen() {
        eventually(Duration::from_secs(2), "the answer", || async {
            Err::<(), _>("still 41")
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "not within 2s: a flag")]
    async fn a_check_that_never_holds_ends_at_the_deadline() {
        eventually(Duration::from_secs(2), "a flag", || async { false }).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "not within 2s: an answer (a check did not return)")]
    async fn a_check_that_hangs_is_bounded_too() {
        eventually(Duration::from_secs(2), "an answer", || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_kept() {
        let started = Instant::now();
        let outcome = tokio::spawn(async {
            eventually(Duration::from_millis(250), "never", || async { false }).await
        })
        .await;
        assert!(outcome.is_err(), "the wait panicked");
        // The last pause is cut to the deadline, and the last check runs at it.
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
