//! Freezing a worker: [`Gate`].

use std::sync::Mutex;

use async_trait::async_trait;
use kcl_core::backend::BackendError;
use kcl_core::lease::LeaseError;
use tokio::sync::Notify;

use crate::hooks::{BackendCall, BackendHooks, Before, TableCall, TableHooks};

/// Freezes whatever passes through it while closed: a paused worker's lease-store calls,
/// Kinesis calls and processor calls all wait at its gate until it is resumed, as a process
/// stopped by a long GC pause or a debugger would.
///
/// (A flag and a `Notify` rather than a `watch` channel, whose wake order is random: a seeded
/// run under the paused clock must replay exactly.)
#[derive(Debug, Default)]
pub struct Gate {
    paused: Mutex<bool>,
    opened: Notify,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits while the gate is closed.
    pub async fn pass(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            opened.await;
        }
    }

    /// Closes the gate.
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Opens it and lets everything waiting through.
    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.opened.notify_waiters();
    }

    /// Whether it is closed.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A gate as lease-table hooks: a call waits at the gate before it is sent and again before its
/// reply is returned (a paused worker sends nothing and hears nothing).
#[async_trait]
impl TableHooks for Gate {
    async fn before(&self, _call: &TableCall<'_>) -> Before {
        self.pass().await;
        Before::Proceed
    }

    async fn after(&self, _call: &TableCall<'_>, _outcome: Result<(), &LeaseError>) {
        self.pass().await;
    }
}

/// A gate as backend hooks: a Kinesis call waits at the gate before it is sent and again
/// before its reply is returned.
#[async_trait]
impl BackendHooks for Gate {
    async fn before(&self, _call: &BackendCall<'_>) -> Result<(), BackendError> {
        self.pass().await;
        Ok(())
    }

    async fn after(&self, _call: &BackendCall<'_>, _outcome: Result<(), &BackendError>) {
        self.pass().await;
    }
}
