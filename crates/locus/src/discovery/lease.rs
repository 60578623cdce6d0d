//! One status writer among replicas: a `coordination.k8s.io/v1` Lease, as Kubernetes
//! controllers elect a leader. Every replica routes; only the Lease holder writes Gateway API
//! status, so replicas never fight over it. A holder that cannot renew stops writing as soon
//! as its term would have ended, before another replica may take over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// How long a term lasts without renewal, and how often the holder renews (and others look).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Whether this replica holds the Lease now.
#[derive(Debug, Default)]
pub struct Leadership {
    /// Until when (`health::now_ms`) the current term lasts; 0: not held.
    until_ms: AtomicU64,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        crate::health::now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    fn held_from(&self, renewed_ms: u64) {
        // A margin below the Lease's duration: this replica stops writing before another
        // could see the Lease expire.
        let term = LEASE_DURATION.as_millis() as u64 * 2 / 3;
        self.until_ms.store(renewed_ms + term, Ordering::Relaxed);
    }

    fn lost(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
    }
}

/// This replica's name in the Lease: the pod's (`HOSTNAME`), else a random one.
pub fn identity() -> String {
    // The process id tells replicas on one host apart (tests, a laptop); in a pod it is 1.
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "locus".to_owned());
    format!("{base}_{}", std::process::id())
}

/// Holds, renews or waits for the Lease `namespace/name` until the process ends.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    me: String,
    leadership: Arc<Leadership>,
    on_change: impl Fn(bool),
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut was_leader = false;
    loop {
        let started = crate::health::now_ms();
        match step(&api, &name, &me).await {
            Ok(true) => leadership.held_from(started),
            Ok(false) => leadership.lost(),
            Err(e) => {
                // Unknown: keep the term already granted, no more.
                tracing::debug!(error = %e, lease = %name, "lease call failed");
            }
        }
        let leader = leadership.is_leader();
        if leader != was_leader {
            if leader {
                tracing::info!(lease = %format!("{namespace}/{name}"), holder = %me, "holding the status lease: this replica writes status");
            } else {
                tracing::info!(lease = %format!("{namespace}/{name}"), "not holding the status lease: another replica writes status");
            }
            was_leader = leader;
            on_change(leader);
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// One round: `Ok(true)` when this replica holds the Lease after it.
async fn step(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let lease = match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    let expired = spec
        .renew_time
        .as_ref()
        .is_none_or(|t| jiff::Timestamp::now().duration_since(t.0).as_secs() >= duration);
    if holder != me && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let mut next = lease.clone();
    let mut spec = spec;
    if holder != me {
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    }
    spec.renew_time = Some(now);
    next.spec = Some(spec);
    // The resourceVersion read above makes this a compare-and-swap: of two replicas taking an
    // expired Lease at once, one gets 409.
    match api.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
