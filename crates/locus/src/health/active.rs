//! Active HTTP health checks (Envoy Gateway `healthCheck.active`): one task per endpoint and
//! check, off the request path, started and stopped as endpoints come and go.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use locus_core::EndpointHealth;
use tokio::task::JoinHandle;

use super::{HealthEvent, HealthTx};
use crate::model::ActiveCheck;

/// An endpoint and the check it gets.
pub type Key = (SocketAddr, ActiveCheck);
type Probe = (JoinHandle<()>, Arc<EndpointHealth>);

/// The running probes.
pub struct Prober {
    tasks: Mutex<HashMap<Key, Probe>>,
    client: Client<HttpConnector, Empty<Bytes>>,
    tx: HealthTx,
}

impl Prober {
    pub fn new(tx: HealthTx) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Prober {
            tasks: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            tx,
        }
    }

    /// Starts probes for the endpoints and checks in `wanted` and stops the others.
    pub fn reconcile(&self, wanted: HashMap<Key, Arc<EndpointHealth>>) {
        let mut tasks = self.tasks.lock().expect("prober lock");
        tasks.retain(|key, (task, health)| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
                tracing::debug!(endpoint = %key.0, "active health check stopped");
                // An endpoint whose checks stopped must not stay marked unhealthy by them.
                if health.set_active_unhealthy(false) {
                    let _ = self.tx.send(HealthEvent::ActiveChanged { addr: key.0 });
                }
            }
            keep
        });
        for (key, health) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe(
                self.client.clone(),
                key.0,
                key.1.clone(),
                health.clone(),
                self.tx.clone(),
            ));
            tasks.insert(key, (task, health));
        }
    }
}

async fn check_once(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    check: &ActiveCheck,
) -> Result<(), String> {
    let req = http::Request::builder()
        .method(check.method.clone())
        .uri(format!("http://{addr}{}", check.path))
        .header(http::header::USER_AGENT, "locus-health-check")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(check.timeout, async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok::<u16, String>(status)
    })
    .await
    .map_err(|_| format!("no answer within {:?}", check.timeout))??;
    if check.expected_statuses.contains(&resp) {
        Ok(())
    } else {
        Err(format!("status {resp}"))
    }
}

async fn probe(
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    check: ActiveCheck,
    health: Arc<EndpointHealth>,
    tx: HealthTx,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        match check_once(&client, addr, &check).await {
            Ok(()) => {
                ok_run += 1;
                fail_run = 0;
                if health.is_active_unhealthy()
                    && ok_run >= check.healthy_threshold
                    && health.set_active_unhealthy(false)
                {
                    tracing::info!(endpoint = %addr, path = %check.path, "active health check passing; endpoint healthy");
                    let _ = tx.send(HealthEvent::ActiveChanged { addr });
                }
            }
            Err(why) => {
                fail_run += 1;
                ok_run = 0;
                if !health.is_active_unhealthy()
                    && fail_run >= check.unhealthy_threshold
                    && health.set_active_unhealthy(true)
                {
                    tracing::warn!(endpoint = %addr, path = %check.path, reason = %why, "active health check failing; endpoint unhealthy");
                    let _ = tx.send(HealthEvent::ActiveChanged { addr });
                }
            }
        }
    }
}
