//! The running gateway: applies resource sets (validate → model → route table → swap) and keeps
//! one listener per configured port.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::health::active::Prober;
use crate::identity::{self, IdentityConfig};
use crate::model::Model;
use crate::proxy::{self, Shared};
use crate::resources::{ConfigError, ResourceSet};
use crate::routing::{GatewaySelector, RouteTable};
use crate::tls::{CertStore, PortTls};
use crate::writer::WriterHandle;

/// Lifecycle events, for whoever started the gateway (tests, the demo, scripts reading stdout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A listener port is bound. `port` is the configured port, `addr` the socket.
    Listening { port: u16, addr: SocketAddr },
    /// A configuration is in force (the first one, then each accepted reload).
    Applied { generation: u64 },
    /// A configuration was refused; the previous one keeps serving.
    Rejected { error: String },
    /// Cluster mode: this replica took (`true`) or lost the Lease of the status writer.
    StatusLease { held: bool },
}

#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub identity: IdentityConfig,
    pub selector: GatewaySelector,
    /// Address listeners bind to.
    pub bind: IpAddr,
    /// Bind every listener to an ephemeral port instead of its configured one (tests, demo).
    pub ephemeral_ports: bool,
    /// Listener ports below 1024 are bound this much higher (80 → 10080 with 10000), so a
    /// non-root container needs no capability; its Service maps the port back.
    pub privileged_port_offset: Option<u16>,
    /// Print events to stdout as `key=value` lines.
    pub events_to_stdout: bool,
    /// Prices per GB for the transfer cost estimate.
    pub cost_per_gb_cross_zone: f64,
    pub cost_per_gb_cross_region: f64,
    /// `locus_zone_imbalance_ratio` above this logs a warning.
    pub imbalance_warn: f64,
    /// How often the load-aware spill controller steps.
    pub load_spill_interval: std::time::Duration,
    /// The runtimes that serve requests (one listener each per port); `None`: the runtime
    /// the gateway was created on (tests, the demo).
    pub data_plane: Option<Vec<tokio::runtime::Handle>>,
    /// What clients and endpoints may hold: timeouts, sizes, connections.
    pub limits: proxy::Limits,
    /// How requests are answered: request ids, error bodies.
    pub answers: proxy::Answers,
    /// Accept other networks' east-west traffic on this port (plain HTTP; keep it reachable
    /// from the other networks' gateways only).
    pub east_west_port: Option<u16>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            identity: IdentityConfig::default(),
            selector: GatewaySelector::All,
            bind: IpAddr::from([0, 0, 0, 0]),
            ephemeral_ports: false,
            privileged_port_offset: None,
            events_to_stdout: false,
            cost_per_gb_cross_zone: crate::metrics::DEFAULT_COST_CROSS_ZONE,
            cost_per_gb_cross_region: crate::metrics::DEFAULT_COST_CROSS_REGION,
            imbalance_warn: 1.5,
            east_west_port: None,
            load_spill_interval: crate::writer::DEFAULT_LOAD_INTERVAL,
            data_plane: None,
            limits: proxy::Limits::default(),
            answers: proxy::Answers::default(),
        }
    }
}

struct Listener {
    addr: SocketAddr,
    /// One accept loop per data-plane runtime.
    tasks: Vec<JoinHandle<()>>,
    /// The port's TLS configuration (`None`: plain HTTP), read at each accept.
    tls: Arc<ArcSwapOption<PortTls>>,
}

