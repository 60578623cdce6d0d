//! `locus echo`: a tiny test backend in the spirit of agnhost netexec.
//!
//! - `GET /hostname` → the backend's name;
//! - `/status/NNN` → that status, with the name as body;
//! - `/size/N` → N bytes of body (benchmarks of body sizes);
//! - anything else → a JSON echo of the request (name, method, path, query, host, headers).
//!
//! Every response carries `x-backend: NAME`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(respond(&name, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn respond(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let body: Bytes = if path == "/hostname" {
        Bytes::from(name.to_owned())
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        Bytes::from(name.to_owned())
    } else if let Some(n) = path.strip_prefix("/size/") {
        let n: usize = n.parse().unwrap_or(0).min(64 << 20);
        Bytes::from(vec![b'x'; n])
    } else {
        let (parts, body) = req.into_parts();
        let received = body
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "name": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query().unwrap_or(""),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "bodyBytes": received,
        });
        Bytes::from(doc.to_string())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("invalid")),
    );
    resp
}
