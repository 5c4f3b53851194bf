//! A future in a `select!` loop that is polled only when it was woken.
//!
//! `select!` polls every branch each time its task runs. A cancellation token's `cancelled()`
//! future costs two mutex locks per poll (one to check the token, one to re-register with its
//! `Notify`), and the tasks that wait on one beside their work run several times per request: a
//! visitor connection's task (1.2k instructions per request at c64, callgrind) and the TLS/TCP
//! multiplexer's reader and writer, once per frame. [`WhenWoken`] polls its future once, then
//! again only after that future's own waker fired; a poll in between costs an atomic swap and
//! keeping the task's waker current.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `inner`, polled only after its own waker fired (and at first).
pub struct WhenWoken<'a, F> {
    inner: Pin<&'a mut F>,
    flag: Arc<WakeFlag>,
}

/// Raised by `inner`'s waker; that wake is passed on to the task.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> WhenWoken<'a, F> {
    /// Wraps a pinned future (`std::pin::pin!(token.cancelled())`).
    pub fn new(inner: Pin<&'a mut F>) -> WhenWoken<'a, F> {
        // Up at first: `inner` has not been polled, so it has no waker to wake.
        let flag = WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        };
        WhenWoken {
            inner,
            flag: Arc::new(flag),
        }
    }
}

impl<F: Future> Future for WhenWoken<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake in between is then passed on, not lost.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.flag.clone());
        let poll = this.inner.as_mut().poll(&mut Context::from_waker(&waker));
        if poll.is_ready() {
            // A later poll reaches `inner` again, as a fresh `cancelled()` would answer at once.
            this.flag.woken.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl<F> std::fmt::Debug for WhenWoken<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhenWoken").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Pending until told otherwise; counts its polls and keeps the last waker.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Future for &Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn polls_its_future_only_after_its_wake() {
        let probe = Probe::default();
        let inner = std::pin::pin!(&probe);
        let mut signal = WhenWoken::new(inner);
        let task = Arc::new(WakeFlag::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        // The first poll reaches the future; the next ones, with no wake, do not.
        for _ in 0..5 {
            assert!(Pin::new(&mut signal).poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::Relaxed), 1);
        // The future's wake reaches the task, and the next poll reaches the future.
        probe.ready.store(true, Ordering::Relaxed);
        let inner_waker = probe.waker.lock().unwrap().take().unwrap();
        inner_waker.wake();
        assert!(task.woken.load(Ordering::Relaxed), "the task was not woken");
        assert!(Pin::new(&mut signal).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::Relaxed), 2);
        // Once ready, every poll asks the future again (and a token's stays ready).
        assert!(Pin::new(&mut signal).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn ends_with_a_token_cancelled_later() {
        let token = CancellationToken::new();
        let cancelled = std::pin::pin!(token.cancelled());
        let mut signal = WhenWoken::new(cancelled);
        let early = tokio::time::timeout(Duration::from_millis(20), &mut signal).await;
        assert!(early.is_err(), "ended before the token was cancelled");
        let later = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            later.cancel();
        });
        tokio::time::timeout(Duration::from_secs(5), &mut signal)
            .await
            .expect("the cancellation did not reach the waiting task");
    }
}
