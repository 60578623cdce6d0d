//! TLS from the gateway to a Service's endpoints: Gateway API `BackendTLSPolicy` and Istio
//! DestinationRule `trafficPolicy.tls`, resolved into a rustls client configuration.
//!
//! Settings Locus cannot honour, or references it cannot resolve, never fall back to plain
//! text: the port's TLS becomes an error, its requests get a 5xx naming it (as the Gateway API
//! demands for an invalid `caCertificateRefs`), and the warning says why. Client
//! configurations are cached by their settings, so TLS sessions are resumed across reloads.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TlsSecret;

/// Which certificate authorities verify the endpoints.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Roots {
    /// The operating system's trust store (`wellKnownCACertificates: System`).
    System,
    /// A PEM bundle, and where it came from.
    Pem { from: String, pem: Vec<u8> },
    /// No verification at all (Istio `insecureSkipVerify: true`).
    SkipVerify,
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("system CAs"),
            Roots::Pem { from, .. } => write!(f, "CA from {from}"),
            Roots::SkipVerify => f.write_str("no verification (insecureSkipVerify)"),
        }
    }
}

/// What a policy asks of TLS to one Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsSpec {
    pub roots: Roots,
    /// Sent as SNI; the certificate must be valid for it unless `verify_names` is set.
    pub server_name: String,
    /// Names (DNS subject alternative names) one of which the certificate must carry.
    pub verify_names: Vec<String>,
    /// A client certificate (Istio `MUTUAL`).
    pub client_cert: Option<TlsSecret>,
}