pub struct Gateway {
    shared: Arc<Shared>,
    writer: WriterHandle,
    prober: Prober,
    options: GatewayOptions,
    listeners: Mutex<BTreeMap<u16, Listener>>,
    /// HTTPS listeners' certificates, the last good one of each Secret kept.
    certs: Arc<Mutex<CertStore>>,
    generation: AtomicU64,
    events: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    last_warnings: Mutex<Vec<String>>,
    last_error: Mutex<Option<String>>,
    files: Mutex<Vec<String>>,
    discovery_status: Mutex<Option<String>>,
    /// Set by the first shutdown signal: `/ready` fails, no listener is bound any more.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// A gateway with no configuration yet. Must be called within a Tokio runtime: it starts
    /// the snapshot writer there (the control runtime; listeners go to the data plane).
    pub fn new(options: GatewayOptions) -> Arc<Self> {
        let metrics = Arc::new(crate::metrics::Metrics::new(
            options.cost_per_gb_cross_zone,
            options.cost_per_gb_cross_region,
            options.imbalance_warn,
        ));
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let writer =
            WriterHandle::spawn(table.clone(), metrics.clone(), options.load_spill_interval);
        let shared = Arc::new(Shared::new(table, metrics, options.limits, options.answers));
        Arc::new(Gateway {
            shared,
            prober: Prober::new(writer.events()),
            writer,
            options,
            listeners: Mutex::new(BTreeMap::new()),
            certs: Arc::default(),
            generation: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            last_warnings: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            files: Mutex::new(Vec::new()),
            discovery_status: Mutex::new(None),
            shutting_down: Default::default(),
        })
    }

