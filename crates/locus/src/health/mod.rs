//! Health in the running gateway: per-endpoint state kept across reloads, the writer that
//! rebuilds Service snapshots when an endpoint is ejected, returns, or changes active-check
//! verdict, and the active prober.
//!
//! The request path only records outcomes on atomics and, when a threshold is crossed, sends
//! one message here; all rebuilding happens on this side.

pub mod active;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use locus_core::EndpointHealth;
use tokio::sync::mpsc;

/// Milliseconds on a monotonic clock starting near process start.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Health records by endpoint address, so outlier state and active-check verdicts survive
/// configuration reloads and are shared by every Service an address belongs to.
#[derive(Default)]
pub struct HealthRegistry {
    records: Mutex<HashMap<SocketAddr, Arc<EndpointHealth>>>,
    /// Load-aware spill per Service (`namespace/name:port`), written by the load task, read
    /// when a reload rebuilds the Service.
    load_spill: Mutex<HashMap<String, f64>>,
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

    /// The load-aware spill in force for a Service (0 when none).
    pub fn load_spill(&self, service: &str) -> f64 {
        self.load_spill
            .lock()
            .expect("spill lock")
            .get(service)
            .copied()
            .unwrap_or(0.0)
    }

    /// Replaces the load-aware spill of every Service that has it on.
    pub fn set_load_spill(&self, spill: HashMap<String, f64>) {
        *self.load_spill.lock().expect("spill lock") = spill;
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

/// Rebuilds the snapshots of every Service containing an endpoint whose health changed.
pub async fn monitor(
    table: Arc<crate::proxy::Shared>,
    tx: HealthTx,
    mut rx: mpsc::UnboundedReceiver<HealthEvent>,
) {
    while let Some(event) = rx.recv().await {
        if let HealthEvent::Ejected { addr, until_ms } = event {
            let tx = tx.clone();
            tokio::spawn(async move {
                let wait = until_ms.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                tracing::info!(endpoint = %addr, "ejection ended; endpoint back in rotation");
                let _ = tx.send(HealthEvent::Returned { addr });
            });
        }
        let current = table.table.load();
        if let Some(targets) = current.by_endpoint.get(&event.addr()) {
            for target in targets {
                target.refresh();
            }
        }
    }
}
