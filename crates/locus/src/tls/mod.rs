//! HTTPS listeners: certificates from `kubernetes.io/tls` Secrets, chosen per handshake by SNI.
//!
//! Each apply turns the model's HTTPS listeners into one [`PortTls`] per port (a rustls server
//! configuration whose certificate resolver knows every listener of that port). Listeners read
//! it when they accept a connection, so a changed Secret applies to the next handshake and no
//! connection is dropped. A Secret that goes missing or stops parsing keeps serving its last
//! good certificate; the listener says so in its status (`ResolvedRefs=False`,
//! `InvalidCertificateRef`) and the log, and the other listeners are untouched.

pub mod generate;
mod sni;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::model::upstream_tls::Signatures;
use crate::model::{Model, ObjKey, TlsSecret};
use crate::routing::GatewaySelector;

pub use sni::{SniListener, SniResolver};

/// TLS sessions remembered for resumption, across reloads.
const SESSION_CACHE: usize = 16 * 1024;

/// What an HTTPS port serves: its rustls configuration and which listener each name belongs to.
#[derive(Debug)]
pub struct PortTls {
    pub config: Arc<rustls::ServerConfig>,
    pub sni: Arc<SniResolver>,
}

/// Certificates parsed so far, kept as the last good one of each Secret.
pub struct CertStore {
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
    last_good: HashMap<ObjKey, (TlsSecret, Arc<CertifiedKey>)>,
}

impl Default for CertStore {
    fn default() -> Self {
        CertStore {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
            last_good: HashMap::new(),
        }
    }
}

impl CertStore {
    /// The TLS configuration of every HTTPS port of the selected Gateways. Problems with
    /// certificates are written into the model: the listener's refused references (its status)
    /// and the warnings.
    pub fn resolve(
        &mut self,
        model: &mut Model,
        selector: &GatewaySelector,
    ) -> BTreeMap<u16, Arc<PortTls>> {
        let mut ports: BTreeMap<u16, Vec<SniListener>> = BTreeMap::new();
        let mut plain_ports: Vec<u16> = Vec::new();
        let mut used: HashMap<ObjKey, (TlsSecret, Arc<CertifiedKey>)> = HashMap::new();
        // Client certificate validation (mTLS) per HTTPS port, from the first Gateway that
        // serves the port and asks for it.
        let mut client_cas: BTreeMap<u16, crate::model::ClientCa> = BTreeMap::new();
        let Model {
            gateways,
            secrets,
            warnings,
            config_maps,
            ..
        } = model;
        for gw in gateways.iter().filter(|g| selector.selects(g)) {
            for l in gw.listeners.iter().filter(|l| l.tls.is_some()) {
                if let Some(ca) = gw.client_validation.for_port(l.port) {
                    client_cas.entry(l.port).or_insert_with(|| ca.clone());
                }
            }
        }
        for gw in gateways.iter_mut().filter(|g| selector.selects(g)) {
            for l in &mut gw.listeners {
                let Some(tls) = &mut l.tls else {
                    plain_ports.push(l.port);
                    continue;
                };
                let mut certs = Vec::new();
                for key in &tls.certificates {
                    match self.certificate(key, secrets.get(key)) {
                        Ok(pair) => {
                            certs.push(pair.1.clone());
                            used.insert(key.clone(), pair);
                        }
                        Err((why, last_good)) => {
                            let kept = match last_good {
                                Some(pair) => {
                                    certs.push(pair.1.clone());
                                    used.insert(key.clone(), pair);
                                    "; its last good certificate keeps serving"
                                }
                                None => "",
                            };
                            warnings.push(format!(
                                "Gateway {}: listener {:?}: Secret {key} {why}{kept}",
                                gw.key, l.name
                            ));
                            tls.refused
                                .push(("InvalidCertificateRef", format!("Secret {key} {why}")));
                        }
                    }
                }
                ports.entry(l.port).or_default().push(SniListener {
                    name: format!("{}/{}", gw.key, l.name),
                    hostname: l.hostname.clone(),
                    certs,
                });
            }
        }
        // Secrets no listener uses any more are forgotten.
        self.last_good = used;
        let mut out = BTreeMap::new();
        for (port, listeners) in ports {
            if plain_ports.contains(&port) {
                warnings.push(format!(
                    "port {port} has both HTTP and HTTPS listeners; it serves plain HTTP, and its HTTPS listeners ({}) are not served and take no routes",
                    listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
                for gw in gateways.iter_mut().filter(|g| selector.selects(g)) {
                    for l in gw.listeners.iter_mut().filter(|l| l.port == port) {
                        if let Some(tls) = &mut l.tls {
                            tls.refused.push((
                                "ProtocolConflict",
                                format!("port {port} also has HTTP listeners"),
                            ));
                        }
                    }
                }
                continue;
            }
            let verifier = match client_cas.get(&port) {
                None => None,
                Some(ca) => Some(match self.client_verifier(ca, config_maps) {
                    Ok(v) => v,
                    Err(why) => {
                        // Fail closed: no client certificate is accepted (unless the fallback
                        // lets clients in without one), never a silent no-validation.
                        warnings.push(format!(
                            "port {port}: {}: {why}; {}",
                            ca.field,
                            if ca.allow_insecure_fallback {
                                "clients are served without a validated certificate (AllowInsecureFallback)"
                            } else {
                                "no client can connect until it is fixed"
                            }
                        ));
                        for gw in gateways.iter_mut().filter(|g| selector.selects(g)) {
                            for l in gw.listeners.iter_mut().filter(|l| l.port == port) {
                                if let Some(tls) = &mut l.tls {
                                    tls.refused.push(("InvalidCACertificateRef", why.clone()));
                                }
                            }
                        }
                        if ca.allow_insecure_fallback {
                            rustls::server::WebPkiClientVerifier::no_client_auth()
                        } else {
                            Arc::new(RefuseEveryClient(Signatures(self.provider.clone())))
                        }
                    }
                }),
            };
            let sni = Arc::new(SniResolver::new(listeners));
            out.insert(port, Arc::new(self.server_config(sni, verifier)));
        }
        out
    }

    /// A verifier of client certificates against the CAs in `ca`'s ConfigMaps (`ca.crt`).
    fn client_verifier(
        &self,
        ca: &crate::model::ClientCa,
        config_maps: &BTreeMap<ObjKey, BTreeMap<String, String>>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for key in &ca.config_maps {
            let pem = config_maps
                .get(key)
                .ok_or_else(|| format!("ConfigMap {key} not found"))?
                .get("ca.crt")
                .ok_or_else(|| format!("ConfigMap {key} has no ca.crt"))?;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("ConfigMap {key}: ca.crt: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ConfigMap {key}: ca.crt: {e}"))?;
            }
        }
        if roots.is_empty() {
            return Err("no CA certificate to validate clients with".into());
        }
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        );
        let builder = if ca.allow_insecure_fallback {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder.build().map_err(|e| e.to_string())
    }

