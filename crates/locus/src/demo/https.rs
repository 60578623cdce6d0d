//! The demo's HTTPS step: a certificate authority and a certificate made at start, an HTTPS
//! listener added to the running Gateway with its Secret, a request over TLS with HTTP/2, and
//! a certificate rotated under an open connection.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

use super::{gateway_manifest, service_manifest, write_atomic, HOST, NAMESPACE};
use crate::gateway::{Event, Gateway};
use crate::tls::generate::{secret_manifest, Ca};

const SECRET: &str = "demo-cert";

/// The demo Gateway with an HTTPS listener on port 443 beside its HTTP one.
fn https_gateway_manifest() -> String {
    gateway_manifest().replacen(
        "  - name: http\n",
        &format!("  - name: https\n    protocol: HTTPS\n    port: 443\n    tls:\n      certificateRefs:\n      - name: {SECRET}\n  - name: http\n"),
        1,
    )
}

/// Waits until a configuration with the port `port` bound is in force; its address.
async fn wait_bound(
    gw: &Gateway,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    port: u16,
    what: &str,
) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Applied { .. })) => {
                if let Some(addr) = gw.listener_addrs().get(&port) {
                    return Ok(*addr);
                }
            }
            Ok(Some(Event::Rejected { error })) => bail!("{what}: rejected: {error}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the gateway stopped"),
            Err(_) => bail!("{what}: not applied within 10 s"),
        }
    }
}

/// A short fingerprint of a certificate, to tell two apart in the output.
fn fingerprint(der: &CertificateDer<'_>) -> String {
    let sum = der.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{:06x}", sum & 0xff_ffff)
}

pub(super) async fn run(
    gw: &Gateway,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    dir: &Path,
) -> anyhow::Result<()> {
    println!("\nHTTPS: a certificate authority and a certificate for {HOST} made now; the Gateway gets an HTTPS listener on :443 whose certificateRefs name Secret {NAMESPACE}/{SECRET} (the Service back to PreferClose)");
    let ca = Ca::new("locus demo CA")?;
    let first = ca.leaf(&[HOST])?;
    write_atomic(
        &dir.join("service.yaml"),
        &service_manifest("trafficDistribution: PreferClose"),
    )?;
    write_atomic(
        &dir.join("secret.yaml"),
        &secret_manifest(NAMESPACE, SECRET, &first),
    )?;
    write_atomic(&dir.join("gateway.yaml"), &https_gateway_manifest())?;
    let addr = wait_bound(gw, events, 443, "the HTTPS listener").await?;

    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = ca
        .connector(&[b"h2", b"http/1.1"])
        .connect(ServerName::try_from(HOST)?, tcp)
        .await
        .context("TLS handshake with the demo gateway")?;
    let (version, alpn, shown) = {
        let c = tls.get_ref().1;
        (
            c.protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            c.alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            c.peer_certificates()
                .and_then(|c| c.first().cloned())
                .context("no certificate shown")?,
        )
    };
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let get = |h2: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>| {
        let req = http::Request::get(format!("https://{HOST}/hostname"))
            .body(Empty::new())
            .expect("a valid request");
        let sent = h2.send_request(req);
        async move {
            let resp = sent.await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    let (status, who) = get(&mut h2).await?;
    println!(
        "  https://{HOST}/hostname via {addr}: {version}, ALPN {alpn}, certificate {} → {status} from {who}",
        fingerprint(&shown)
    );
    if status != 200 || shown != first.der || alpn != "h2" {
        bail!("the HTTPS request did not go as expected");
    }

    // Rotation: the Secret changes; the next handshake gets the new certificate, the open
    // connection keeps serving.
    let second = ca.leaf(&[HOST])?;
    write_atomic(
        &dir.join("secret.yaml"),
        &secret_manifest(NAMESPACE, SECRET, &second),
    )?;
    wait_bound(gw, events, 443, "the rotated certificate").await?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = ca
        .connector(&[b"http/1.1"])
        .connect(ServerName::try_from(HOST)?, tcp)
        .await?;
    let rotated = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let (status, _) = get(&mut h2).await?;
    println!(
        "  Secret rotated: new handshakes get certificate {}; the connection opened before still answers ({status})",
        rotated.as_ref().map(fingerprint).unwrap_or_default()
    );
    if rotated.as_ref() != Some(&second.der) || status != 200 {
        bail!("the rotated certificate did not apply as expected");
    }
    Ok(())
}
