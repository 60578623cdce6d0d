//! Kubernetes manifests in: files → documents → typed resources.
//!
//! Reads YAML or JSON exactly as `kubectl apply -f` would take it (one file, several
//! multi-document files, a directory of them, `kind: List`), deserialises each document into
//! the ecosystem's own types (k8s-openapi, gateway-api) or our copies of Istio's, and reports
//! any problem with the file, the document and the field it is about.

pub mod envoy_gateway;
mod error;
pub mod experimental;
pub mod istio;
mod load;
pub mod multicluster;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api::apis::standard::grpcroutes::GrpcRoute;
use gateway_api::apis::standard::httproutes::HttpRoute;
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use envoy_gateway::BackendTrafficPolicy;
pub use error::{ConfigError, DocRef};
pub use istio::{DestinationRule, WorkloadEntry};
pub use load::{collect_files, load_paths, stdin_to_file};
pub use multicluster::{ClusterProperty, ServiceImport, TrafficPolicy, VirtualDestination};

/// Where a resource came from: a file and the document's position in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    /// 1-based position of the document in the file (a `List`'s items share their list's).
    pub index: usize,
}

/// A resource of a kind Locus understands.
#[derive(Clone, Debug)]
pub enum Resource {
    GatewayClass(Box<GatewayClass>),
    Gateway(Box<Gateway>),
    /// With each rule's experimental-channel fields, which the standard type lacks.
    HttpRoute(Box<HttpRoute>, Vec<experimental::RuleExtras>),
    GrpcRoute(Box<GrpcRoute>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    WorkloadEntry(Box<WorkloadEntry>),
    DestinationRule(Box<DestinationRule>),
    BackendTrafficPolicy(Box<BackendTrafficPolicy>),
    ReferenceGrant(Box<ReferenceGrant>),
    /// TLS certificates for HTTPS listeners (and CA bundles for upstream TLS).
    Secret(Box<Secret>),
    /// CA bundles for upstream TLS (`ca.crt`, BackendTLSPolicy `caCertificateRefs`).
    ConfigMap(Box<ConfigMap>),
    BackendTlsPolicy(Box<BackendTlsPolicy>),
    ServiceImport(Box<ServiceImport>),
    ClusterProperty(Box<ClusterProperty>),
    VirtualDestination(Box<VirtualDestination>),
    GlooTrafficPolicy(Box<TrafficPolicy>),
}

impl Resource {
    /// The cluster a manifest says an object was read from (`topology.istio.io/cluster` on
    /// the kinds other clusters contribute: Services, EndpointSlices, Nodes, WorkloadEntries).
    pub fn cluster_label(&self) -> Option<&str> {
        let meta = match self {
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::Node(o) => &o.metadata,
            Resource::WorkloadEntry(o) => &o.metadata,
            _ => return None,
        };
        meta.labels
            .as_ref()?
            .get(locus_core::policy::CLUSTER_LABEL)
            .map(String::as_str)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Resource::GatewayClass(_) => "GatewayClass",
            Resource::Gateway(_) => "Gateway",
            Resource::HttpRoute(..) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
            Resource::Service(_) => "Service",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::Node(_) => "Node",
            Resource::Namespace(_) => "Namespace",
            Resource::WorkloadEntry(_) => "WorkloadEntry",
            Resource::DestinationRule(_) => "DestinationRule",
            Resource::BackendTrafficPolicy(_) => "BackendTrafficPolicy",
            Resource::ReferenceGrant(_) => "ReferenceGrant",
            Resource::Secret(_) => "Secret",
            Resource::ConfigMap(_) => "ConfigMap",
            Resource::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Resource::ServiceImport(_) => "ServiceImport",
            Resource::ClusterProperty(_) => "ClusterProperty",
            Resource::VirtualDestination(_) => "VirtualDestination",
            Resource::GlooTrafficPolicy(_) => "TrafficPolicy",
        }
    }
}

/// One parsed document.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub doc: DocRef,
    pub resource: Resource,
}

/// Everything read from a set of files, with the warnings met on the way.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    pub documents: Vec<Document>,
    pub warnings: Vec<String>,
    pub files: Vec<PathBuf>,
    /// The gateway's own cluster when the operator named it (`--cluster`): objects labelled
    /// `topology.istio.io/cluster` with this name are local.
    pub local_cluster: Option<String>,
    /// The gateway's own network when the operator named it (`--network`).
    pub local_network: Option<String>,
    /// The port the gateway takes other networks' east-west traffic on (`--east-west-port`).
    pub east_west_port: Option<u16>,
}

