//! Seeded fault injection for one worker: [`Faults`], hooks for a [`HookedTable`] and a
//! [`HookedBackend`] that pause the worker (its [`Gate`]) and inject lease-store faults and
//! read throttling during windows of (virtual) time.
//!
//! The lease-store faults are the ones a real store produces, each with its consequence for the
//! caller: a conditional write reported failed although its condition held (nothing written), a
//! timeout before the request reached the store (nothing written), a write that landed but
//! whose reply was lost, throttling, a 5xx, latency up to half a second.
//!
//! [`HookedTable`]: crate::hooks::HookedTable
//! [`HookedBackend`]: crate::hooks::HookedBackend

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::backend::BackendError;
use kcl_core::lease::LeaseError;
use tokio::time::Instant;

use crate::gate::Gate;
use crate::hooks::{BackendCall, BackendHooks, Before, TableCall, TableHooks};

/// A kind of injected lease-store fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// A conditional write reported as failed although its condition held (nothing written).
    ConditionFailed,
    /// A timeout before the request reached the store (nothing written; the outcome is
    /// unknown to the caller).
    TimeoutBefore,
    /// The write landed but its reply was lost.
    ReplyLost,
    /// Throttled (nothing done).
    Throttled,
    /// 5xx (nothing done).
    Unavailable,
    /// Slow: the call takes up to half a second.
    Latency,
}

/// Every [`Fault`].
pub const ALL_FAULTS: [Fault; 6] = [
    Fault::ConditionFailed,
    Fault::TimeoutBefore,
    Fault::ReplyLost,
    Fault::Throttled,
    Fault::Unavailable,
    Fault::Latency,
];

/// What to inject, when.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    /// From (inclusive).
    pub start: Instant,
    /// Until (exclusive).
    pub end: Instant,
    /// Probability that a call in the window fails.
    pub probability: f64,
    /// Only this kind, or any when `None`.
    pub only: Option<Fault>,
}

impl FaultWindow {
    /// Any fault with `probability` from now for `duration`.
    pub fn now_for(duration: Duration, probability: f64) -> Self {
        let start = Instant::now();
        Self {
            start,
            end: start + duration,
            probability,
            only: None,
        }
    }

    /// Only `fault`.
    pub fn only(mut self, fault: Fault) -> Self {
        self.only = Some(fault);
        self
    }

    fn covers(&self, at: Instant) -> bool {
        self.start <= at && at < self.end
    }
}

/// One injected fault, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    /// When.
    pub at: Instant,
    /// The call, e.g. `update` or `GetRecords`.
    pub operation: &'static str,
    /// What was injected.
    pub what: String,
}

#[derive(Debug)]
struct State {
    store: Vec<FaultWindow>,
    throttle: Vec<FaultWindow>,
    rng: fastrand::Rng,
    injected: Vec<Injected>,
}

/// The pause gate and fault windows of one worker, drawn from a seeded generator. Use it as the
/// hooks of the worker's [`crate::hooks::HookedTable`] and [`crate::hooks::HookedBackend`]
/// (both: a pause freezes both).
#[derive(Debug)]
pub struct Faults {
    gate: Arc<Gate>,
    state: Mutex<State>,
}

impl Faults {
    /// No faults yet; `seed` draws which calls fail.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            gate: Arc::new(Gate::new()),
            state: Mutex::new(State {
                store: Vec::new(),
                throttle: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
                injected: Vec::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's pause gate.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Adds a window of lease-store faults.
    pub fn store_faults(&self, window: FaultWindow) {
        self.state().store.push(window);
    }

    /// Adds a window in which reads (`GetRecords`, `GetShardIterator`) are throttled
    /// (`ProvisionedThroughputExceeded`) with the window's probability.
    pub fn throttle_reads(&self, window: FaultWindow) {
        self.state().throttle.push(window);
    }

    /// Ends every window.
    pub fn clear(&self) {
        let mut state = self.state();
        state.store.clear();
        state.throttle.clear();
    }

    /// What was injected so far.
    pub fn injected(&self) -> Vec<Injected> {
        self.state().injected.clone()
    }

    /// The store fault for this call, if any.
    fn draw_store(&self, operation: &'static str, write: bool) -> Option<Fault> {
        let now = Instant::now();
        let mut state = self.state();
        let window = state.store.iter().find(|w| w.covers(now))?.clone();
        if state.rng.f64() >= window.probability {
            return None;
        }
        let fault = match window.only {
            Some(fault) => fault,
            None => ALL_FAULTS[state.rng.usize(..ALL_FAULTS.len())],
        };
        // Reads cannot fail a condition or lose a write.
        let fault = match (write, fault) {
            (false, Fault::ConditionFailed | Fault::ReplyLost | Fault::TimeoutBefore) => {
                Fault::Unavailable
            }
            _ => fault,
        };
        state.injected.push(Injected {
            at: now,
            operation,
            what: format!("{fault:?}"),
        });
        Some(fault)
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.state().rng.u64(1..500))
    }

    fn draw_throttle(&self, operation: &'static str) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let Some(window) = state.throttle.iter().find(|w| w.covers(now)).cloned() else {
            return false;
        };
        let hit = state.rng.f64() < window.probability;
        if hit {
            state.injected.push(Injected {
                at: now,
                operation,
                what: "throttled".to_owned(),
            });
        }
        hit
    }
}

#[async_trait]
impl TableHooks for Faults {
    async fn before(&self, call: &TableCall<'_>) -> Before {
        self.gate.pass().await;
        let Some(fault) = self.draw_store(call.operation(), call.is_write()) else {
            return Before::Proceed;
        };
        match fault {
            Fault::Latency => Before::Delay(self.latency()),
            Fault::TimeoutBefore => Before::Fail(LeaseError::Unknown("injected timeout".into())),
            Fault::Throttled => Before::Fail(LeaseError::Throttled("injected".into())),
            Fault::Unavailable => Before::Fail(LeaseError::Unavailable("injected".into())),
            Fault::ReplyLost => {
                Before::LoseReply(LeaseError::Unknown("injected: reply lost".into()))
            }
            Fault::ConditionFailed => match call {
                // A create's condition only fails when the item exists: a 5xx instead.
                TableCall::CreateIfAbsent(_) => {
                    Before::Fail(LeaseError::Unavailable("injected".into()))
                }
                _ => Before::Fail(LeaseError::condition_failed(call.key().unwrap_or(""))),
            },
        }
    }

    async fn after(&self, _call: &TableCall<'_>, _outcome: Result<(), &LeaseError>) {
        // A paused worker receives the reply only when resumed.
        self.gate.pass().await;
    }
}

#[async_trait]
impl BackendHooks for Faults {
    async fn before(&self, call: &BackendCall<'_>) -> Result<(), BackendError> {
        self.gate.pass().await;
        let read = matches!(
            call,
            BackendCall::GetRecords { .. } | BackendCall::GetShardIterator { .. }
        );
        if read && self.draw_throttle(call.operation()) {
            return Err(BackendError::ProvisionedThroughputExceeded(
                "injected by the testkit".into(),
            ));
        }
        Ok(())
    }

    async fn after(&self, _call: &BackendCall<'_>, _outcome: Result<(), &BackendError>) {
        self.gate.pass().await;
    }
}