/// A ready client configuration: ALPN `http/1.1` for the pooled HTTP/1.1 client, `h2` for
/// gRPC and HTTP/2 endpoints.
pub struct TlsClient {
    /// Tells pooled connections of different TLS settings apart.
    pub id: u64,
    pub server_name: ServerName<'static>,
    pub h1: Arc<ClientConfig>,
    pub h2: Arc<ClientConfig>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

/// TLS to one Service port: the settings, where they came from, and the client made of them
/// (`Err`: why no connection can be made; requests answer 503, never in plain text).
#[derive(Clone)]
pub struct UpstreamTls {
    pub spec: Option<TlsSpec>,
    pub source: String,
    pub client: Result<Arc<TlsClient>, String>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
            && self.source == other.source
            && self.client.is_ok() == other.client.is_ok()
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl UpstreamTls {
    /// Settings that cannot be honoured: every request to the port fails with `why`.
    pub fn refused(source: String, why: String) -> Self {
        UpstreamTls {
            spec: None,
            source,
            client: Err(why),
        }
    }

    /// One line for `locus check` and the admin API.
    pub fn describe(&self) -> String {
        match (&self.spec, &self.client) {
            (Some(spec), Ok(_)) => {
                let names = if spec.verify_names.is_empty() {
                    String::new()
                } else {
                    format!(", certificate for one of {}", spec.verify_names.join(", "))
                };
                let client = if spec.client_cert.is_some() {
                    ", client certificate"
                } else {
                    ""
                };
                format!(
                    "TLS to endpoints: SNI {}, {:?}{names}{client} (from {})",
                    spec.server_name, spec.roots, self.source
                )
            }
            (_, Err(why)) => format!(
                "TLS to endpoints refused, every request answers 503: {why} (from {})",
                self.source
            ),
            (None, Ok(_)) => format!("TLS to endpoints (from {})", self.source),
        }
    }

    /// Resolves `spec` into a client configuration (shared with every port of the same
    /// settings, and kept across reloads while in use).
    pub fn resolve(spec: TlsSpec, source: String) -> Self {
        let client = cached_client(&spec);
        UpstreamTls {
            spec: Some(spec),
            source,
            client,
        }
    }
}

fn cached_client(spec: &TlsSpec) -> Result<Arc<TlsClient>, String> {
    static CACHE: OnceLock<Mutex<HashMap<TlsSpec, Weak<TlsClient>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().expect("upstream TLS cache lock");
    if let Some(client) = cache.get(spec).and_then(Weak::upgrade) {
        return Ok(client);
    }
    cache.retain(|_, c| c.strong_count() > 0);
    let client = Arc::new(build_client(spec)?);
    cache.insert(spec.clone(), Arc::downgrade(&client));
    Ok(client)
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The operating system's trust store, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "no system CA certificates found (install ca-certificates){}",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", errors.join("; "))
                    }
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

fn pem_roots(from: &str, pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{from}: not a PEM certificate bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{from}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{from}: holds no PEM certificate"));
    }
    Ok(Arc::new(roots))
}

fn build_client(spec: &TlsSpec) -> Result<TlsClient, String> {
    let server_name = ServerName::try_from(spec.server_name.clone())
        .map_err(|_| format!("{:?} is not a valid TLS server name", spec.server_name))?;
    let verify_names = spec
        .verify_names
        .iter()
        .map(|n| {
            ServerName::try_from(n.clone())
                .map_err(|_| format!("subject alternative name {n:?} is not a DNS name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &spec.roots {
        Roots::SkipVerify => Arc::new(NoVerification(Signatures(provider.clone()))),
        roots => {
            let store = match roots {
                Roots::Pem { from, pem } => pem_roots(from, pem)?,
                _ => system_roots()?,
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| format!("CA certificates: {e}"))?;
            if verify_names.is_empty() {
                webpki
            } else {
                Arc::new(AnyName {
                    inner: webpki,
                    names: verify_names,
                })
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &spec.client_cert {
        None => builder.with_no_client_auth(),
        Some(secret) => {
            let chain = CertificateDer::pem_slice_iter(&secret.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&secret.key_pem)
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut h2 = config.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    spec.hash(&mut hasher);
    Ok(TlsClient {
        id: hasher.finish() | 1,
        server_name,
        h1: Arc::new(config),
        h2: Arc::new(h2),
    })
}

/// Verifies the chain with the CAs and accepts a certificate valid for any of `names`
/// (BackendTLSPolicy `subjectAltNames`, Istio `subjectAltNames`), whatever the SNI.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subject alternative name".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The handshake-signature checks every certificate verifier shares, with a provider's
/// algorithms (a verifier that accepts or refuses certificates by itself still checks that the
/// peer holds the key).
#[derive(Debug)]
pub(crate) struct Signatures(pub Arc<CryptoProvider>);

impl Signatures {
    pub(crate) fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Istio's `insecureSkipVerify`: any certificate is accepted (the handshake's signatures are
/// still checked, so the session is at least with the holder of the certificate's key).
#[derive(Debug)]
struct NoVerification(Signatures);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// ConfigMaps and Secrets that CA bundles and client certificates are read from.
#[derive(Default)]
pub struct TlsSources {
    pub config_maps: BTreeMap<super::ObjKey, BTreeMap<String, String>>,
    /// Every Secret's data (`data` and `stringData`), by key.
    pub secrets: BTreeMap<super::ObjKey, BTreeMap<String, Vec<u8>>>,
}

impl TlsSources {
    /// The PEM in `key` of a ConfigMap or Secret `name` in `namespace`.
    fn ca_bundle(&self, kind: &str, namespace: &str, name: &str) -> Result<Vec<u8>, String> {
        let key = super::ObjKey::new(namespace, name);
        let what = format!("{kind} {key}");
        let value = match kind {
            "ConfigMap" => self
                .config_maps
                .get(&key)
                .ok_or_else(|| format!("{what} not found"))?
                .get("ca.crt")
                .map(|s| s.as_bytes().to_vec()),
            _ => self
                .secrets
                .get(&key)
                .ok_or_else(|| format!("{what} not found"))?
                .get("ca.crt")
                .cloned(),
        };
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{what} has no ca.crt"))
    }
}

/// A policy's CA references resolved to one PEM bundle (every reference must resolve).
fn ca_refs(
    sources: &TlsSources,
    namespace: &str,
    refs: &[gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicyValidationCaCertificateRefs],
) -> Result<Roots, String> {
    let mut pem = Vec::new();
    let mut from = Vec::new();
    for r in refs {
        if !(r.group.is_empty() || r.group == "core")
            || !matches!(r.kind.as_str(), "ConfigMap" | "Secret")
        {
            return Err(format!(
                "caCertificateRefs {}/{} {}: kind not supported (ConfigMap or Secret)",
                r.group, r.kind, r.name
            ));
        }
        let bundle = sources.ca_bundle(&r.kind, namespace, &r.name)?;
        pem_roots(&format!("{} {namespace}/{}", r.kind, r.name), &bundle)?;
        pem.extend_from_slice(&bundle);
        pem.push(b'\n');
        from.push(format!("{} {namespace}/{}", r.kind, r.name));
    }
    Ok(Roots::Pem {
        from: from.join(", "),
        pem,
    })
}

/// TLS for a Service port from a `BackendTLSPolicy`'s `validation`.
pub fn from_backend_tls_policy(
    policy: &gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy,
    name: &str,
    sources: &TlsSources,
    place: &str,
    warnings: &mut Vec<String>,
) -> UpstreamTls {
    let namespace = super::namespace_of(&policy.metadata);
    let source = format!("BackendTLSPolicy {namespace}/{name}");
    if policy.spec.options.as_ref().is_some_and(|o| !o.is_empty()) {
        warnings.push(format!(
            "{place}: spec.options are not supported by Locus; ignored"
        ));
    }
    let v = &policy.spec.validation;
    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    let roots = match (refs.is_empty(), v.well_known_ca_certificates.as_deref()) {
        (false, None | Some("")) => ca_refs(sources, &namespace, refs),
        (true, Some("System")) => Ok(Roots::System),
        (true, Some(other)) => Err(format!(
            "spec.validation.wellKnownCACertificates {other:?} is not supported (System)"
        )),
        (false, Some(_)) => Err(
            "spec.validation: caCertificateRefs and wellKnownCACertificates are exclusive".into(),
        ),
        (true, None) => {
            Err("spec.validation needs caCertificateRefs or wellKnownCACertificates".into())
        }
    };
    let mut verify_names = Vec::new();
    for san in v.subject_alt_names.iter().flatten() {
        match (&san.r#type, &san.hostname) {
            (
                gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicyValidationSubjectAltNamesType::Hostname,
                Some(h),
            ) => verify_names.push(h.clone()),
            _ => {
                let why = format!(
                    "spec.validation.subjectAltNames: only type Hostname is supported (got {:?})",
                    san.uri.as_deref().unwrap_or("a Hostname entry without hostname")
                );
                warnings.push(format!("{place}: {why}; requests to the Service answer 503"));
                return UpstreamTls::refused(source, why);
            }
        }
    }
    match roots {
        Ok(roots) => UpstreamTls::resolve(
            TlsSpec {
                roots,
                server_name: v.hostname.clone(),
                verify_names,
                client_cert: None,
            },
            source,
        ),
        Err(why) => UpstreamTls::refused(source, why),
    }
    .warn_if_refused(place, warnings)
}

impl UpstreamTls {
    fn warn_if_refused(self, place: &str, warnings: &mut Vec<String>) -> Self {
        if let Err(why) = &self.client {
            warnings.push(format!(
                "{place}: {why}; TLS to the endpoints cannot be made, so requests to the Service answer 503"
            ));
        }
        self
    }
}

/// TLS for a Service port from an Istio DestinationRule's `tls` (`None`: `DISABLE`).
pub fn from_istio(
    tls: &crate::resources::istio::ClientTls,
    field: &str,
    rule: &crate::resources::istio::DestinationRule,
    sources: &TlsSources,
    place: &str,
    warnings: &mut Vec<String>,
) -> Option<UpstreamTls> {
    for key in tls.extra.keys() {
        warnings.push(format!(
            "{place}: {field}.{key} is not supported by Locus; ignored"
        ));
    }
    let namespace = &super::namespace_of(&rule.metadata);
    let host = &rule.spec.host;
    let source = format!(
        "DestinationRule {namespace}/{} ({field})",
        rule.metadata.name.as_deref().unwrap_or_default()
    );
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    let file =
        |path: &str| std::fs::read(path).map_err(|e| format!("{field}: cannot read {path}: {e}"));
    let secret = |name: &str| {
        sources
            .secrets
            .get(&super::ObjKey::new(namespace, name))
            .ok_or_else(|| format!("{field}.credentialName: Secret {namespace}/{name} not found"))
    };
    let spec = || -> Result<TlsSpec, String> {
        let roots = if tls.insecure_skip_verify == Some(true) {
            Roots::SkipVerify
        } else if let Some(path) = &tls.ca_certificates {
            Roots::Pem {
                from: path.clone(),
                pem: file(path)?,
            }
        } else if let Some(name) = &tls.credential_name {
            match secret(name)?
                .get("ca.crt")
                .or_else(|| secret(name).ok()?.get("cacert"))
            {
                Some(pem) => Roots::Pem {
                    from: format!("Secret {namespace}/{name}"),
                    pem: pem.clone(),
                },
                None => Roots::System,
            }
        } else {
            Roots::System
        };
        let client_cert = match mode {
            "MUTUAL" => Some(match (&tls.credential_name, &tls.client_certificate, &tls.private_key) {
                (Some(name), _, _) => {
                    let s = secret(name)?;
                    let get = |k: &str| {
                        s.get(k).cloned().ok_or_else(|| {
                            format!("{field}.credentialName: Secret {namespace}/{name} has no {k}")
                        })
                    };
                    TlsSecret {
                        cert_pem: get("tls.crt")?,
                        key_pem: get("tls.key")?,
                    }
                }
                (None, Some(cert), Some(key)) => TlsSecret {
                    cert_pem: file(cert)?,
                    key_pem: file(key)?,
                },
                _ => {
                    return Err(format!(
                        "{field}: mode MUTUAL needs credentialName or clientCertificate and privateKey"
                    ))
                }
            }),
            _ => None,
        };
        Ok(TlsSpec {
            roots,
            server_name: tls.sni.clone().unwrap_or_else(|| host.to_owned()),
            verify_names: tls.subject_alt_names.clone(),
            client_cert,
        })
    };
    let out = match mode {
        "DISABLE" => return None,
        "SIMPLE" | "MUTUAL" => match spec() {
            Ok(spec) => UpstreamTls::resolve(spec, source),
            Err(why) => UpstreamTls::refused(source, why),
        },
        "ISTIO_MUTUAL" => UpstreamTls::refused(
            source,
            format!("{field}.mode ISTIO_MUTUAL needs Istio's mesh certificates, which Locus does not have (use SIMPLE or MUTUAL)"),
        ),
        other => UpstreamTls::refused(
            source,
            format!("{field}.mode {other:?} is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
        ),
    };
    Some(out.warn_if_refused(place, warnings))
}
