//! State shared by the controller and the HTTP server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use prometheus_client::registry::Registry;

use crate::alerts::Alerts;
use crate::collector::Histories;
use crate::membership;
use crate::metrics::Metrics;
use crate::resources::load_balancer::LbImages;

/// Shared between the controller, the leader elector and the HTTP server.
pub struct State {
    /// Metrics registry rendered at `/metrics`.
    pub registry: Registry,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Alerts that fire now.
    pub alerts: Alerts,
    /// The telemetry collector's samples of every cluster (one hour each).
    pub samples: Histories,
    ready: AtomicBool,
}

impl State {
    /// Fresh state with registered metrics.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        Arc::new(Self {
            registry,
            metrics,
            alerts: Alerts::default(),
            samples: Histories::default(),
            ready: AtomicBool::new(false),
        })
    }
    /// Marks the operator ready (the API server answered and the CRD is installed).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    /// Whether `/readyz` should answer 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// What every reconcile gets.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Shared state (metrics).
    pub state: Arc<State>,
    /// Membership monitors and their reports.
    pub membership: membership::Registry,
    /// The images of the sticky load balancers.
    pub lb_images: LbImages,
    /// Consecutive failures per object (namespace/name), for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// First retry delay after a failed reconcile.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Context {
    /// A context for one controller run.
    pub fn new(client: Client, reporter: Reporter, state: Arc<State>) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            state,
            membership: membership::Registry::default(),
            lb_images: LbImages::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before the next try.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(key);
    }
}

/// Delay after the `n`th consecutive failure: 2 s, 4 s, 8 s ... capped at 5 min.
pub fn backoff(n: u32) -> Duration {
    let factor = 1u64 << n.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(factor.try_into().unwrap_or(u32::MAX))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
