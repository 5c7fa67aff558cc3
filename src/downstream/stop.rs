//! The server's shutdown, as seen by a connection waiting for its next request.
//!
//! An idle keep-alive connection must close as soon as the server starts shutting down (after an
//! upgrade its client should reconnect to the new process at once), so every wait for a request
//! also waits for Pingora's shutdown watch. `watch::Receiver::changed()` made afresh for each wait
//! registers with the channel's `Notify` and deregisters when the request comes: two round trips
//! through a lock shared by every connection of the process, per request (~0.5k instructions
//! under callgrind, and contention with more than one thread).
//!
//! `Stop` registers once per connection instead, and keeps that registration across requests.
//! Each later wait only compares the channel's version (an atomic load) as long as the
//! connection's task polls with the same waker, which it does: a connection is one task. Once
//! the registration wakes the task, the version has changed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use pingora_core::server::ShutdownWatch;
use tokio::sync::watch::error::RecvError;

/// What `ShutdownWatch::changed()` returns, pinned where the connection keeps it.
pub type Changed<'a> = Pin<&'a mut (dyn Future<Output = Result<(), RecvError>> + Send)>;

pub struct Stop<'a> {
    /// The connection's view of the watch: `has_changed` is the cheap check.
    rx: &'a ShutdownWatch,
    /// Shutdown had begun before the connection's receiver was made (its version then already
    /// counts as seen, so `has_changed` cannot tell).
    already: bool,
    /// The one registration: `changed()` of a second receiver, polled again only when the waker
    /// differs from the one it holds.
    changed: Changed<'a>,
    registered: Option<Waker>,
}

impl<'a> Stop<'a> {
    pub fn new(rx: &'a ShutdownWatch, changed: Changed<'a>) -> Stop<'a> {
        Stop {
            already: *rx.borrow(),
            rx,
            changed,
            registered: None,
        }
    }

    /// Whether the server is shutting down (or its watch is gone). Once `changed` has
    /// completed this is true, so it is never polled again.
    pub fn now(&self) -> bool {
        // Pingora only ever sends `true`, once: any change is the shutdown.
        self.already || self.rx.has_changed().unwrap_or(true)
    }

    /// Ready once the server is shutting down.
    pub fn poll_stop(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.now() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        match self.changed.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// `poll_stop` as a future, for `select!`.
    pub fn wait(&mut self) -> impl Future<Output = ()> + use<'_, 'a> {
        std::future::poll_fn(move |cx| self.poll_stop(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::watch;

    fn pinned<'a>(
        rx: &'a mut ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Result<(), RecvError>> + Send + 'a>> {
        Box::pin(rx.changed())
    }

    #[tokio::test]
    async fn a_wait_across_many_polls_wakes_at_shutdown() {
        let (tx, rx) = watch::channel(false);
        let mut rx2 = rx.clone();
        let mut changed = pinned(&mut rx2);
        let mut stop = Stop::new(&rx, changed.as_mut());
        assert!(!stop.now());
        // Many short waits, like a connection's waits between requests: each ends without a
        // shutdown and leaves the registration in place.
        for _ in 0..50 {
            tokio::select! {
                biased;
                () = stop.wait() => panic!("no shutdown yet"),
                () = tokio::task::yield_now() => {}
            }
        }
        let waiter = async {
            stop.wait().await;
            stop.now()
        };
        let send = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(true).unwrap();
        };
        let (stopped, ()) =
            tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(waiter, send) })
                .await
                .expect("the wait did not wake at shutdown");
        assert!(stopped);
    }

    #[tokio::test]
    async fn shutdown_before_the_connection_or_a_dropped_watch_count_as_stopping() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        // A receiver made after the shutdown has seen its version.
        let rx = rx.clone();
        let mut rx2 = rx.clone();
        let mut changed = pinned(&mut rx2);
        let mut stop = Stop::new(&rx, changed.as_mut());
        assert!(stop.now());
        stop.wait().await;

        let (tx, rx) = watch::channel(false);
        let mut rx2 = rx.clone();
        let mut changed = pinned(&mut rx2);
        let mut stop = Stop::new(&rx, changed.as_mut());
        assert!(!stop.now());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(2), stop.wait())
            .await
            .expect("a dropped watch ends the wait");
    }
}
