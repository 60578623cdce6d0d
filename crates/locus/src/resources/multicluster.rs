//! Kinds that describe more than one cluster: the Kubernetes Multi-Cluster Services API
//! (KEP-1645: `ServiceImport`, `ClusterProperty`) and Gloo Mesh's `VirtualDestination` and
//! `TrafficPolicy` (the parts the locality failover walkthrough uses). No maintained Rust
//! crate carries these types, so they follow the CRDs' fields by name; fields Locus does not
//! read are reported by the loader.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The group of `ServiceImport` (a Gateway API backendRef group, GEP-1748).
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The group of Gloo Mesh's `VirtualDestination`.
pub const GLOO_GROUP: &str = "networking.enterprise.mesh.gloo.solo.io";
/// `ClusterProperty` naming the cluster itself (KEP-2149).
pub const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// `about.k8s.io` `ClusterProperty` (cluster-scoped).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProperty {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterPropertySpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ClusterPropertySpec {
    #[serde(default)]
    pub value: String,
}

/// `multicluster.x-k8s.io` `ServiceImport`: a Service exported from one or more clusters of
/// the clusterset. Its endpoints are the EndpointSlices labelled
/// `multicluster.kubernetes.io/service-name`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImport {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceImportSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    #[serde(default)]
    pub ports: Vec<ServiceImportPort>,
    /// `ClusterSetIP` or `Headless`; Locus routes to the endpoints either way.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub session_affinity: Option<String>,
    #[serde(default)]
    pub session_affinity_config: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
    pub port: i32,
}

/// Gloo Mesh `VirtualDestination`: one destination made of the selected Services of every
/// cluster, with outlier detection, routed nearest first.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualDestination {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualDestinationSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualDestinationSpec {
    /// The name clients in the mesh use (`reviews.global`); a gateway routes by its routes.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<VirtualDestinationPort>,
    #[serde(default)]
    pub localized: Option<Localized>,
    /// `static`: a fixed list of destinations without locality ordering.
    #[serde(default, rename = "static")]
    pub static_: Option<StaticDestinations>,
    /// Which meshes see it: every gateway Locus runs is one of them.
    #[serde(default)]
    pub virtual_mesh: Option<ObjectRef>,
    #[serde(default)]
    pub mesh_list: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualDestinationPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    /// The port of the backing Services, by number or name (default: `number`).
    #[serde(default)]
    pub target_number: Option<u32>,
    #[serde(default)]
    pub target_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Localized {
    #[serde(default)]
    pub outlier_detection: Option<GlooOutlierDetection>,
    #[serde(default)]
    pub destination_selectors: Vec<DestinationSelector>,
    /// Never leave the locality tier that has endpoints (Gloo's strict mode).
    #[serde(default)]
    pub enforce_tiers: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticDestinations {
    #[serde(default)]
    pub destinations: Vec<DestinationSelector>,
}

/// Gloo Mesh's outlier detection (the fields of Istio's, under Gloo's names).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlooOutlierDetection {
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Selects Services, in any cluster.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationSelector {
    #[serde(default)]
    pub kube_service_matcher: Option<KubeServiceMatcher>,
    #[serde(default)]
    pub kube_service_refs: Option<KubeServiceRefs>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeServiceMatcher {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Empty: every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Empty: every cluster.
    #[serde(default)]
    pub clusters: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeServiceRefs {
    #[serde(default)]
    pub services: Vec<ClusterObjectRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterObjectRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub cluster_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Gloo Mesh `TrafficPolicy` (networking.mesh.gloo.solo.io/v1): Locus reads the
/// `trafficShift` that sends a Service's traffic to a VirtualDestination.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TrafficPolicySpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    #[serde(default)]
    pub source_selector: Vec<serde_json::Value>,
    #[serde(default)]
    pub destination_selector: Vec<DestinationSelector>,
    #[serde(default)]
    pub http_request_matchers: Vec<serde_json::Value>,
    #[serde(default)]
    pub policy: Option<TrafficPolicyPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyPolicy {
    #[serde(default)]
    pub traffic_shift: Option<TrafficShift>,
    /// Every other policy (timeouts, retries, faults, ...): reported, not applied.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TrafficShift {
    #[serde(default)]
    pub destinations: Vec<WeightedDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeightedDestination {
    #[serde(default)]
    pub virtual_destination: Option<ObjectRef>,
    #[serde(default)]
    pub kube_service: Option<serde_json::Value>,
    #[serde(default)]
    pub weight: Option<u32>,
}