    /// Subscribes to lifecycle events.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events.lock().expect("events lock").push(tx);
        rx
    }

    /// Cluster mode: whether this replica writes status (it holds the Lease).
    pub fn note_status_lease(&self, held: bool) {
        self.emit(Event::StatusLease { held });
    }

    fn emit(&self, event: Event) {
        if self.options.events_to_stdout {
            use std::io::Write;
            let line = match &event {
                Event::Listening { port, addr } => format!("listening port={port} addr={addr}"),
                Event::Applied { generation } => format!("applied generation={generation}"),
                Event::Rejected { error } => format!("rejected error={error:?}"),
                Event::StatusLease { held } => format!("status-lease held={held}"),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        self.events
            .lock()
            .expect("events lock")
            .retain(|tx| tx.send(event.clone()).is_ok());
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// The client and upstream bounds in force.
    pub fn limits(&self) -> proxy::Limits {
        self.shared.limits
    }

    /// Whether shutdown has begun (`/ready` answers 503).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Graceful shutdown: `/ready` fails at once; listeners keep serving for `delay` (so load
    /// balancers and EndpointSlices see the pod go unready and stop sending); then they stop
    /// accepting, every connection is asked to finish (HTTP/1 `Connection: close` on its
    /// response in flight, h2 GOAWAY) and requests in flight get up to `timeout` to complete.
    /// Returns the connections still open when it gave up (0: a clean drain).
    pub async fn drain(&self, delay: std::time::Duration, timeout: std::time::Duration) -> usize {
        self.shutting_down.store(true, Ordering::Release);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            timeout_ms = timeout.as_millis() as u64,
            "draining: /ready fails now, listeners close after the delay"
        );
        tokio::time::sleep(delay).await;
        self.close_unwanted(&[]);
        let conns = &self.shared.connections;
        let open = conns.open();
        conns.drain();
        tracing::info!(
            connections = open,
            "listeners closed; finishing requests in flight"
        );
        let _ = tokio::time::timeout(timeout, conns.closed()).await;
        let left = conns.open();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout: closing connections still open"
            );
        } else {
            tracing::info!("drained");
        }
        left
    }

    /// The generation in force (0 before the first configuration).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The last configuration error, cleared by the next good configuration.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// A watch of the cluster failed: counted, and shown in `/debug/config`.
    pub fn note_discovery_error(&self, kind: &str) {
        self.shared
            .metrics
            .discovery_errors
            .get_or_create(&crate::metrics::KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The cluster watches' state: `None` when all work.
    pub fn set_discovery_status(&self, status: Option<String>) {
        *self.discovery_status.lock().expect("discovery lock") = status;
    }

    pub fn discovery_status(&self) -> Option<String> {
        self.discovery_status
            .lock()
            .expect("discovery lock")
            .clone()
    }

    /// The files of the configuration in force.
    pub fn files(&self) -> Vec<String> {
        self.files.lock().expect("files lock").clone()
    }

    /// The route table in force.
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    /// Configured port → bound address.
    pub fn listener_addrs(&self) -> BTreeMap<u16, SocketAddr> {
        self.listeners
            .lock()
            .expect("listeners lock")
            .iter()
            .map(|(p, l)| (*p, l.addr))
            .collect()
    }

    /// The TLS configuration each listener port serves with (`None`: plain HTTP).
    pub fn listener_tls(&self) -> BTreeMap<u16, Option<Arc<PortTls>>> {
        self.listeners
            .lock()
            .expect("listeners lock")
            .iter()
            .map(|(p, l)| (*p, l.tls.load_full()))
            .collect()
    }

    /// Validates and applies a resource set. On error nothing changes: the last good
    /// configuration keeps serving. The model and the table are built on blocking threads,
    /// never on a thread that serves requests.
    pub async fn apply(&self, mut set: ResourceSet) -> Result<u64, String> {
        let started = std::time::Instant::now();
        set.local_cluster = self.options.identity.cluster.clone();
        set.local_network = self.options.identity.network.clone();
        set.east_west_port = self.options.east_west_port;
        let files: Vec<String> = set.files.iter().map(|f| f.display().to_string()).collect();
        // Certificates are parsed there too; their problems become listener status and
        // warnings in the model, never a rejected configuration.
        let certs = self.certs.clone();
        let selector = self.options.selector.clone();
        let built = tokio::task::spawn_blocking(move || {
            let mut model = Model::build(&set)?;
            let tls = certs
                .lock()
                .expect("cert store")
                .resolve(&mut model, &selector);
            Ok::<_, ConfigError>((model, tls))
        })
        .await;
        let (model, tls) = match built {
            Ok(built) => built.map_err(|e| self.reject(e.to_string()))?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let resolved = identity::resolve(&self.options.identity, &model);
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        // Bind new ports before publishing so a table never names a port that is not served.
        let mut wanted = self.options.selector.listener_ports(&model);
        if let Some(port) = model.east_west_port {
            if wanted.contains(&port) {
                return Err(self.reject(format!(
                    "--east-west-port {port} is also a Gateway listener's port; east-west traffic needs a port of its own"
                )));
            }
            wanted.push(port);
            wanted.sort_unstable();
            wanted.dedup();
        }
        if let Err(e) = self.bind_missing(&wanted, &tls).await {
            return Err(self.reject(e));
        }
        // A port that becomes HTTPS gets its TLS configuration before the table that routes its
        // hosts is published (never a moment of plain text); one that becomes plain loses it
        // after (below).
        for (port, l) in self.listeners.lock().expect("listeners lock").iter() {
            if let Some(t) = tls.get(port) {
                l.tls.store(Some(t.clone()));
            }
        }
        let Some(table) = self
            .writer
            .apply(
                Arc::new(model),
                resolved,
                self.options.selector.clone(),
                generation,
            )
            .await
        else {
            return Err(self.reject("the snapshot writer has stopped".to_owned()));
        };
        self.log_warnings(&table.warnings);
        tracing::info!(
            generation,
            locality = %table.identity.identity.locality,
            locality_source = %table.identity.source,
            node = table.identity.identity.node.as_deref().unwrap_or("<unknown>"),
            services = table.services.len(),
            listeners = table.ports.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "configuration applied"
        );
        self.generation.store(generation, Ordering::SeqCst);
        self.prober.reconcile(active_checks(&table));
        // Ports that no longer serve HTTPS lose their TLS configuration now that the table is
        // published (HTTPS ones got theirs before); connections already made keep theirs.
        for (port, l) in self.listeners.lock().expect("listeners lock").iter() {
            if !tls.contains_key(port) {
                l.tls.store(None);
            }
        }
        self.close_unwanted(&wanted);
        *self.last_error.lock().expect("error lock") = None;
        *self.files.lock().expect("files lock") = files;
        self.shared
            .metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels {
                result: "success".into(),
            })
            .inc();
        self.emit(Event::Applied { generation });
        Ok(generation)
    }

    /// Reports a configuration that cannot be used (a load or validation error).
    pub fn reject(&self, error: String) -> String {
        if self.generation.load(Ordering::SeqCst) > 0 {
            tracing::error!(%error, "configuration rejected; the last good configuration keeps serving");
        } else {
            tracing::error!(%error, "configuration rejected");
        }
        *self.last_error.lock().expect("error lock") = Some(error.clone());
        self.shared
            .metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels {
                result: "failure".into(),
            })
            .inc();
        self.emit(Event::Rejected {
            error: error.clone(),
        });
        error
    }

    pub fn reject_config_error(&self, e: &ConfigError) -> String {
        self.reject(e.to_string())
    }

    fn log_warnings(&self, warnings: &[String]) {
        let mut last = self.last_warnings.lock().expect("warnings lock");
        for w in warnings {
            if !last.contains(w) {
                tracing::warn!("{w}");
            }
        }
        *last = warnings.to_vec();
    }

    async fn bind_missing(
        &self,
        wanted: &[u16],
        tls: &BTreeMap<u16, Arc<PortTls>>,
    ) -> Result<(), String> {
        if self.shutting_down() {
            return Ok(());
        }
        let missing: Vec<u16> = {
            let l = self.listeners.lock().expect("listeners lock");
            wanted
                .iter()
                .copied()
                .filter(|p| !l.contains_key(p))
                .collect()
        };
        for port in missing {
            let bind_port = match (self.options.ephemeral_ports, self.options.privileged_port_offset) {
                (true, _) => 0,
                (false, Some(offset)) if port < 1024 => port.checked_add(offset).ok_or_else(|| {
                    format!("listener port {port} plus --privileged-port-offset {offset} is not a port")
                })?,
                _ => port,
            };
            let socket = SocketAddr::new(self.options.bind, bind_port);
            let handles = match &self.options.data_plane {
                Some(h) => h.clone(),
                None => vec![tokio::runtime::Handle::current()],
            };
            let bound = crate::data_plane::bind(socket, &handles)
                .map_err(|e| format!("cannot listen on {socket} for listener port {port}: {e}"))?;
            let addr = bound[0].1.local_addr().map_err(|e| e.to_string())?;
            let conns = Arc::new(proxy::PortConnections::default());
            // Set before the first accept: an HTTPS port never answers in plain text.
            let port_tls = Arc::new(ArcSwapOption::new(tls.get(&port).cloned()));
            let tasks = bound
                .into_iter()
                .map(|(runtime, listener)| {
                    runtime.spawn(proxy::serve(
                        listener,
                        proxy::Port {
                            number: port,
                            connections: conns.clone(),
                            tls: port_tls.clone(),
                        },
                        self.shared.clone(),
                    ))
                })
                .collect();
            tracing::info!(port, %addr, workers = handles.len(), "listening");
            self.listeners.lock().expect("listeners lock").insert(
                port,
                Listener {
                    addr,
                    tasks,
                    tls: port_tls,
                },
            );
            self.emit(Event::Listening { port, addr });
        }
        Ok(())
    }

    /// Stops accepting on every listener (the demo's in-process replicas, when done).
    pub fn shutdown(&self) {
        self.close_unwanted(&[]);
    }

    fn close_unwanted(&self, wanted: &[u16]) {
        let mut l = self.listeners.lock().expect("listeners lock");
        let gone: Vec<u16> = l.keys().copied().filter(|p| !wanted.contains(p)).collect();
        for port in gone {
            if let Some(listener) = l.remove(&port) {
                // Stops accepting; connections already accepted finish on their own tasks.
                for task in listener.tasks {
                    task.abort();
                }
                tracing::info!(port, addr = %listener.addr, "listener closed");
            }
        }
    }
}

/// Every endpoint that an active health check watches, with its check and health record.
fn active_checks(
    table: &RouteTable,
) -> std::collections::HashMap<crate::health::active::Key, crate::health::active::Wanted> {
    let mut wanted = std::collections::HashMap::new();
    for target in table.services.values() {
        let Some(check) = &target.health.active else {
            continue;
        };
        // A port whose TLS is refused is not checked: its requests fail before any endpoint.
        let tls = match target.health.upstream.tls.as_ref().map(|t| &t.client) {
            Some(Err(_)) => continue,
            Some(Ok(c)) => Some(c.clone()),
            None => None,
        };
        let tls_id = tls.as_ref().map_or(0, |t| t.id);
        let snap = target.snapshot.load();
        // Another network's gateway is not checked as an endpoint: a probe carries no hop,
        // and the gateway checks its own endpoints.
        for (ep, health) in snap
            .endpoints
            .iter()
            .zip(&snap.health)
            .filter(|(ep, _)| ep.via.is_none())
        {
            wanted.insert(
                (ep.addr, check.clone(), tls_id),
                (health.clone(), tls.clone()),
            );
        }
    }
    wanted
}
