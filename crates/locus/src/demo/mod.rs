//! `locus demo`: the agentgateway locality walkthrough, reproduced on 127.0.0.1, then the
//! Gloo Mesh multi-cluster failover walkthrough ([`gloo`]).
//!
//! Three echo backends stand for the seed's pods, WorkloadEntries give them their localities,
//! and a gateway in `region/zone` serves them from manifest files in a temporary directory.
//! Each step changes the files the way the seed changes the cluster (`kubectl apply`,
//! `kubectl delete workloadentry`), waits for the hot reload to take effect, sends 20 requests
//! and counts who answered.
//!
//! Then the blog's scenario A (2 gateways in zone-a, 1 in zone-b, one endpoint per zone):
//! three gateway replicas in this process, the same requests through each, with priority
//! locality and with capacity-aware zone routing, beside what `locus plan` predicts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use locus_core::{Distribution, Locality, RoutingPolicy};
use tokio::net::TcpListener;

pub mod gloo;
mod https;

use crate::discovery::files;
use crate::gateway::{Event, Gateway, GatewayOptions};
use crate::identity::IdentityConfig;
use crate::routing::RouteTable;

pub const NAMESPACE: &str = "locus-demo";
pub const HOST: &str = "locality.test";
pub const GATEWAY_LOCALITY: &str = "region/zone";
pub const GATEWAY_NODE: &str = "gateway-node";

/// The seed's three backends: name, WorkloadEntry name, locality.
pub const BACKENDS: [(&str, &str, &str); 3] = [
    ("backend-zone-a", "we-zone-a", "region/zone"),
    ("backend-zone-b", "we-zone-b", "region/other-zone"),
    ("backend-region-b", "we-region-b", "other-region/zone"),
];

/// Gateway and HTTPRoute, as in the seed (class `locus`).
pub fn gateway_manifest() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gateway
  namespace: {NAMESPACE}
spec:
  gatewayClassName: locus
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: locality-route
  namespace: {NAMESPACE}
spec:
  parentRefs:
  - name: gateway
  hostnames:
  - {HOST}
  rules:
  - backendRefs:
    - name: locality-svc
      port: 80
"#
    )
}

/// The Service, with an optional extra spec line (`trafficDistribution: PreferClose`,
/// `internalTrafficPolicy: Local`).
pub fn service_manifest(extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("  {extra}\n")
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: locality-svc
  namespace: {NAMESPACE}
spec:
  selector:
    app: locality-svc-workloadentry
  ports:
  - name: http
    port: 80
    targetPort: 80
    protocol: TCP
{extra}"#
    )
}

/// A WorkloadEntry for a backend listening on 127.0.0.1:`port`.
pub fn workload_entry_manifest(name: &str, locality: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels:
    app: locality-svc-workloadentry
spec:
  address: 127.0.0.1
  locality: "{locality}"
  ports:
    http: {port}
"#
    )
}

/// Writes a file atomically (write then rename), so the watcher never reads half of it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

const PREFER_CLOSE: RoutingPolicy = RoutingPolicy {
    distribution: Distribution::PreferClose,
    strict_local: false,
};
const STRICT: RoutingPolicy = RoutingPolicy {
    distribution: Distribution::Any,
    strict_local: true,
};

struct Step {
    title: &'static str,
    expect: &'static str,
    /// Files to write (name, text) and to delete, like the seed's kubectl commands.
    write: Vec<(String, String)>,
    delete: Vec<String>,
    /// The state the reload must reach before requests are sent: (policy, endpoints).
    want: (RoutingPolicy, usize),
    /// Expected counts: zone-a, zone-b, region-b, 503.
    counts: [usize; 4],
}

fn we_file(we: &str) -> String {
    format!("{we}.yaml")
}

fn service_state(table: &RouteTable) -> Option<(RoutingPolicy, usize)> {
    table.services.values().next().map(|t| {
        let s = t.snapshot.load();
        (s.policy, s.endpoints.len())
    })
}

