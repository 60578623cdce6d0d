//! Test harness: the real `locus` binary and real echo backends as child processes on
//! 127.0.0.1, talking real HTTP. Readiness comes from the processes' stdout lines
//! (`listening …`, `applied generation=N`), never from sleeps.

#![allow(dead_code)]

pub mod apiserver;
pub mod scripted;
pub mod tls;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_locus");
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed on drop, with its stdout lines on a channel.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("LOCUS_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn locus");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line satisfying `pred` and returns it.
    pub fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_line_for(what, WAIT, pred)
    }

    /// Takes the next stdout line if one is there (into `seen`), without waiting.
    pub fn try_line(&mut self) -> Option<String> {
        let line = self.lines.try_recv().ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Like [`Proc::wait_line`], waiting at most `wait`.
    pub fn wait_line_for(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e:?}; stdout so far: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the admin API's address (`admin addr=…` on stdout).
    pub fn admin_addr(&mut self) -> SocketAddr {
        self.wait_line("admin", |l| l.starts_with("admin addr="))["admin addr=".len()..]
            .parse()
            .expect("admin address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, from /proc.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An echo backend process.
pub struct Echo {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
}

pub fn echo(name: &str) -> Echo {
    echo_with(name, &[])
}

/// An echo backend with extra flags (`--work-ms 2.5`, …).
pub fn echo_with(name: &str, extra: &[&str]) -> Echo {
    spawn_echo(name, "127.0.0.1:0", extra)
}

/// An echo backend on a given address (a backend restarted where it was).
pub fn echo_at(name: &str, addr: SocketAddr) -> Echo {
    spawn_echo(name, &addr.to_string(), &[])
}

fn spawn_echo(name: &str, listen: &str, extra: &[&str]) -> Echo {
    let mut args = vec!["echo", "--name", name, "--listen", listen];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args);
    let line = proc.wait_line("echo listening", |l| l.starts_with("listening addr="));
    let addr = line["listening addr=".len()..].parse().expect("address");
    Echo {
        proc,
        addr,
        name: name.to_owned(),
    }
}

/// A `locus serve` process on a manifest directory.
pub struct Gw {
    pub proc: Proc,
    /// Configured listener port → bound address.
    pub listeners: BTreeMap<u16, SocketAddr>,
    /// The admin API's address.
    pub admin: SocketAddr,
    pub generation: u64,
    pub dir: PathBuf,
}

impl Gw {
    /// Starts the gateway and waits for its first configuration.
    pub fn start(dir: &Path, extra: &[&str]) -> Gw {
        let mut args = vec!["serve", "-f", dir.to_str().unwrap(), "--poll-ms", "50"];
        args.extend_from_slice(extra);
        Gw::spawn(dir, &args)
    }

    /// Starts `locus serve --kubernetes` against a (stand-in) API server.
    pub fn start_cluster(kubeconfig: &Path, extra: &[&str]) -> Gw {
        let mut args = vec![
            "serve",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Gw::spawn(kubeconfig.parent().unwrap(), &args)
    }

    fn spawn(dir: &Path, args: &[&str]) -> Gw {
        let mut args = args.to_vec();
        args.extend_from_slice(&[
            "--bind",
            "127.0.0.1",
            "--ephemeral-ports",
            "--admin",
            "127.0.0.1:0",
        ]);
        let mut proc = Proc::spawn(&args);
        let mut listeners = BTreeMap::new();
        let mut admin = None;
        loop {
            let line = proc.wait_line("first configuration", |l| {
                l.starts_with("listening ")
                    || l.starts_with("applied ")
                    || l.starts_with("rejected ")
                    || l.starts_with("admin ")
            });
            if let Some(rest) = line.strip_prefix("admin addr=") {
                admin = Some(rest.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("listening port=") {
                let (port, addr) = rest.split_once(" addr=").unwrap();
                listeners.insert(port.parse().unwrap(), addr.parse().unwrap());
            } else if line.starts_with("applied generation=1") {
                break;
            } else {
                panic!("gateway did not start: {line}");
            }
        }
        Gw {
            proc,
            admin: admin.expect("the admin address is printed first"),
            listeners,
            generation: 1,
            dir: dir.to_owned(),
        }
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        self.listeners[&port]
    }

    /// Waits for the next accepted configuration.
    pub fn wait_applied(&mut self) -> u64 {
        let next = self.generation + 1;
        let want = format!("applied generation={next}");
        self.proc.wait_line(&want, |l| l == want);
        self.generation = next;
        next
    }

    /// Waits for a refused configuration and returns its error text.
    pub fn wait_rejected(&mut self) -> String {
        let line = self
            .proc
            .wait_line("rejected", |l| l.starts_with("rejected "));
        line["rejected error=".len()..].to_owned()
    }

    /// Writes (atomically) a manifest into the watched directory and waits for it to apply.
    pub fn apply(&mut self, name: &str, text: &str) {
        write(&self.dir, name, text);
        self.wait_applied();
    }

    pub fn delete(&mut self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
        self.wait_applied();
    }
}

/// Runs a `locus` command to completion (check, plan, …).
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run locus")
}

/// Like [`run`], failing the test with the command's stderr when it does not succeed.
pub fn run_ok(args: &[&str]) -> std::process::Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "locus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An address nothing listens on: bound, noted, closed.
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) {
    locus::demo::write_atomic(&dir.join(name), text).unwrap();
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("locus-test-")
        .tempdir()
        .unwrap()
}

/// A response, reduced to what tests look at.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    /// The backend that answered (echo's `x-backend`), or `status NNN` for gateway errors.
    pub fn who(&self) -> String {
        match self.headers.get("x-backend") {
            Some(v) if self.status == 200 => v.to_str().unwrap().to_owned(),
            _ => format!("status {}", self.status),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Requests go over h2 as curl sends them: the host in `:authority`, no `Host` header.
    h2: bool,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(false)
    }
}

impl HttpClient {
    pub fn new(h2: bool) -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build_http(),
            h2,
        }
    }

    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut b = http::Request::builder().method(method);
        b = if self.h2 {
            b.uri(format!("http://{host}{path}"))
        } else {
            b.uri(format!("http://{addr}{path}")).header("host", host)
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        let resp = if self.h2 {
            let io =
                hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .expect("request")
                .map(http_body_util::BodyExt::boxed)
        } else {
            self.client
                .request(req)
                .await
                .expect("request")
                .map(http_body_util::BodyExt::boxed)
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Like [`HttpClient::get`], `None` when the request fails (a gateway killed mid-test).
    pub async fn try_get(&self, addr: SocketAddr, host: &str, path: &str) -> Option<Resp> {
        let req = http::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Resp {
        self.request("GET", addr, host, path, &[], Bytes::new())
            .await
    }

    /// Sends `n` GETs one after another and counts who answered.
    pub async fn count(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        n: usize,
    ) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            *out.entry(self.get(addr, host, path).await.who())
                .or_default() += 1;
        }
        out
    }
}

pub fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A Gateway on port 8080, an HTTPRoute for every host to Service `apps/svc` port 80.
pub const GATEWAY_AND_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n---\n";

/// A Gateway on port 8080 routing everything to Service `apps/svc:80`, whose one endpoint (a
/// WorkloadEntry with no locality) listens on `127.0.0.1:port`; `extra_service_spec` is more
/// of the Service's spec.
pub fn one_backend(port: u16, extra_service_spec: &str) -> String {
    format!(
        "{GATEWAY_AND_ROUTE}apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: apps}}\nspec:\n  selector: {{app: svc}}\n  ports: [{{name: http, port: 80}}]\n{extra_service_spec}---\n\
apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: we, namespace: apps, labels: {{app: svc}}}}\nspec: {{address: 127.0.0.1, ports: {{http: {port}}}}}\n"
    )
}

/// A WorkloadEntry of `apps/svc` (label `app: svc`) for a backend at `addr`.
pub fn entry(name: &str, locality: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: apps, labels: {{app: svc}}}}\nspec: {{address: \"{}\", locality: {locality}, ports: {{http: {}}}}}\n---\n",
        addr.ip(),
        addr.port()
    )
}

/// The sum of the `locus_request_errors_total` samples whose labels contain every one of
/// `labels` (e.g. `side="client"`).
pub fn request_errors(metrics: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("locus_request_errors_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `GET /hostname` on `addr` until the gateway answers (at most about 3 s); whether the
/// answer was a 200.
pub async fn served_again(c: &HttpClient, addr: SocketAddr) -> bool {
    for _ in 0..300 {
        if let Some(r) = c.try_get(addr, "svc.test", "/hostname").await {
            return r.status == 200;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Asserts that `/metrics` of the admin API at `admin` blames no request error on an endpoint
/// (`side="upstream"`): the client's faults stayed the client's.
pub async fn assert_no_upstream_errors(admin: SocketAddr) {
    let metrics = HttpClient::default()
        .get(admin, "admin", "/metrics")
        .await
        .body;
    assert_eq!(
        request_errors(&metrics, &["side=\"upstream\""]),
        0.0,
        "{metrics}"
    );
}

/// Polls `what` (a number the echo backend reports, such as `/_echo/busy`) every 10 ms, for up
/// to 5 s, until `ok` holds for it; whether it did.
pub async fn echo_count_until(
    c: &HttpClient,
    backend: &Echo,
    what: &str,
    ok: impl Fn(u64) -> bool,
) -> bool {
    for _ in 0..500 {
        let n: u64 = c
            .get(backend.addr, "echo", what)
            .await
            .body
            .parse()
            .unwrap();
        if ok(n) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Polls `what` until it reaches `want`.
pub async fn wait_for_count(c: &HttpClient, backend: &Echo, what: &str, want: u64) {
    assert!(
        echo_count_until(c, backend, what, |n| n >= want).await,
        "{what} never reached {want}"
    );
}
