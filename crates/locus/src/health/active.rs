//! Active HTTP health checks (Envoy Gateway `healthCheck.active`): one task per endpoint and
//! check, off the request path, started and stopped as endpoints come and go. Each check is
//! one HTTP/1.1 request on a new connection, made the way requests connect (TLS included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use locus_core::EndpointHealth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{HealthEvent, HealthTx};
use crate::model::upstream_tls::TlsClient;
use crate::model::ActiveCheck;

/// An endpoint, the check it gets, and the TLS settings it is reached with (0: plain).
pub type Key = (SocketAddr, ActiveCheck, u64);
type Probe = (JoinHandle<()>, Arc<EndpointHealth>);

/// What a probe needs besides its key: the endpoint's health record and its TLS client.
pub type Wanted = (Arc<EndpointHealth>, Option<Arc<TlsClient>>);

/// The running probes.
pub struct Prober {
    tasks: Mutex<HashMap<Key, Probe>>,
    tx: HealthTx,
}

/// The most of a check's response head that is read.
const MAX_HEAD: usize = 16 * 1024;

impl Prober {
    pub fn new(tx: HealthTx) -> Self {
        Prober {
            tasks: Mutex::new(HashMap::new()),
            tx,
        }
    }

    /// Starts probes for the endpoints and checks in `wanted` and stops the others.
    pub fn reconcile(&self, wanted: HashMap<Key, Wanted>) {
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
        for (key, (health, tls)) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe(
                tls,
                key.0,
                key.1.clone(),
                health.clone(),
                self.tx.clone(),
            ));
            tasks.insert(key, (task, health));
        }
    }
}

/// One check: a request on a new connection, answered by a status.
async fn check_once(
    tls: Option<&TlsClient>,
    addr: SocketAddr,
    check: &ActiveCheck,
) -> Result<(), String> {
    let resp = tokio::time::timeout(check.timeout, async {
        let mut stream = crate::connect::connect(addr, tls.map(|t| (t, false)), check.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let host = match tls {
            Some(t) => server_name_text(t),
            None => addr.to_string(),
        };
        let head = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: locus-health-check\r\nconnection: close\r\n\r\n",
            check.method, check.path
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => {
                    return Ok::<u16, String>(resp.code.unwrap_or_default())
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err("response head too large".into()),
                Err(e) => return Err(format!("malformed response: {e}")),
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the endpoint closed the connection without answering".into());
            }
        }
    })
    .await
    .map_err(|_| format!("no answer within {:?}", check.timeout))??;
    if check.expected_statuses.contains(&resp) {
        Ok(())
    } else {
        Err(format!("status {resp}"))
    }
}

/// The server name a TLS check sends as its Host.
fn server_name_text(tls: &TlsClient) -> String {
    match &tls.server_name {
        rustls::pki_types::ServerName::DnsName(n) => n.as_ref().to_owned(),
        other => format!("{other:?}"),
    }
}

async fn probe(
    tls: Option<Arc<TlsClient>>,
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
        match check_once(tls.as_deref(), addr, &check).await {
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