async fn wait_for_state(
    gw: &Gateway,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    want: (RoutingPolicy, usize),
) -> anyhow::Result<()> {
    wait_until(gw, events, |table| service_state(table) == Some(want)).await
}

/// Waits, reload by reload, until the table in force satisfies `done` (10 s at most; a
/// rejected manifest ends the wait with its error).
async fn wait_until(
    gw: &Gateway,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    done: impl Fn(&RouteTable) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if done(&gw.table()) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Rejected { error })) => {
                bail!("the gateway rejected a demo manifest: {error}")
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the gateway stopped"),
            Err(_) => bail!("the configuration did not reload within 10 s"),
        }
    }
}

/// Runs the walkthrough; with `serve`, keeps everything running afterwards.
pub async fn run(serve: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("locus-demo-").tempdir()?;
    let dir_path: PathBuf = dir.path().to_owned();

    let mut ports = Vec::new();
    for (name, _, _) in BACKENDS {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(crate::echo::serve(listener, Arc::from(name)));
    }
    let write = |name: &str, text: &str| write_atomic(&dir_path.join(name), text);
    write("gateway.yaml", &gateway_manifest())?;
    write("service.yaml", &service_manifest(""))?;
    for ((_, we, locality), port) in BACKENDS.iter().zip(&ports) {
        write(&we_file(we), &workload_entry_manifest(we, locality, *port))?;
    }

    let gw = Gateway::new(GatewayOptions {
        identity: IdentityConfig {
            locality: Some(Locality::parse(GATEWAY_LOCALITY)?),
            node: Some(GATEWAY_NODE.into()),
            fleet_service: None,
            cluster: None,
            network: None,
        },
        bind: [127, 0, 0, 1].into(),
        ephemeral_ports: true,
        // A demo on loopback: error bodies tell the whole story (at the edge they never name
        // nodes, Services or addresses).
        answers: crate::proxy::Answers {
            verbose_errors: true,
            ..Default::default()
        },
        ..GatewayOptions::default()
    });
    let mut events = gw.subscribe();
    let paths = vec![dir_path.clone()];
    let baseline = files::fingerprint(&paths);
    files::load_once(&gw, &paths)
        .await
        .map_err(anyhow::Error::msg)
        .context("loading the demo manifests")?;
    tokio::spawn(files::watch(
        gw.clone(),
        paths,
        files::DEFAULT_POLL,
        baseline,
    ));
    let addr = *gw
        .listener_addrs()
        .get(&80)
        .context("the demo gateway has no listener for port 80")?;

    println!("Locus demo: the agentgateway locality walkthrough, on 127.0.0.1");
    println!("  gateway   locality {GATEWAY_LOCALITY}, node {GATEWAY_NODE}, listener :80 bound at {addr}");
    for ((name, we, locality), port) in BACKENDS.iter().zip(&ports) {
        println!("  {name:<17} 127.0.0.1:{port:<5}  {we:<12} locality {locality}");
    }
    println!("  manifests {}\n", dir_path.display());

    let restore: Vec<(String, String)> = BACKENDS
        .iter()
        .zip(&ports)
        .map(|((_, we, locality), port)| {
            (we_file(we), workload_entry_manifest(we, locality, *port))
        })
        .collect();
    let steps = [
        Step {
            title: "baseline (no trafficDistribution)",
            expect: "spread over all three",
            write: vec![],
            delete: vec![],
            want: (RoutingPolicy::default(), 3),
            counts: [7, 7, 6, 0],
        },
        Step {
            title: "trafficDistribution: PreferClose",
            expect: "all to zone-a (same zone)",
            write: vec![(
                "service.yaml".into(),
                service_manifest("trafficDistribution: PreferClose"),
            )],
            delete: vec![],
            want: (PREFER_CLOSE, 3),
            counts: [20, 0, 0, 0],
        },
        Step {
            title: "kubectl delete workloadentry we-zone-a",
            expect: "spill to zone-b (same region)",
            write: vec![],
            delete: vec![we_file("we-zone-a")],
            want: (PREFER_CLOSE, 2),
            counts: [0, 20, 0, 0],
        },
        Step {
            title: "kubectl delete workloadentry we-zone-b",
            expect: "spill to region-b (other region)",
            write: vec![],
            delete: vec![we_file("we-zone-b")],
            want: (PREFER_CLOSE, 1),
            counts: [0, 0, 20, 0],
        },
        Step {
            title: "restore entries; internalTrafficPolicy: Local",
            expect: "503: nothing on the gateway's node",
            write: restore
                .into_iter()
                .chain([(
                    "service.yaml".to_owned(),
                    service_manifest("internalTrafficPolicy: Local"),
                )])
                .collect(),
            delete: vec![],
            want: (STRICT, 3),
            counts: [0, 0, 0, 20],
        },
    ];

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    println!(
        "#  {:<46} {:>7} {:>7} {:>9} {:>4}   {:<36} match",
        "step", "zone-a", "zone-b", "region-b", "503", "seed's outcome"
    );
    let mut all_ok = true;
    let mut last_503_body = String::new();
    for (i, step) in steps.iter().enumerate() {
        for (name, text) in &step.write {
            write(name, text)?;
        }
        for name in &step.delete {
            std::fs::remove_file(dir_path.join(name))?;
        }
        wait_for_state(&gw, &mut events, step.want).await?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..20 {
            let (label, body) = get_hostname(&client, addr).await?;
            if label == "503" {
                last_503_body = body;
            }
            *counts.entry(label).or_default() += 1;
        }
        let got = [
            counts.get("backend-zone-a").copied().unwrap_or(0),
            counts.get("backend-zone-b").copied().unwrap_or(0),
            counts.get("backend-region-b").copied().unwrap_or(0),
            counts.get("503").copied().unwrap_or(0),
        ];
        let other: usize = 20 - got.iter().sum::<usize>();
        // The baseline only has to spread: every backend answers, none takes everything.
        let ok = if i == 0 {
            got[..3].iter().all(|&c| c > 0) && other == 0
        } else {
            got == step.counts
        };
        all_ok &= ok;
        println!(
            "{:<2} {:<46} {:>7} {:>7} {:>9} {:>4}   {:<36} {}",
            i + 1,
            step.title,
            got[0],
            got[1],
            got[2],
            got[3],
            step.expect,
            if ok { "yes" } else { "NO" }
        );
        if other > 0 {
            println!("   ({other} requests got another answer: {counts:?})");
        }
    }
    if !last_503_body.is_empty() {
        println!("\nThe 503 body says why: {}", last_503_body.trim());
    }
    if !all_ok {
        bail!("the walkthrough did not reproduce the seed's outcomes");
    }
    println!("\nEvery step matches the seed.");
    gloo::run().await?;
    scenario_a(&client).await?;
    https::run(&gw, &mut events, &dir_path).await?;
    if serve {
        println!(
            "\nStill serving. Try:\n  curl -H 'host: {HOST}' http://{addr}/hostname\n\
             Edit the manifests in {} and watch the routing change; Ctrl-C to stop.",
            dir_path.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(dir);
    Ok(())
}

/// Scenario A with real gateway replicas: priority locality overloads zone-a's endpoint,
/// capacity-aware routing does not, and both match `locus plan`.
async fn scenario_a(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
) -> anyhow::Result<()> {
    use locus_core::capacity::{plan, PlanPolicy, ZoneSpec};
    const PER_GATEWAY: usize = 300;
    let dir = tempfile::Builder::new().prefix("locus-demo-a-").tempdir()?;
    let mut entries = String::new();
    for (name, zone) in [("a-1", "zone-a"), ("b-1", "zone-b")] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(crate::echo::serve(listener, Arc::from(name)));
        entries.push_str(&format!(
            "---\n{}",
            workload_entry_manifest(&format!("we-{name}"), &format!("r/{zone}"), port)
        ));
    }
    let gateway = gateway_manifest().replace(
        "  namespace: locus-demo\nspec:\n  gatewayClassName",
        "  namespace: locus-demo\n  annotations: {locus.io/fleet: \"zone-a=2,zone-b=1\"}\nspec:\n  gatewayClassName",
    );
    let zones = [
        ZoneSpec::new("zone-a", 2.0, 1, 1),
        ZoneSpec::new("zone-b", 1.0, 1, 1),
    ];
    println!(
        "\nLocality without overload, the blog's scenario A: gateways zone-a x2 and zone-b x1, one endpoint per zone,\n{PER_GATEWAY} requests through each gateway:"
    );
    println!(
        "   {:<44} {:>9} {:>9} {:>9} {:>11}   {:<22} match",
        "policy", "zone-a", "zone-b", "max/mean", "cross-zone", "locus plan predicts"
    );
    let mut all_ok = true;
    for (title, annotation, policy) in [
        ("priority locality (PreferClose)", "", PlanPolicy::Priority),
        (
            "capacity-aware (locus.io/zone-balance)",
            "  annotations: {locus.io/zone-balance: capacity}\n",
            PlanPolicy::CapacityAware,
        ),
    ] {
        let service = service_manifest("trafficDistribution: PreferClose").replace(
            "  namespace: locus-demo\nspec:",
            &format!("  namespace: locus-demo\n{annotation}spec:"),
        );
        write_atomic(
            &dir.path().join("all.yaml"),
            &format!("{gateway}---\n{service}{entries}"),
        )?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut cross = 0;
        for zone in ["zone-a", "zone-a", "zone-b"] {
            let gw = Gateway::new(GatewayOptions {
                identity: IdentityConfig {
                    locality: Some(Locality::parse(&format!("r/{zone}"))?),
                    node: None,
                    fleet_service: None,
                    cluster: None,
                    network: None,
                },
                bind: [127, 0, 0, 1].into(),
                ephemeral_ports: true,
                ..GatewayOptions::default()
            });
            files::load_once(&gw, &[dir.path().to_owned()])
                .await
                .map_err(anyhow::Error::msg)
                .context("loading the scenario A manifests")?;
            let addr = *gw
                .listener_addrs()
                .get(&80)
                .context("the scenario A gateway has no listener for port 80")?;
            for _ in 0..PER_GATEWAY {
                let (who, _) = get_hostname(client, addr).await?;
                if !who.starts_with(&zone[5..]) {
                    cross += 1;
                }
                *counts.entry(who).or_default() += 1;
            }
            gw.shutdown();
        }
        let total = (3 * PER_GATEWAY) as f64;
        let share = |who: &str| counts.get(who).copied().unwrap_or(0) as f64 / total;
        let (a, b) = (share("a-1"), share("b-1"));
        let predicted = plan(&zones, policy);
        let want_a = predicted.shares[0].2;
        let ok = (a - want_a).abs() <= 0.02 && a + b > 0.999;
        all_ok &= ok;
        println!(
            "   {:<44} {:>8.1}% {:>8.1}% {:>9.2} {:>10.1}%   zone-a {:>5.1}%, {:>4.2}     {}",
            title,
            a * 100.0,
            b * 100.0,
            a.max(b) * 2.0,
            cross as f64 / total * 100.0,
            want_a * 100.0,
            predicted.max_over_mean,
            if ok { "yes" } else { "NO" }
        );
    }
    if !all_ok {
        bail!("scenario A did not match locus plan");
    }
    println!(
        "\nCapacity-aware routing keeps the endpoints balanced at the smallest cross-zone share; with\nunequal traffic per gateway, locus.io/load-spill balances by measured load (README)."
    );
    Ok(())
}

/// One request for `/hostname`: the backend's name, or the status code when not 200.
async fn get_hostname(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
) -> anyhow::Result<(String, String)> {
    let req = http::Request::get(format!("http://{addr}/hostname"))
        .header(http::header::HOST, HOST)
        .body(Empty::new())?;
    let resp = client
        .request(req)
        .await
        .context("request to the demo gateway")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status == http::StatusCode::OK {
        Ok((body, String::new()))
    } else {
        Ok((status.as_u16().to_string(), body))
    }
}
