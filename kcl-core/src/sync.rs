//! A value that tasks watch for changes, waking them in a fixed order.
//!
//! This is what `tokio::sync::watch` offers, minus its one non-deterministic trait: tokio's
//! channel spreads waiters over eight notifiers picked at random, so which task runs first after a
//! change differs from run to run. The worker's shutdown and lease-status signals use [`Signal`]
//! instead, so that a seeded simulation of many workers under the paused clock replays exactly.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A shared value with change notification.
#[derive(Debug)]
pub(crate) struct Signal<T> {
    /// The value and its version (incremented by every change).
    state: Mutex<(T, u64)>,
    changed: Notify,
}

impl<T: Copy> Signal<T> {
    pub(crate) fn new(value: T) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((value, 0)),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, (T, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.state().0
    }

    /// Replaces the value and wakes every watcher.
    pub(crate) fn set(&self, value: T) {
        {
            let mut state = self.state();
            state.0 = value;
            state.1 += 1;
        }
        self.changed.notify_waiters();
    }

    /// Changes the value in place; wakes watchers if `f` returns `true` (it changed something).
    pub(crate) fn update(&self, f: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut state = self.state();
            let modified = f(&mut state.0);
            if modified {
                state.1 += 1;
            }
            modified
        };
        if modified {
            self.changed.notify_waiters();
        }
        modified
    }

    /// A watcher that has seen the current value.
    pub(crate) fn watch(self: &Arc<Self>) -> Watch<T> {
        let seen = self.state().1;
        Watch {
            signal: self.clone(),
            seen,
        }
    }
}

/// Follows a [`Signal`]: [`Watch::changed`] resolves once per change it has not seen. A clone
/// follows the same signal and has seen what the original had.
#[derive(Clone, Debug)]
pub(crate) struct Watch<T> {
    signal: Arc<Signal<T>>,
    seen: u64,
}

impl<T: Copy> Watch<T> {
    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.signal.get()
    }

    /// The current value, marked as seen.
    pub(crate) fn get_and_update(&mut self) -> T {
        let state = self.signal.state();
        self.seen = state.1;
        state.0
    }

    /// Waits for a change not seen yet (returns at once if one happened since the last look).
    pub(crate) async fn changed(&mut self) {
        loop {
            let notified = self.signal.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change between the look and the wait is not missed.
            notified.as_mut().enable();
            {
                let state = self.signal.state();
                if state.1 != self.seen {
                    self.seen = state.1;
                    return;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_every_change_once_and_wake_in_order() {
        let signal = Signal::new(0u32);
        let mut a = signal.watch();
        assert_eq!(a.get(), 0);
        signal.set(1);
        a.changed().await; // a change happened since the watcher was made: no wait
        assert_eq!(a.get(), 1);
        // Unmodified updates do not wake.
        assert!(!signal.update(|_| false));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let mut w = signal.watch();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                while w.get_and_update() < 5 {
                    w.changed().await;
                }
                order.lock().unwrap().push((i, w.get()));
            }));
        }
        tokio::task::yield_now().await;
        assert!(signal.update(|v| {
            *v = 5;
            true
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 4);
        assert!(order.iter().all(|(_, v)| *v == 5));
    }
}
