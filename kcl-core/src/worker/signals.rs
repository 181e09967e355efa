//! Turning process signals into shutdowns: [`WorkerHandle::shutdown_on_signals`].

use tracing::{info, warn};

use super::WorkerHandle;

impl WorkerHandle {
    /// Spawns a task that turns the first SIGTERM or SIGINT (Ctrl-C) into a graceful
    /// [`shutdown`](WorkerHandle::shutdown) and a second one into
    /// [`shutdown_now`](WorkerHandle::shutdown_now): what a service under an orchestrator
    /// (Kubernetes, ECS, systemd) wants. The task ends when the worker has stopped.
    ///
    /// Must be called inside a tokio runtime. On platforms without Unix signals, Ctrl-C only.
    pub fn shutdown_on_signals(&self) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            let mut signals = match Signals::new() {
                Ok(signals) => signals,
                Err(error) => {
                    warn!(%error, "cannot listen for shutdown signals");
                    return;
                }
            };
            let mut received = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = handle.wait() => return,
                    _ = signals.next() => {}
                }
                received += 1;
                if received == 1 {
                    info!("signal received: shutting down gracefully");
                    handle.shutdown();
                } else {
                    warn!("second signal: stopping now");
                    handle.shutdown_now();
                }
            }
        })
    }
}

/// SIGTERM and SIGINT, listened to for the whole life of the task: a signal arriving while the
/// previous one is handled is queued, not missed.
#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            biased;
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
