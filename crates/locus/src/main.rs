//! The `locus` binary: `serve`, `check`, `echo` and `demo`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use locus::discovery::files;
use locus::gateway::{Gateway, GatewayOptions};
use locus::identity::IdentityConfig;
use locus::model::ObjKey;
use locus::routing::GatewaySelector;
use locus_core::Locality;

#[derive(Parser)]
#[command(
    name = "locus",
    version,
    about = "A locality-aware L7 gateway configured with Kubernetes resources"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Table,
    Json,
    Svg,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Clone)]
struct IdentityArgs {
    /// The gateway's own locality, `region/zone/subzone` (else LOCALITY, else its Node's labels).
    #[arg(long, env = "LOCALITY", value_parser = parse_locality)]
    locality: Option<Locality>,
    /// The Kubernetes node the gateway runs on (drives internalTrafficPolicy: Local, and the
    /// locality when none is given).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The cluster the gateway runs in (else the MCS ClusterProperty
    /// `cluster.clusterset.k8s.io`): its endpoints are preferred over other clusters' at each
    /// locality level.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster: Option<String>,
    /// The network the gateway is in (else the `topology.istio.io/network` label of Namespace
    /// istio-system): endpoints of other networks are reached through their east-west
    /// gateways.
    #[arg(long, env = "NETWORK")]
    network: Option<String>,
    /// The Service in front of the gateway replicas (`namespace/name`): its ready endpoints per
    /// zone are the fleet for `locus.io/zone-balance: capacity` (a Gateway's `locus.io/fleet`
    /// annotation wins).
    #[arg(long, value_parser = parse_gateway)]
    fleet_service: Option<ObjKey>,
}

impl IdentityArgs {
    fn config(&self) -> IdentityConfig {
        IdentityConfig {
            locality: self.locality.clone(),
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            network: self.network.clone(),
            fleet_service: self.fleet_service.clone(),
        }
    }
}

fn parse_remote_cluster(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not NAME=KUBECONFIG")),
    }
}

fn parse_locality(s: &str) -> Result<Locality, String> {
    Locality::parse(s).map_err(|e| e.to_string())
}

fn parse_gateway(s: &str) -> Result<ObjKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(ObjKey::new(ns, name)),
        _ => Err(format!("{s:?}: expected namespace/name")),
    }
}

