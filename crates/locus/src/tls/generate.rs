//! Certificates made on the spot: a CA, leaf certificates it signs, the `kubernetes.io/tls`
//! Secret holding one, and a client that trusts only that CA. For `locus demo`'s HTTPS step and
//! the tests; never for production certificates.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsConnector;

/// A certificate authority made at start (ECDSA P-256).
pub struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM, and the certificate as DER (what a client is shown).
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A leaf certificate for `names` (DNS names, `*.` wildcards allowed).
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        })
    }

    /// The CA's certificate as PEM (a `ca.crt` for those who verify with it).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS client that trusts this CA only, offering `alpn`, and showing `client` (a leaf of
    /// any CA) when the server asks for a certificate.
    pub fn connector_with_client_cert(&self, alpn: &[&[u8]], client: &Leaf) -> TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("a CA made here is a valid trust anchor");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
            .expect("a key made here is PEM");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client.der.clone()], key)
        .expect("a certificate and key made here belong together");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS client that trusts this CA only, offering `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("a CA made here is a valid trust anchor");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// A `kubernetes.io/tls` Secret manifest holding `leaf`.
pub fn secret_manifest(namespace: &str, name: &str, leaf: &Leaf) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
        indent(&leaf.cert_pem),
        indent(&leaf.key_pem)
    )
}
