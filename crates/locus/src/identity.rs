//! Where this gateway runs: its locality and node.
//!
//! Resolution order (agentgateway's, plus an explicit flag): `--locality`, else the `LOCALITY`
//! environment variable (clap reads both into one option), else the topology labels of the Node
//! named by `--node` / `NODE_NAME` in the resources. The node name alone also drives
//! `internalTrafficPolicy: Local`.

use locus_core::{GatewayIdentity, Locality};

use crate::model::Model;

/// What the operator told us.
#[derive(Clone, Debug, Default)]
pub struct IdentityConfig {
    /// From `--locality` or `LOCALITY`.
    pub locality: Option<Locality>,
    /// From `--node` or `NODE_NAME`.
    pub node: Option<String>,
    /// From `--cluster` or `CLUSTER_NAME`.
    pub cluster: Option<String>,
    /// From `--network` or `NETWORK`.
    pub network: Option<String>,
    /// `--fleet-service ns/name`: the Service in front of the gateway replicas; its ready
    /// endpoints per zone are the fleet for capacity-aware routing.
    pub fleet_service: Option<crate::model::ObjKey>,
}

/// The identity in force and how it was found.
#[derive(Clone, Debug, Default)]
pub struct ResolvedIdentity {
    pub identity: GatewayIdentity,
    /// Human-readable: where the locality came from.
    pub source: String,
    /// Human-readable: where the cluster name came from (`None`: unknown).
    pub cluster_source: Option<String>,
    pub warnings: Vec<String>,
    /// Gateway replicas per zone, from `fleet_service`.
    pub fleet: Option<std::collections::BTreeMap<String, f64>>,
}

pub fn resolve(cfg: &IdentityConfig, model: &Model) -> ResolvedIdentity {
    let mut warnings = Vec::new();
    let node = cfg.node.clone().filter(|n| !n.is_empty());
    // The Node's labels double as the gateway's own (failoverPriority compares against them).
    let labels = node
        .as_ref()
        .and_then(|n| model.nodes.get(n))
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    let (locality, source) = if let Some(l) = cfg.locality.clone().filter(|l| !l.is_unknown()) {
        (l, "--locality / LOCALITY".to_owned())
    } else if let Some(name) = &node {
        match model.nodes.get(name) {
            Some(n) if !n.locality.is_unknown() => {
                (n.locality.clone(), format!("labels of Node {name}"))
            }
            Some(_) => {
                warnings.push(format!(
                    "Node {name} has no topology.kubernetes.io/region or /zone label, so the gateway's locality is unknown"
                ));
                (
                    Locality::default(),
                    "unknown (Node has no topology labels)".to_owned(),
                )
            }
            None => {
                warnings.push(format!(
                    "Node {name} (from --node / NODE_NAME) is not among the resources, so the gateway's locality is unknown"
                ));
                (Locality::default(), "unknown (Node not found)".to_owned())
            }
        }
    } else {
        (
            Locality::default(),
            "unknown (no --locality, LOCALITY, --node or NODE_NAME)".to_owned(),
        )
    };
    if locality.is_unknown() {
        let users: Vec<String> = model
            .services
            .values()
            .filter(|s| s.policy.distribution.uses_locality() && !s.policy.strict_local)
            .map(|s| format!("{} ({})", s.key, s.policy.distribution.as_str()))
            .collect();
        if !users.is_empty() {
            warnings.push(format!(
                "the gateway's locality is unknown, so locality preferences cannot apply and traffic is spread over every endpoint of: {}. Set --locality region/zone, LOCALITY, or --node with a labelled Node",
                users.join(", ")
            ));
        }
    }
    let (cluster, cluster_source) = match cfg.cluster.clone().filter(|c| !c.is_empty()) {
        Some(c) => (Some(c), Some("--cluster / CLUSTER_NAME".to_owned())),
        None => match &model.cluster {
            Some((c, from)) => (Some(c.clone()), Some(from.clone())),
            None => (None, None),
        },
    };
    if cluster.is_none() {
        let mut remote: Vec<&str> = model
            .services
            .values()
            .flat_map(|s| s.ports.iter().flat_map(|p| &p.endpoints))
            .filter_map(|e| e.cluster.as_deref())
            .collect();
        remote.sort_unstable();
        remote.dedup();
        if !remote.is_empty() {
            warnings.push(format!(
                "endpoints run in clusters {}, but the gateway's own cluster is unknown, so no cluster can be preferred. Set --cluster, CLUSTER_NAME, or the ClusterProperty cluster.clusterset.k8s.io",
                remote.join(", ")
            ));
        }
    }
    let fleet = cfg.fleet_service.as_ref().and_then(|key| {
        let Some(svc) = model.services.get(key) else {
            warnings.push(format!("--fleet-service {key} is not among the resources"));
            return None;
        };
        let mut fleet = std::collections::BTreeMap::new();
        for ep in svc
            .ports
            .first()
            .map(|p| p.endpoints.as_slice())
            .unwrap_or_default()
        {
            if ep.state == locus_core::EndpointState::Ready && !ep.locality.zone.is_empty() {
                *fleet.entry(ep.locality.zone.clone()).or_insert(0.0) += 1.0;
            }
        }
        if fleet.is_empty() {
            warnings.push(format!(
                "--fleet-service {key} has no ready endpoint with a zone; no fleet known"
            ));
            return None;
        }
        Some(fleet)
    });
    ResolvedIdentity {
        identity: GatewayIdentity {
            locality,
            node,
            labels,
            cluster,
        },
        source,
        cluster_source,
        warnings,
        fleet,
    }
}