/// Deepest `[`/`{` nesting a manifest may have. Kubernetes objects nest a dozen levels; the
/// YAML parser takes time quadratic in a deep flow collection before its own recursion limit
/// (128) stops it (200 KB of nested `[` pinned a core for 36 s), so deeper text is refused
/// before it is parsed.
pub const MAX_NESTING: usize = 64;

/// The line of the first `[` or `{` nested deeper than [`MAX_NESTING`], if any. Brackets in
/// quoted scalars and comments do not count.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut comment = false;
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
            // A stray quote (in a plain or block scalar) must not switch the check off for
            // the rest of the file: quotes end with their line.
            quote = None;
        }
        if comment {
            prev = b;
            continue;
        }
        match (quote, b) {
            (Some(q), _) if b == q && !(q == b'"' && prev == b'\\') => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'')
                if matches!(prev, b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':') =>
            {
                quote = Some(b)
            }
            (None, b'#') if matches!(prev, b' ' | b'\t' | b'\n') => comment = true,
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    None
}

/// Parses the text of one file (YAML or JSON, any number of documents).
pub fn parse_text(file: &Path, text: &str, out: &mut ResourceSet) -> Result<(), ConfigError> {
    let file: Arc<Path> = Arc::from(file);
    if let Some(line) = too_deep(text) {
        return Err(ConfigError::new(
            &file,
            DocRef::index_only(1),
            "",
            format!("nested deeper than {MAX_NESTING} levels at line {line}; not parsed"),
        ));
    }
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let yaml = match <serde_yaml_ng::Value as serde::Deserialize>::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                return Err(ConfigError::new(
                    &file,
                    DocRef::index_only(index),
                    "",
                    format!("not valid YAML: {e}"),
                ))
            }
        };
        if yaml.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let value: Value = serde_json::to_value(&yaml).map_err(|e| {
            ConfigError::new(
                &file,
                DocRef::index_only(index),
                "",
                format!("cannot be read as a Kubernetes object: {e}"),
            )
        })?;
        parse_value(
            Origin {
                file: file.clone(),
                index,
            },
            value,
            out,
        )?;
    }
    Ok(())
}

/// Parses one object (already JSON) into `out`, as a manifest document would be: the cluster
/// source uses this so both sources share one parser.
pub fn parse_value_into(
    origin: Origin,
    value: Value,
    out: &mut ResourceSet,
) -> Result<(), ConfigError> {
    parse_value(origin, value, out)
}