// Parsed once at startup: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Print a shell completion script: `source <(locus completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve the Gateways, routes and Services in the given manifests (reloading on change),
    /// or watched live from a cluster with `--kubernetes`.
    Serve {
        /// Manifest files or directories (as `kubectl apply -f`); repeatable; `-` reads standard
        /// input once.
        #[arg(short = 'f', long = "filename", required_unless_present = "kubernetes")]
        files: Vec<PathBuf>,
        /// Watch the resources from the Kubernetes API server (in-cluster service account, or
        /// KUBECONFIG / --kubeconfig) instead of files.
        #[arg(long, conflicts_with = "files")]
        kubernetes: bool,
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// Watch one namespace only (default: all).
        #[arg(long, requires = "kubernetes")]
        namespace: Option<String>,
        /// In cluster mode, serve the Gateways of this class (unless --gateway names one).
        #[arg(long, default_value = "locus")]
        gateway_class: String,
        /// In cluster mode, do not write Gateway/HTTPRoute status (for read-only RBAC).
        #[arg(long, requires = "kubernetes")]
        no_status: bool,
        /// Another cluster whose Services, EndpointSlices, Nodes and WorkloadEntries join the
        /// view, `NAME=KUBECONFIG`; repeatable. Secrets labelled `istio/multiCluster: "true"`
        /// (Istio's remote secrets) add clusters too.
        #[arg(long = "remote-cluster", requires = "kubernetes", value_parser = parse_remote_cluster)]
        remote_clusters: Vec<(String, PathBuf)>,
        /// The namespace whose `istio/multiCluster` Secrets add remote clusters (default: the
        /// gateway's own, POD_NAMESPACE, else --namespace, else `default`).
        #[arg(long, requires = "kubernetes")]
        remote_secret_namespace: Option<String>,
        #[command(flatten)]
        identity: IdentityArgs,
        /// Serve only this Gateway (`namespace/name`); default: every Gateway in the files.
        #[arg(long, value_parser = parse_gateway)]
        gateway: Option<ObjKey>,
        /// Address the listeners bind to.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Accept other networks' east-west traffic on this port: requests carrying the hop
        /// header go to the named Service's endpoints in this cluster only. Plain HTTP: keep it
        /// reachable from the other networks' gateways only.
        #[arg(long)]
        east_west_port: Option<u16>,
        /// Bind each listener to a free port instead of its configured one; the bound
        /// addresses are printed on stdout (`listening port=80 addr=127.0.0.1:41234`).
        #[arg(long)]
        ephemeral_ports: bool,
        /// Bind listener ports below 1024 this much higher (80 → 10080 with 10000), so a
        /// non-root container needs no capability; the Service maps the ports back.
        #[arg(long, env = "LOCUS_PRIVILEGED_PORT_OFFSET")]
        privileged_port_offset: Option<u16>,
        /// Threads serving requests (default: the number of cores). The control plane
        /// (reloads, health, admin API) runs on a thread of its own.
        #[arg(long)]
        workers: Option<usize>,
        /// How the workers share connections: `per-core` (one single-threaded runtime and one
        /// SO_REUSEPORT listener per worker, as nginx) or `shared` (one work-stealing runtime).
        #[arg(long, value_enum, default_value = "per-core")]
        threading: locus::data_plane::Threading,
        /// How often the files are checked for changes, in milliseconds.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
        /// Admin API address (`/metrics`, `/ready`, `/debug/...`); `off` disables it. Loopback
        /// by default: expose it elsewhere only on purpose.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
        /// Address serving only `/metrics`, `/ready` and `/healthz` (kubelet probes, scrapers),
        /// for when the admin API stays on loopback; `off` by default.
        #[arg(long, default_value = "off")]
        probe_addr: String,
        /// On SIGTERM, `/ready` fails at once and listeners keep serving this many
        /// milliseconds (so load balancers notice) before they stop accepting.
        #[arg(long, default_value_t = 5_000)]
        drain_delay_ms: u64,
        /// Then requests in flight get this many milliseconds to complete; a second signal
        /// exits at once.
        #[arg(long, default_value_t = 30_000)]
        drain_timeout_ms: u64,
        /// Estimated price of one GB crossing zones, for `locus_estimated_transfer_cost_dollars`
        /// (default: typical public-cloud list price).
        #[arg(long, default_value_t = locus::metrics::DEFAULT_COST_CROSS_ZONE)]
        cost_per_gb_cross_zone: f64,
        /// Estimated price of one GB crossing regions.
        #[arg(long, default_value_t = locus::metrics::DEFAULT_COST_CROSS_REGION)]
        cost_per_gb_cross_region: f64,
        /// Warn when an endpoint's expected load exceeds the mean by this factor because
        /// endpoints are spread unevenly over zones.
        #[arg(long, default_value_t = 1.5)]
        imbalance_warn_factor: f64,
        /// How often the load-aware spill controller (`locus.io/load-spill`) measures and
        /// steps, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
        load_spill_interval_ms: u64,
        /// Log one line per request (Common Log Format, target `locus::access`).
        #[arg(long)]
        access_log: bool,
        /// Give requests that come without one an `x-request-id` (a random UUID), forwarded
        /// upstream, logged and on error responses (`on`, `off`); one sent by the client is
        /// kept either way.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        request_id: String,
        /// Error responses name upstream addresses, Services and nodes (for development; at
        /// the edge clients get what went wrong, the log gets the rest).
        #[arg(long)]
        verbose_errors: bool,
        /// Which HTTP/1.1 codec serves plain-text clients: Locus's own (`locus`, leaner) or
        /// hyper's (`hyper`). TLS, HTTP/2 and upgraded (WebSocket) connections are hyper's.
        #[arg(long, default_value = "locus", value_parser = ["locus", "hyper"])]
        http1_server: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Per-request metrics (`on`, `off`); off only to measure their cost.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        metrics: String,
    },
    /// Validate manifests and explain where each Service's traffic will go and why.
    Check {
        /// Manifest files or directories; `-` reads them from standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        identity: IdentityArgs,
        /// How to print the result.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = locus::check::Format::Text)]
        output: locus::check::Format,
        /// Fail (exit 1) on warnings too, not only on errors.
        #[arg(long)]
        strict: bool,
    },
    /// A tiny HTTP backend: `/hostname` returns NAME, other paths echo the request as JSON.
    Echo {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Answer every request with this status (0: normal); `/_echo/fail/NNN` changes it.
        #[arg(long, default_value_t = 0)]
        fail_status: u16,
        /// Simulated work per request, in milliseconds: each request takes this times the
        /// requests in progress when it arrives, so latency grows with load.
        #[arg(long)]
        work_ms: Option<f64>,
        /// Serve HTTPS with this certificate chain (PEM; needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// What each routing policy would do to a topology: per-endpoint load, max/mean, traffic
    /// crossing zones and its cost.
    Plan {
        /// A zone: NAME:GATEWAYS:ENDPOINTS[:LOST], e.g. zone-a:2:2:1; repeat per zone.
        #[arg(long = "zone", required_unless_present = "files", value_parser = locus::plan::parse_zone)]
        zones: Vec<locus_core::capacity::ZoneSpec>,
        /// Or take the topology from manifests: the Service's endpoints per zone (not-ready ones
        /// count as lost) and the fleet from the Gateway's locus.io/fleet or --fleet-service.
        #[arg(
            short = 'f',
            long = "filename",
            conflicts_with = "zones",
            requires = "service"
        )]
        files: Vec<PathBuf>,
        /// With -f: the Service to plan (`namespace/name`).
        #[arg(long, value_parser = parse_gateway)]
        service: Option<ObjKey>,
        /// With -f: the Service in front of the gateway replicas, when no Gateway has a fleet.
        #[arg(long, value_parser = parse_gateway)]
        fleet_service: Option<ObjKey>,
        /// Each zone's share of the incoming traffic when it is not in proportion to its
        /// gateways (`zone-a=2,zone-b=1`); adds the load-aware spill row.
        #[arg(long)]
        traffic: Option<String>,
        #[arg(long, default_value_t = 1000.0)]
        requests_per_second: f64,
        /// Bytes per request that would cross a zone (request plus response).
        #[arg(long, default_value_t = 10_240.0)]
        bytes_per_request: f64,
        #[arg(long, default_value_t = locus::metrics::DEFAULT_COST_CROSS_ZONE)]
        cost_per_gb: f64,
        #[arg(long, value_enum, default_value_t = PlanFormat::Table)]
        format: PlanFormat,
    },
    /// Reproduce the agentgateway locality walkthrough on 127.0.0.1 and print the outcome.
    Demo {
        /// Keep the gateway and backends running afterwards.
        #[arg(long)]
        serve: bool,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The runtime: with one worker, a single-threaded runtime (no work-stealing queues, no
/// cross-thread wakeups: the figure to compare with one nginx worker or one HAProxy thread);
/// otherwise a multi-threaded one with `workers` threads (default: the number of cores).
/// Upstream connections are pooled per thread either way.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            files,
            identity,
            output,
            strict,
        } => {
            let outcome = locus::check::run(&files, &identity.config(), output, strict);
            print!("{}", outcome.stdout);
            eprint!("{}", outcome.stderr);
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "locus", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Plan {
            zones,
            files,
            service,
            fleet_service,
            traffic,
            requests_per_second,
            bytes_per_request,
            cost_per_gb,
            format,
        } => {
            let zones = match (&service, files.is_empty()) {
                (Some(svc), false) => {
                    match locus::plan::zones_from_manifests(&files, svc, fleet_service.as_ref()) {
                        Ok(z) => z,
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                _ => zones,
            };
            let mut zones = zones;
            if let Some(t) = &traffic {
                if let Err(e) = locus::plan::set_traffic(&mut zones, t) {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let input = locus::plan::PlanInput {
                zones,
                requests_per_second,
                bytes_per_request,
                cost_per_gb,
            };
            if let (Some(svc), PlanFormat::Table) = (&service, &format) {
                if let Some(note) = locus::plan::clusters_by_zone(&files, svc, None) {
                    print!("{note}");
                }
            }
            print!(
                "{}",
                match format {
                    PlanFormat::Table => locus::plan::table(&input),
                    PlanFormat::Json => locus::plan::json(&input),
                    PlanFormat::Svg => locus::plan::svg(&input),
                }
            );
            ExitCode::SUCCESS
        }
        Command::Echo {
            name,
            listen,
            fail_status,
            work_ms,
            tls_cert,
            tls_key,
        } => {
            init_logging(cli.log_format, "info");
            let rt = runtime(Some(1)).expect("tokio runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: cannot listen on {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let addr = listener.local_addr().expect("bound socket has an address");
                println!("listening addr={addr}");
                let work =
                    work_ms.map(|ms| std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0));
                let tls = match (&tls_cert, &tls_key) {
                    (Some(cert), Some(key)) => match locus::echo::tls_config(cert, key) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("error: {e:#}");
                            return ExitCode::FAILURE;
                        }
                    },
                    _ => None,
                };
                locus::echo::serve_with(listener, Arc::from(name), fail_status, work, tls).await;
                ExitCode::SUCCESS
            })
        }
        Command::Demo { serve } => {
            // The demo's output is its table; logs only for problems unless RUST_LOG says so.
            // Ejections are part of the story the tables tell; they are not logged over them.
            init_logging(cli.log_format, "warn,locus::proxy::outcome=error");
            let rt = runtime(None).expect("tokio runtime");
            match rt.block_on(locus::demo::run(serve)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            files,
            kubernetes,
            kubeconfig,
            namespace,
            gateway_class,
            no_status,
            remote_clusters,
            remote_secret_namespace,
            identity,
            gateway,
            bind,
            east_west_port,
            ephemeral_ports,
            privileged_port_offset,
            workers,
            threading,
            poll_ms,
            admin,
            probe_addr,
            drain_delay_ms,
            drain_timeout_ms,
            cost_per_gb_cross_zone,
            cost_per_gb_cross_region,
            imbalance_warn_factor,
            load_spill_interval_ms,
            access_log,
            request_id,
            verbose_errors,
            http1_server,
            limits,
            metrics,
        } => {
            // `-f -`: standard input, read once and kept as a file for reloads.
            let (files, _stdin_copy) = match locus::resources::stdin_to_file(files) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: cannot read manifests from standard input: {e}");
                    return ExitCode::FAILURE;
                }
            };
            locus::metrics::REQUEST_METRICS
                .store(metrics == "on", std::sync::atomic::Ordering::Relaxed);
            locus::proxy::ACCESS_LOG.store(access_log, std::sync::atomic::Ordering::Relaxed);
            init_logging(cli.log_format, "info");
            let workers = workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let data_plane = match locus::data_plane::DataPlane::start(workers, threading) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: cannot start {workers} worker threads: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Only the handles go into the control plane's future: the data plane itself (a
            // shared runtime) must be dropped outside any runtime, after `block_on` returns.
            let workers_handles = data_plane.handles();
            // The control plane: the snapshot writer, discovery, health checks, admin API.
            let rt = runtime(Some(1)).expect("tokio runtime");
            rt.block_on(async move {
                let gw = Gateway::new(GatewayOptions {
                    data_plane: Some(workers_handles),
                    limits: limits.limits(),
                    answers: locus::proxy::Answers {
                        request_ids: request_id == "on",
                        verbose_errors,
                        own_http1: http1_server == "locus",
                    },
                    identity: identity.config(),
                    selector: match (gateway, kubernetes) {
                        (Some(g), _) => GatewaySelector::One(g),
                        (None, true) => GatewaySelector::Class(gateway_class),
                        (None, false) => GatewaySelector::All,
                    },
                    bind,
                    east_west_port,
                    ephemeral_ports,
                    privileged_port_offset,
                    events_to_stdout: true,
                    cost_per_gb_cross_zone,
                    cost_per_gb_cross_region,
                    imbalance_warn: imbalance_warn_factor,
                    load_spill_interval: std::time::Duration::from_millis(load_spill_interval_ms),
                });
                for (flag, value, exposure) in [
                    ("--admin", &admin, locus::admin::Exposure::All),
                    ("--probe-addr", &probe_addr, locus::admin::Exposure::Probes),
                ] {
                    if matches!(value.as_str(), "off" | "none") {
                        continue;
                    }
                    let addr: SocketAddr = match value.parse() {
                        Ok(a) => a,
                        Err(_) => {
                            eprintln!("error: {flag} {value:?} is not an address (e.g. 127.0.0.1:15000) or off");
                            return ExitCode::FAILURE;
                        }
                    };
                    match locus::admin::start(addr, gw.clone(), exposure).await {
                        Ok(bound) => {
                            let what = if exposure == locus::admin::Exposure::All { "admin" } else { "probe" };
                            println!("{what} addr={bound}");
                            tracing::info!(%bound, "{what} API listening");
                        }
                        Err(e) => {
                            eprintln!("error: cannot listen on {addr} for {flag}: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                let drain = |gw: Arc<Gateway>| async move {
                    tokio::select! {
                        _ = gw.drain(
                            std::time::Duration::from_millis(drain_delay_ms),
                            std::time::Duration::from_millis(drain_timeout_ms),
                        ) => {}
                        _ = shutdown_signal() => tracing::warn!("second signal: exiting at once"),
                    }
                };
                if kubernetes {
                    // The Lease lives in the pod's namespace (POD_NAMESPACE, set by the
                    // Deployment), else the watched one, else `default`.
                    let lease_ns = std::env::var("POD_NAMESPACE")
                        .ok()
                        .or_else(|| namespace.clone())
                        .unwrap_or_else(|| "default".to_owned());
                    let opts = locus::discovery::cluster::ClusterOptions {
                        kubeconfig,
                        namespace,
                        write_status: !no_status,
                        address_service: identity.fleet_service.clone(),
                        lease: Some((lease_ns.clone(), "locus-status-writer".to_owned())),
                        remote_clusters,
                        remote_secret_namespace: remote_secret_namespace.unwrap_or(lease_ns),
                        local_cluster: identity.cluster.clone(),
                    };
                    tokio::select! {
                        r = locus::discovery::cluster::run(gw.clone(), opts) => {
                            if let Err(e) = r {
                                eprintln!("error: Kubernetes discovery: {e:#}");
                                return ExitCode::FAILURE;
                            }
                        }
                        _ = shutdown_signal() => {}
                    }
                    drain(gw).await;
                    return ExitCode::SUCCESS;
                }
                let baseline = files::fingerprint(&files);
                if let Err(e) = files::load_once(&gw, &files).await {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                tokio::spawn(files::watch(
                    gw.clone(),
                    files,
                    std::time::Duration::from_millis(poll_ms.max(10)),
                    baseline,
                ));
                shutdown_signal().await;
                drain(gw).await;
                ExitCode::SUCCESS
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What clients and endpoints may hold (`locus serve`); defaults in docs/configuration.md.
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// A request head must arrive whole within this many milliseconds, else the connection is
    /// closed (slowloris); also how long an idle keep-alive connection stays open. 0: never.
    #[arg(long, default_value_t = 30_000)]
    header_read_timeout_ms: u64,
    /// A client connection that starts no request for this many milliseconds is closed
    /// (GOAWAY on h2; its open streams finish). 0: never.
    #[arg(long, default_value_t = 300_000)]
    idle_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(8192..))]
    max_request_head_bytes: u64,
    /// Most header fields in a request (at most 1,024); more gets 431.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_request_headers: u64,
    /// Longest request target (path and query) in bytes; longer gets 414.
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(256..))]
    max_uri_bytes: u64,
    /// A request body that sends nothing for this many milliseconds gets 408. 0: never.
    #[arg(long, default_value_t = 60_000)]
    body_idle_timeout_ms: u64,
    /// Connections each listener port holds at once; beyond it new ones are closed at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Concurrent streams per HTTP/2 client connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_streams: u32,
    /// How long connecting to an endpoint may take, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_ms: u64,
    /// How long an endpoint has to answer (response head) when the route sets no `timeouts`,
    /// in milliseconds; 504 beyond. 0: wait forever.
    #[arg(long, default_value_t = 15_000)]
    request_timeout_ms: u64,
    /// Largest response head read from an endpoint, in bytes; larger is a 502.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    max_response_head_bytes: u64,
    /// Normalize request paths before matching and forwarding (dot segments, repeated
    /// slashes, escaped unreserved characters); `off` only for backends that need raw paths.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    normalize_paths: String,
    /// What a normalized path does with an encoded `/` or `\` (`%2F`, `%5C`): `reject` (400)
    /// or `keep` (matched and forwarded still encoded).
    #[arg(long, default_value = "reject", value_parser = ["reject", "keep"])]
    escaped_slashes: String,
}

impl LimitArgs {
    fn limits(&self) -> locus::proxy::Limits {
        let ms = |v: u64| (v > 0).then(|| std::time::Duration::from_millis(v));
        locus::proxy::Limits {
            header_read_timeout: ms(self.header_read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            max_request_head: self.max_request_head_bytes as usize,
            max_headers: self.max_request_headers as usize,
            max_uri: self.max_uri_bytes as usize,
            body_idle_timeout: ms(self.body_idle_timeout_ms),
            max_connections: self.max_connections as usize,
            h2_max_streams: self.h2_max_streams,
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            request_timeout: ms(self.request_timeout_ms),
            max_response_head: self.max_response_head_bytes as usize,
            normalize_paths: self.normalize_paths == "on",
            escaped_slashes: if self.escaped_slashes == "keep" {
                locus_core::path::EscapedSlashes::Keep
            } else {
                locus_core::path::EscapedSlashes::Reject
            },
        }
    }
}
