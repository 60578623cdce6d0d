//! The Gloo Mesh locality failover walkthrough (`gloo-mesh-locality-failover.txt`), on
//! 127.0.0.1: two clusters as two manifest sets (objects of the remote one labelled
//! `topology.istio.io/cluster: remote-cluster`), the seed's VirtualDestination and
//! TrafficPolicy as it writes them, reviews v1 and v2 in mgmt-cluster (us-east-1/us-east-1a)
//! and v3 in remote-cluster (us-east-2/us-east-2b), and a gateway in mgmt-cluster.
//!
//! The seed's `sleep 20h` patch rolls out pods whose web server never starts: new addresses
//! that refuse connections. Its restore rolls out pods that serve. Each step rewrites the
//! EndpointSlices the way that rollout would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use super::{get_hostname, write_atomic};
use crate::discovery::files;
use crate::gateway::{Event, Gateway, GatewayOptions};
use crate::identity::IdentityConfig;

pub const LOCAL_CLUSTER: &str = "mgmt-cluster";
pub const LOCAL_NODE: &str = "mgmt-cluster-control-plane";

/// The seed's VirtualDestination and TrafficPolicy, as the seed writes them.
pub const SEED_MANIFESTS: &str = r#"apiVersion: networking.enterprise.mesh.gloo.solo.io/v1beta1
kind: VirtualDestination
metadata:
  name: bookinfo-global
  namespace: gloo-mesh
spec:
  hostname: reviews.global
  port:
    number: 9080
    protocol: http
  localized:
    outlierDetection:
      consecutiveErrors: 1
      maxEjectionPercent: 100
      interval: 5s
      baseEjectionTime: 120s
    destinationSelectors:
    - kubeServiceMatcher:
        labels:
          app: reviews
  virtualMesh:
    name: virtual-mesh
    namespace: gloo-mesh
---
apiVersion: networking.mesh.gloo.solo.io/v1
kind: TrafficPolicy
metadata:
  name: reviews-shift-failover
  namespace: bookinfo
spec:
  destinationSelector:
  - kubeServiceRefs:
      services:
      - clusterName: mgmt-cluster
        name: reviews
        namespace: bookinfo
  policy:
    trafficShift:
      destinations:
      - virtualDestination:
          name: bookinfo-global
          namespace: gloo-mesh
"#;

/// Both clusters' view: the gateway and its route to `reviews` (the productpage's calls), the
/// Nodes with the seed's region and zone labels, the `reviews` Service in each cluster, and
/// its pods: v1 and v2 in mgmt-cluster, v3 in remote-cluster.
pub fn cluster_manifests(v1: SocketAddr, v2: SocketAddr, v3: SocketAddr) -> String {
    let slice = |name: &str, remote: bool, node: &str, addr: SocketAddr| {
        let label = if remote {
            ", topology.istio.io/cluster: remote-cluster"
        } else {
            ""
        };
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: bookinfo\n  labels: {{kubernetes.io/service-name: reviews{label}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"], nodeName: {node}}}\n",
            addr.port(),
            addr.ip()
        )
    };
    let fixed = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: bookinfo}
spec:
  gatewayClassName: locus
  listeners: [{name: http, protocol: HTTP, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{name: gateway}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: v1
kind: Node
metadata:
  name: mgmt-cluster-control-plane
  labels: {topology.kubernetes.io/region: us-east-1, topology.kubernetes.io/zone: us-east-1a}
---
apiVersion: v1
kind: Node
metadata:
  name: remote-cluster-control-plane
  labels: {topology.istio.io/cluster: remote-cluster, topology.kubernetes.io/region: us-east-2, topology.kubernetes.io/zone: us-east-2b}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo, labels: {app: reviews}}
spec:
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo, labels: {app: reviews, topology.istio.io/cluster: remote-cluster}}
spec:
  ports: [{name: http, port: 9080}]
"#;
    [
        fixed.to_owned(),
        slice("reviews-v1", false, LOCAL_NODE, v1),
        slice("reviews-v2", false, LOCAL_NODE, v2),
        slice("reviews-v3", true, "remote-cluster-control-plane", v3),
    ]
    .concat()
}

/// A pod: an echo backend named `name`, until its task is aborted.
async fn pod(name: &str) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((
        addr,
        tokio::spawn(crate::echo::serve(listener, Arc::from(name))),
    ))
}

/// An address that refuses connections: a pod whose server never started.
async fn silent_pod() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?)
}

/// Waits until the VirtualDestination routes over exactly `want`.
async fn wait_for_endpoints(
    gw: &Gateway,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    want: &[SocketAddr],
) -> anyhow::Result<()> {
    let mut want = want.to_vec();
    want.sort();
    super::wait_until(gw, events, |table| {
        table
            .services
            .values()
            .find(|t| {
                t.key
                    .name
                    .ends_with(crate::model::multicluster::VIRTUAL_DESTINATION_SUFFIX)
            })
            .is_some_and(|t| {
                let mut now: Vec<SocketAddr> =
                    t.snapshot.load().endpoints.iter().map(|e| e.addr).collect();
                now.sort();
                now == want
            })
    })
    .await
}