fn parse_value(origin: Origin, value: Value, out: &mut ResourceSet) -> Result<(), ConfigError> {
    let doc = DocRef::from_value(origin.index, &value);
    let err = |field: &str, msg: String| ConfigError::new(&origin.file, doc.clone(), field, msg);
    let Value::Object(map) = &value else {
        return Err(err(
            "",
            "a document must be a mapping (a Kubernetes object)".into(),
        ));
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err("apiVersion", "must be a string".into())),
        None => return Err(err("apiVersion", "missing".into())),
    };
    let kind = match map.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err("kind", "must be a string".into())),
        None => return Err(err("kind", "missing".into())),
    };
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    let resource = match (group, kind.as_str()) {
        ("", "List") => {
            let items = match map.get("items") {
                Some(Value::Array(items)) => items.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(err("items", "must be a list".into())),
            };
            for item in items {
                parse_value(origin.clone(), item, out)?;
            }
            return Ok(());
        }
        ("gateway.networking.k8s.io", "GatewayClass") if matches!(version, "v1" | "v1beta1") => {
            Resource::GatewayClass(typed(
                &origin,
                &doc,
                with_version(value, "v1"),
                &mut out.warnings,
            )?)
        }
        ("gateway.networking.k8s.io", "Gateway") if matches!(version, "v1" | "v1beta1") => {
            Resource::Gateway(typed(
                &origin,
                &doc,
                with_version(value, "v1"),
                &mut out.warnings,
            )?)
        }
        ("gateway.networking.k8s.io", "HTTPRoute") if matches!(version, "v1" | "v1beta1") => {
            let mut value = with_version(value, "v1");
            let extras =
                experimental::take_rule_extras(&origin, &doc, &mut value, &mut out.warnings)?;
            Resource::HttpRoute(typed(&origin, &doc, value, &mut out.warnings)?, extras)
        }
        ("gateway.networking.k8s.io", "GRPCRoute") if matches!(version, "v1" | "v1alpha2") => {
            Resource::GrpcRoute(typed(
                &origin,
                &doc,
                with_version(value, "v1"),
                &mut out.warnings,
            )?)
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") if matches!(version, "v1" | "v1beta1") => {
            Resource::ReferenceGrant(typed(
                &origin,
                &doc,
                with_version(value, "v1"),
                &mut out.warnings,
            )?)
        }
        ("", "Service") if version == "v1" => {
            Resource::Service(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("", "Node") if version == "v1" => {
            Resource::Node(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("", "Secret") if version == "v1" => {
            Resource::Secret(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("", "ConfigMap") if version == "v1" => {
            Resource::ConfigMap(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        // v1alpha3 has the shape of v1.
        ("gateway.networking.k8s.io", "BackendTLSPolicy")
            if matches!(version, "v1" | "v1alpha3") =>
        {
            Resource::BackendTlsPolicy(typed(
                &origin,
                &doc,
                with_version(value, "v1"),
                &mut out.warnings,
            )?)
        }
        ("", "Namespace") if version == "v1" => {
            Resource::Namespace(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("discovery.k8s.io", "EndpointSlice") if version == "v1" => {
            Resource::EndpointSlice(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("networking.istio.io", "WorkloadEntry")
            if matches!(version, "v1" | "v1beta1" | "v1alpha3") =>
        {
            Resource::WorkloadEntry(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("networking.istio.io", "DestinationRule")
            if matches!(version, "v1" | "v1beta1" | "v1alpha3") =>
        {
            Resource::DestinationRule(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("multicluster.x-k8s.io", "ServiceImport") if version == "v1alpha1" => {
            Resource::ServiceImport(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("about.k8s.io", "ClusterProperty") if version == "v1alpha1" => {
            Resource::ClusterProperty(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("networking.enterprise.mesh.gloo.solo.io", "VirtualDestination")
            if version == "v1beta1" =>
        {
            Resource::VirtualDestination(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("networking.mesh.gloo.solo.io", "TrafficPolicy") if version == "v1" => {
            Resource::GlooTrafficPolicy(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        ("gateway.envoyproxy.io", "BackendTrafficPolicy") if version == "v1alpha1" => {
            Resource::BackendTrafficPolicy(typed(&origin, &doc, value, &mut out.warnings)?)
        }
        _ => {
            out.warnings.push(format!(
                "{}: document {} ({} {}): kind {kind} ({api_version}) is not used by Locus; skipped",
                origin.file.display(),
                origin.index,
                kind,
                doc.name_or_index(),
            ));
            return Ok(());
        }
    };
    out.documents.push(Document {
        origin,
        doc,
        resource,
    });
    Ok(())
}

/// Gateway API's v1beta1 kinds are the same shape as v1; the typed structs only accept v1.
fn with_version(mut value: Value, version: &str) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert(
            "apiVersion".into(),
            Value::String(format!("gateway.networking.k8s.io/{version}")),
        );
    }
    value
}

/// Deserializes a document into its kind's type. Fields the type does not have (a typo, or a
/// field of a newer API version) are reported as warnings, never dropped silently.
fn typed<T: DeserializeOwned>(
    origin: &Origin,
    doc: &DocRef,
    value: Value,
    warnings: &mut Vec<String>,
) -> Result<Box<T>, ConfigError> {
    typed_at(origin, doc, "", value, warnings).map(Box::new)
}

/// [`typed`] for a part of a document found at the field path `at` (empty: the whole), which
/// its errors and warnings name.
fn typed_at<T: DeserializeOwned>(
    origin: &Origin,
    doc: &DocRef,
    at: &str,
    value: Value,
    warnings: &mut Vec<String>,
) -> Result<T, ConfigError> {
    let within = |path: &str| match (at, path) {
        (_, "") => at.to_owned(),
        ("", _) => path.to_owned(),
        _ if path.starts_with('[') => format!("{at}{path}"),
        _ => format!("{at}.{path}"),
    };
    let mut ignored: Vec<String> = Vec::new();
    let result = {
        let mut note = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
        let de = serde_ignored::Deserializer::new(value, &mut note);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    // The typed roots take `apiVersion` and `kind` as given, without reading them; `status`
    // (of objects read from a cluster) is never configuration.
    let configuration = |p: &&String| {
        !at.is_empty()
            || (!matches!(p.as_str(), "apiVersion" | "kind" | "status")
                && !p.starts_with("status."))
    };
    for path in ignored.iter().filter(configuration) {
        warnings.push(format!(
            "{}: {doc}: field {} is not one Locus reads (misspelt, or not in the API version Locus implements); ignored",
            origin.file.display(),
            within(&field_path(path))
        ));
    }
    result.map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(
            &origin.file,
            doc.clone(),
            &within(&path),
            e.into_inner().to_string(),
        )
    })
}

/// `spec.rules.0.x` (serde_ignored's path) as `spec.rules[0].x`, the way errors name fields.
fn field_path(path: &str) -> String {
    let mut out = String::new();
    // `?` marks an `Option` layer: not part of the field's name.
    for part in path.split('.').filter(|p| *p != "?") {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ResourceSet, ConfigError> {
        let mut set = ResourceSet::default();
        parse_text(Path::new("test.yaml"), text, &mut set)?;
        Ok(set)
    }

    #[test]
    fn an_httproute_rules_retry_is_read_with_its_field_paths() {
        let route = |retry: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  rules:\n  - backendRefs: [{{name: a, port: 80}}]\n  - backendRefs: [{{name: b, port: 80}}]\n    retry: {retry}\n")
        };
        let set = parse(&route("{codes: [500, 503], attempts: 3, backof: 1s}")).unwrap();
        let Resource::HttpRoute(_, extras) = &set.documents[0].resource else {
            panic!("not an HTTPRoute");
        };
        assert_eq!(extras.len(), 2);
        assert_eq!(extras[0].retry, None);
        let retry = extras[1].retry.as_ref().unwrap();
        assert_eq!(
            (retry.codes.as_slice(), retry.attempts),
            (&[500, 503][..], Some(3))
        );
        let all = set.warnings.join("\n");
        assert!(
            all.contains("field spec.rules[1].retry.backof is not one Locus reads"),
            "{all}"
        );
        assert!(!all.contains("field spec.rules[1].retry "), "{all}");
        let err = parse(&route("{attempts: many}")).unwrap_err().to_string();
        assert!(err.contains("spec.rules[1].retry.attempts"), "{err}");
    }

    #[test]
    fn fields_no_type_has_are_reported_not_dropped() {
        let set = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  rules:\n  - backendRef: [{name: svc, port: 80}]\n    sessionPersistance: {sessionName: s}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: apps}\nspec: {address: 10.0.0.1}\nstatus: {conditions: []}\n",
        )
        .unwrap();
        let all = set.warnings.join("\n");
        // A cluster object's status is not configuration: no warning for it.
        assert!(!all.contains("field status"), "{all}");
        for field in [
            "spec.rules[0].backendRef",
            "spec.rules[0].sessionPersistance",
        ] {
            assert!(
                all.contains(&format!("field {field} is not one Locus reads")),
                "{all}"
            );
        }
    }

    #[test]
    fn reads_multi_document_files_and_lists() {
        let set = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
             ---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n",
        )
        .unwrap();
        let kinds: Vec<_> = set.documents.iter().map(|d| d.resource.kind()).collect();
        assert_eq!(kinds, vec!["Service", "Node"]);
        assert_eq!(set.documents[1].origin.index, 3);
    }

    #[test]
    fn unknown_kinds_are_skipped_with_a_warning_naming_them() {
        let set = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n",
        )
        .unwrap();
        assert!(set.documents.is_empty());
        assert_eq!(set.warnings.len(), 1);
        assert!(
            set.warnings[0].contains("kind Deployment (apps/v1)"),
            "{}",
            set.warnings[0]
        );
        assert!(set.warnings[0].contains("shop/web"), "{}", set.warnings[0]);
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let err = parse(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Service\n\
             metadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("test.yaml: document 2 (Service shop/web): field spec.ports[0].port:"),
            "{text}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut set = ResourceSet::default();
        let err = parse_text(Path::new("deep.yaml"), &deep, &mut set).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("deep.yaml") && msg.contains("nested deeper than 64"),
            "{msg}"
        );
        // Brackets in strings and comments are not nesting.
        let fine = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x # {}\n  annotations: {{a: \"{}\"}}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        parse_text(Path::new("fine.yaml"), &fine, &mut set).unwrap();
    }

    #[test]
    fn missing_kind_is_an_error() {
        let err = parse("apiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
        assert!(err.to_string().contains("field kind: missing"), "{err}");
    }

    #[test]
    fn invalid_yaml_names_the_document() {
        let err = parse("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\nfoo: [unclosed\n")
            .unwrap_err();
        assert!(err.to_string().contains("document 2"), "{err}");
    }

    #[test]
    fn reads_workload_entries_and_gateway_api_kinds() {
        let set = parse(
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: we-zone-a, namespace: ns, labels: {app: x}}
spec: {address: 127.0.0.1, locality: region/zone, ports: {http: 8080}, weight: 3}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec:
  parentRefs: [{name: gateway}]
  hostnames: [locality.test]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
"#,
        )
        .unwrap();
        assert_eq!(set.documents.len(), 2);
        match &set.documents[0].resource {
            Resource::WorkloadEntry(we) => {
                assert_eq!(we.spec.weight, Some(3));
                assert_eq!(we.spec.ports.get("http"), Some(&8080));
            }
            other => panic!("{other:?}"),
        }
    }
}
