//! TLS for tests: a CA made at start, leaf certificates it signs, Secrets holding them, and
//! clients that trust only that CA.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use locus::tls::generate::Leaf;

/// A test CA (the library's, unwrapped).
pub struct Ca(locus::tls::generate::Ca);

impl Ca {
    pub fn new() -> Ca {
        Ca(locus::tls::generate::Ca::new("locus test CA").unwrap())
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.0.leaf(names).unwrap()
    }

    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        self.0.connector(alpn)
    }

    pub fn cert_pem(&self) -> String {
        self.0.cert_pem()
    }

    pub fn connector_with_client_cert(&self, alpn: &[&[u8]], client: &Leaf) -> TlsConnector {
        self.0.connector_with_client_cert(alpn, client)
    }
}

/// An echo backend serving HTTPS with `leaf` (its files written into `dir`).
pub fn tls_echo(name: &str, leaf: &Leaf, dir: &std::path::Path) -> crate::common::Echo {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    crate::common::echo_with(
        name,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
}

/// PEM indented to sit in a YAML block scalar at `indent` spaces.
pub fn indent_pem(pem: &str, indent: usize) -> String {
    pem.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(indent)))
        .collect()
}

/// A Secret `apps/NAME` holding `leaf`.
pub fn secret(name: &str, leaf: &Leaf) -> String {
    locus::tls::generate::secret_manifest("apps", name, leaf)
}

/// A TLS connection to the gateway with `sni`, and the certificate it was shown.
pub async fn connect(
    ca: &Ca,
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(TlsStream<tokio::net::TcpStream>, CertificateDer<'static>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = ca
        .connector(alpn)
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, shown))
}

/// An HTTP/1.1 client over one TLS connection.
pub async fn http1(
    tls: TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pub async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> (u16, String) {
    send.ready().await.unwrap();
    let req = http::Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