/// Plays the walkthrough and prints each step beside the seed's stated outcome.
pub async fn run() -> anyhow::Result<()> {
    const REQUESTS: usize = 50;
    let dir = tempfile::Builder::new()
        .prefix("locus-demo-gloo-")
        .tempdir()?;
    let clusters = dir.path().join("clusters.yaml");
    let (v1, v1_task) = pod("reviews-v1").await?;
    let (v2, v2_task) = pod("reviews-v2").await?;
    let (v3, _v3_task) = pod("reviews-v3").await?;
    write_atomic(&dir.path().join("seed.yaml"), SEED_MANIFESTS)?;
    write_atomic(&clusters, &cluster_manifests(v1, v2, v3))?;
    let gw = Gateway::new(GatewayOptions {
        identity: IdentityConfig {
            cluster: Some(LOCAL_CLUSTER.into()),
            node: Some(LOCAL_NODE.into()),
            ..Default::default()
        },
        bind: [127, 0, 0, 1].into(),
        ephemeral_ports: true,
        answers: crate::proxy::Answers {
            verbose_errors: true,
            ..Default::default()
        },
        ..GatewayOptions::default()
    });
    let mut events = gw.subscribe();
    let paths = vec![dir.path().to_owned()];
    let baseline = files::fingerprint(&paths);
    files::load_once(&gw, &paths)
        .await
        .map_err(anyhow::Error::msg)
        .context("loading the Gloo Mesh demo manifests")?;
    let watcher = tokio::spawn(files::watch(
        gw.clone(),
        paths,
        files::DEFAULT_POLL,
        baseline,
    ));
    let addr = *gw
        .listener_addrs()
        .get(&9080)
        .context("the demo gateway has no listener for port 9080")?;
    println!("\nThe Gloo Mesh locality failover walkthrough: two clusters, the seed's VirtualDestination and TrafficPolicy");
    println!("  gateway         cluster {LOCAL_CLUSTER}, node {LOCAL_NODE} (us-east-1/us-east-1a), listener :9080 at {addr}");
    println!("  reviews-v1, v2  cluster {LOCAL_CLUSTER}   us-east-1/us-east-1a");
    println!("  reviews-v3      cluster remote-cluster us-east-2/us-east-2b");
    println!("  {REQUESTS} requests per step, one every 20 ms\n");
    println!(
        "#  {:<52} {:>6} {:>6} {:>6} {:>7}   {:<44} match",
        "step", "v1", "v2", "v3", "errors", "seed's outcome"
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut all_ok = true;
    // (title, the seed's outcome, endpoints to wait for, who may answer)
    let mut step = 0;
    let mut play = |title: &str, expect: &str, got: BTreeMap<String, usize>, local: bool| {
        step += 1;
        let n = |k: &str| got.get(k).copied().unwrap_or(0);
        let errors = REQUESTS - n("reviews-v1") - n("reviews-v2") - n("reviews-v3");
        let ok = errors == 0
            && if local {
                n("reviews-v3") == 0 && n("reviews-v1") > 0 && n("reviews-v2") > 0
            } else {
                n("reviews-v3") == REQUESTS
            };
        all_ok &= ok;
        println!(
            "{step:<2} {title:<52} {:>6} {:>6} {:>6} {errors:>7}   {expect:<44} {}",
            n("reviews-v1"),
            n("reviews-v2"),
            n("reviews-v3"),
            if ok { "yes" } else { "NO" }
        );
    };
    let send = |client: &Client<_, Empty<Bytes>>| {
        let client = client.clone();
        async move {
            let mut got: BTreeMap<String, usize> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..REQUESTS {
                tick.tick().await;
                let (who, _) = get_hostname(&client, addr).await?;
                *got.entry(who).or_default() += 1;
            }
            anyhow::Ok(got)
        }
    };

    wait_for_endpoints(&gw, &mut events, &[v1, v2, v3]).await?;
    play(
        "apply VirtualDestination + TrafficPolicy",
        "no stars or black stars: v1/v2, local cluster",
        send(&client).await?,
        true,
    );

    v1_task.abort();
    v2_task.abort();
    let (dead1, dead2) = (silent_pod().await?, silent_pod().await?);
    write_atomic(&clusters, &cluster_manifests(dead1, dead2, v3))?;
    wait_for_endpoints(&gw, &mut events, &[dead1, dead2, v3]).await?;
    play(
        "patch reviews-v1, v2: sleep 20h (refuse connections)",
        "red stars: v3 in remote-cluster",
        send(&client).await?,
        false,
    );

    let (v1, _v1_task) = pod("reviews-v1").await?;
    let (v2, _v2_task) = pod("reviews-v2").await?;
    write_atomic(&clusters, &cluster_manifests(v1, v2, v3))?;
    wait_for_endpoints(&gw, &mut events, &[v1, v2, v3]).await?;
    play(
        "restore reviews-v1, v2 (remove the command)",
        "no stars or black stars: v1/v2 again",
        send(&client).await?,
        true,
    );
    watcher.abort();
    gw.shutdown();
    if !all_ok {
        bail!("the Gloo Mesh walkthrough did not reproduce the seed's outcomes");
    }
    println!("\nEvery step matches the seed: the dead pods were each ejected after one error (consecutiveErrors: 1)\nand retried on v3, so no client saw an error; the restored pods are new addresses, so they serve at once.");
    Ok(())
}