    /// A Secret's certificate: parsed again only when its content changed. `Err` carries what
    /// is wrong and the last good certificate, if there was one.
    #[allow(clippy::type_complexity)]
    fn certificate(
        &self,
        key: &ObjKey,
        secret: Option<&Result<TlsSecret, String>>,
    ) -> Result<(TlsSecret, Arc<CertifiedKey>), (String, Option<(TlsSecret, Arc<CertifiedKey>)>)>
    {
        let last = self.last_good.get(key).cloned();
        let secret = match secret {
            None => return Err(("is not among the resources".to_owned(), last)),
            Some(Err(why)) => return Err((why.clone(), last)),
            Some(Ok(s)) => s,
        };
        if let Some((seen, cert)) = &last {
            if seen == secret {
                return Ok((seen.clone(), cert.clone()));
            }
        }
        match certified_key(secret, &self.provider) {
            Ok(cert) => Ok((secret.clone(), cert)),
            Err(why) => Err((why, last)),
        }
    }

    fn server_config(
        &self,
        sni: Arc<SniResolver>,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> PortTls {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let builder = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(sni.clone());
        // Browsers get HTTP/2; the connection's protocol is then told apart by its preface.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        PortTls {
            config: Arc::new(config),
            sni,
        }
    }
}

/// Parses a Secret's PEM certificate chain and private key, and checks they belong together.
pub fn certified_key(
    secret: &TlsSecret,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(&secret.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("has a tls.crt that is not PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err("has no certificate in tls.crt".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&secret.key_pem)
        .map_err(|e| format!("has a tls.key that is not a PEM private key ({e})"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("has a tls.key Locus cannot use ({e})"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("has a tls.key that does not match its tls.crt ({e})"))?;
    Ok(Arc::new(certified))
}

/// Asks every client for a certificate and accepts none: mTLS whose CAs cannot be read fails
/// closed.
#[derive(Debug)]
struct RefuseEveryClient(Signatures);

impl rustls::server::danger::ClientCertVerifier for RefuseEveryClient {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "client certificate validation is misconfigured on this listener".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.schemes()
    }
}
