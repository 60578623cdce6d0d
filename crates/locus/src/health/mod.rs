//! Health in the running gateway: per-endpoint state kept across reloads, the events that say
//! it changed, and the active prober.
//!
//! The request path only records outcomes on atomics and, when a threshold is crossed, sends
//! one event to the snapshot writer ([`crate::writer`]), which rebuilds what it affects.

pub mod active;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use locus_core::EndpointHealth;
use tokio::sync::mpsc;

/// Milliseconds on a monotonic clock starting near process start.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of an instant already read (the request path reads the clock once where it can).
pub fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

/// Health records by endpoint address, so outlier state and active-check verdicts survive
/// configuration reloads and are shared by every Service an address belongs to.
#[derive(Default)]
pub struct HealthRegistry {
    records: Mutex<HashMap<SocketAddr, Arc<EndpointHealth>>>,
}

impl HealthRegistry {
    /// The record for `addr`, created healthy if new. Used while building tables only.
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        self.records
            .lock()
            .expect("health registry lock")
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointHealth::new()))
            .clone()
    }

    /// Forgets endpoints no longer in any Service.
    pub fn retain(&self, present: &std::collections::HashSet<SocketAddr>) {
        self.records
            .lock()
            .expect("health registry lock")
            .retain(|addr, _| present.contains(addr));
    }
}

/// Something changed an endpoint's health; the Services containing it must be rebuilt.
#[derive(Clone, Copy, Debug)]
pub enum HealthEvent {
    /// Ejected until the given monotonic ms (a rebuild is also scheduled for then).
    Ejected { addr: SocketAddr, until_ms: u64 },
    /// Active-check verdict flipped.
    ActiveChanged { addr: SocketAddr },
    /// An ejection ended.
    Returned { addr: SocketAddr },
}

impl HealthEvent {
    pub fn addr(&self) -> SocketAddr {
        match self {
            HealthEvent::Ejected { addr, .. }
            | HealthEvent::ActiveChanged { addr }
            | HealthEvent::Returned { addr } => *addr,
        }
    }
}

pub type HealthTx = mpsc::UnboundedSender<HealthEvent>;
