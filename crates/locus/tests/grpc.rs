//! GRPCRoute: gRPC calls routed by service and method (exact and regular expression) and by
//! header, to backends spoken to over HTTP/2 (no `appProtocol` needed), trailers passed
//! through, and the gateway's own errors answered as gRPC errors. Real gateway processes, a
//! real HTTP/2 gRPC-shaped backend.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A gRPC-shaped backend over cleartext HTTP/2: echoes the request message, and says who it
/// is and which path it saw in the trailers, as gRPC servers send status.
async fn grpc_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-served-by", name.parse().unwrap());
                        trailers.insert("x-path", path.parse().unwrap());
                        let body = Full::new(body)
                            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                        let resp = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn manifest(a: SocketAddr, b: SocketAddr) -> String {
    let service = |name: &str, addr: SocketAddr| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: grpc, port: 50051}}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: apps, labels: {{app: {name}}}}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}}}\n---\n",
            addr.port()
        )
    };
    let routes = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: apps}
spec:
  gatewayClassName: locus
  listeners: [{name: grpc, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.test]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: a, port: 50051}]
  - matches: [{method: {service: echo.Echo}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: b, port: 50051}]
  - matches: [{method: {type: RegularExpression, service: "echo\\..*", method: "Shout|Whisper"}}]
    backendRefs: [{name: b, port: 50051}]
  - matches: [{method: {service: empty.Empty}}]
    backendRefs: [{name: none, port: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: none, namespace: apps}
spec:
  selector: {app: none}
  ports: [{name: grpc, port: 50051}]
---
"#;
    format!("{routes}{}{}", service("a", a), service("b", b))
}

/// One gRPC call over a new h2c connection: status, body, trailers.
async fn call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A gRPC message: not compressed, 5 bytes long.
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let mut b = http::Request::post(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(message)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let head = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, head, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_by_method_and_header_and_answers_grpc_errors() {
    let (a, b) = (grpc_backend("a").await, grpc_backend("b").await);
    let dir = tempdir();
    write(dir.path(), "all.yaml", &manifest(a, b));
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let served_by = |t: &Option<http::HeaderMap>| {
        t.as_ref()
            .and_then(|t| t.get("x-served-by"))
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Exact service and method; the message and the trailers come back whole.
    let (status, _, body, trailers) = call(addr, "/echo.Echo/Say", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"\x00\x00\x00\x00\x05hello");
    assert_eq!(served_by(&trailers).as_deref(), Some("a"));
    assert_eq!(trailers.as_ref().unwrap()["grpc-status"], "0");
    assert_eq!(trailers.as_ref().unwrap()["x-path"], "/echo.Echo/Say");

    // Service-only match with a header; the method itself is kept.
    let (_, _, _, trailers) = call(addr, "/echo.Echo/Other", &[("x-canary", "yes")]).await;
    assert_eq!(served_by(&trailers).as_deref(), Some("b"));
    // Regular expressions on service and method.
    let (_, _, _, trailers) = call(addr, "/echo.Loud/Shout", &[]).await;
    assert_eq!(served_by(&trailers).as_deref(), Some("b"));

    // No rule matches: UNIMPLEMENTED, as a gRPC error (HTTP 200, grpc-status in the headers).
    let (status, head, _, _) = call(addr, "/echo.Echo/Other", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "12", "{head:?}");
    assert_eq!(head["content-type"], "application/grpc");
    // A Service without endpoints: UNAVAILABLE.
    let (status, head, _, _) = call(addr, "/empty.Empty/Get", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "14", "{head:?}");
    assert!(head.contains_key("grpc-message"));
}

/// A GRPCRoute method match that cannot be a path (a '/' in a name, neither service nor
/// method) is an error naming the field.
#[test]
fn bad_grpc_method_matches_are_refused_with_the_field() {
    let dir = tempdir();
    write(
        dir.path(),
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  rules:\n  - matches: [{method: {type: Exact}}]\n",
    );
    let out = run(&["check", "-f", dir.path().to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("spec.rules[0].matches[0].method"), "{text}");
}

/// A real gRPC server and client (tonic, with protobuf messages): a GRPCRoute sends two
/// methods of one service to two backends; the client gets each backend's typed answer, and a
/// method no backend serves gets the gateway's own UNAVAILABLE as a tonic `Status`.
mod tonic_end_to_end {
    use super::*;
    use std::future::{ready, Ready};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Greeting {
        #[prost(string, tag = "1")]
        pub text: String,
    }

    /// `test.Greeter`, answering every method with its backend's name, the method's path and
    /// the request's text.
    #[derive(Clone)]
    struct Greeter(&'static str);

    impl tonic::server::NamedService for Greeter {
        const NAME: &'static str = "test.Greeter";
    }

    struct Answer(&'static str, String);

    impl tonic::server::UnaryService<Greeting> for Answer {
        type Response = Greeting;
        type Future = Ready<Result<tonic::Response<Greeting>, tonic::Status>>;
        fn call(&mut self, req: tonic::Request<Greeting>) -> Self::Future {
            let text = format!("{} {} {}", self.0, self.1, req.into_inner().text);
            ready(Ok(tonic::Response::new(Greeting { text })))
        }
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for Greeter {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future =
            Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let answer = Answer(self.0, req.uri().path().to_owned());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    Greeting,
                    Greeting,
                >::default());
                Ok(grpc.unary(answer, req).await)
            })
        }
    }

    async fn server(name: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Greeter(name))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    async fn greet(gateway: SocketAddr, method: &'static str) -> Result<String, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
            .unwrap()
            .origin("http://grpc.test".parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(method);
        client
            .unary(
                tonic::Request::new(Greeting { text: "hi".into() }),
                path,
                tonic_prost::ProstCodec::<Greeting, Greeting>::default(),
            )
            .await
            .map(|r| r.into_inner().text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tonic_client_reaches_tonic_servers_by_method() {
        let (a, b) = (server("a").await, server("b").await);
        let service = |name: &str, addr: SocketAddr| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: grpc, port: 50051}}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: apps, labels: {{app: {name}}}}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}}}\n---\n",
                addr.port()
            )
        };
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: grpc, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: greeter, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [grpc.test]\n  rules:\n  - matches: [{method: {service: test.Greeter, method: Hello}}]\n    backendRefs: [{name: a, port: 50051}]\n  - matches: [{method: {service: test.Greeter, method: Bye}}]\n    backendRefs: [{name: b, port: 50051}]\n  - matches: [{method: {service: test.Greeter, method: Nobody}}]\n    backendRefs: [{name: none, port: 50051}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: none, namespace: apps}\nspec:\n  selector: {app: none}\n  ports: [{name: grpc, port: 50051}]\n---\n";
        let dir = tempdir();
        write(
            dir.path(),
            "all.yaml",
            &format!("{routes}{}{}", service("a", a), service("b", b)),
        );
        let gw = Gw::start(dir.path(), &[]);
        let addr = gw.addr(8080);
        for _ in 0..3 {
            assert_eq!(
                greet(addr, "/test.Greeter/Hello").await.unwrap(),
                "a /test.Greeter/Hello hi"
            );
            assert_eq!(
                greet(addr, "/test.Greeter/Bye").await.unwrap(),
                "b /test.Greeter/Bye hi"
            );
        }
        let status = greet(addr, "/test.Greeter/Nobody").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let status = greet(addr, "/test.Greeter/Unknown").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    }
}
