//! Endpoints: one address a Service's traffic can be sent to, with where it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::locality::Locality;

/// What the source of truth says about an endpoint (EndpointSlice conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// `ready` true or unset (Kubernetes: "nil should be interpreted as ready").
    Ready,
    /// Terminating but still `serving`: used only when a Service has no ready endpoint at all,
    /// as kube-proxy does since Kubernetes 1.26, so a rollout's last pods still answer.
    TerminatingServing,
    /// `ready: false` and not serving: never sent traffic.
    NotReady,
}

/// One endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub locality: Locality,
    /// The Kubernetes node the endpoint runs on, when known (EndpointSlice `nodeName`).
    pub node: Option<Arc<str>>,
    /// Relative weight (WorkloadEntry `weight`); at least 1.
    pub weight: u32,
    pub state: EndpointState,
    /// A human name: `WorkloadEntry ns/name` or `EndpointSlice ns/name`; for logs and `check`.
    pub origin: Arc<str>,
    /// Labels (WorkloadEntry labels), for `failoverPriority`.
    pub labels: Option<Arc<BTreeMap<String, String>>>,
    /// EndpointSlice `hints.forZones`, for topology-aware routing.
    pub zone_hints: Option<Arc<[String]>>,
    /// The cluster the endpoint runs in, when it is not the gateway's own: an MCS
    /// EndpointSlice's `multicluster.kubernetes.io/source-cluster`, a WorkloadEntry's
    /// `topology.istio.io/cluster`, or the remote cluster it was read from. `None`: the
    /// gateway's own cluster (a plain EndpointSlice).
    pub cluster: Option<Arc<str>>,
    /// Set when the endpoint stands for workloads of another network, reached through that
    /// network's east-west gateway at `addr`: the destination (`namespace/name:port`) the hop
    /// header names, so the remote gateway sends the request to its own endpoints.
    pub via: Option<Arc<str>>,
}

impl Endpoint {
    /// An endpoint at `addr` in `locality`, ready, weight 1.
    pub fn new(addr: SocketAddr, locality: Locality) -> Self {
        Endpoint {
            addr,
            locality,
            node: None,
            weight: 1,
            state: EndpointState::Ready,
            origin: Arc::from(addr.to_string()),
            labels: None,
            zone_hints: None,
            cluster: None,
            via: None,
        }
    }

    pub fn with_cluster(mut self, cluster: &str) -> Self {
        self.cluster = Some(Arc::from(cluster));
        self
    }

    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(Arc::from(node));
        self
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    pub fn with_state(mut self, state: EndpointState) -> Self {
        self.state = state;
        self
    }
}
