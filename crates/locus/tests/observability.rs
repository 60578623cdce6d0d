//! Admin API and metrics: counters by locality after known traffic, bytes by locality
//! relation, `/debug/endpoints` showing an ejection, and an admin server that only listens on
//! loopback.

mod common;

use std::net::SocketAddr;

use common::*;

/// The Service behind [`GATEWAY_AND_ROUTE`], locality-blind.
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  selector: {app: svc}\n  ports: [{name: http, port: 80}]\n---\n";

/// The value of the sample whose line contains every one of `parts`.
fn sample(metrics: &str, name: &str, parts: &[&str]) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {parts:?} in:\n{metrics}"))
}

/// Every histogram is what PromQL's `histogram_quantile` needs: per series, `le` bounds
/// increasing to `+Inf`, cumulative counts that never decrease, and `_count` equal to the
/// `+Inf` bucket.
fn assert_histograms_are_quantile_ready(text: &str) {
    let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    let mut counts: std::collections::BTreeMap<String, f64> = Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap();
        if let Some((name, labels)) = name_labels.split_once("_bucket{") {
            let (le, rest): (Vec<&str>, Vec<&str>) = labels
                .trim_end_matches('}')
                .split(',')
                .partition(|l| l.starts_with("le="));
            let le = le[0].trim_start_matches("le=").trim_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series
                .entry(format!("{name}{{{}}}", rest.join(",")))
                .or_default()
                .push((bound, value));
        } else if let Some((name, labels)) = name_labels.split_once("_count{") {
            counts.insert(format!("{name}{{{}}}", labels.trim_end_matches('}')), value);
        }
    }
    assert!(!series.is_empty(), "no histogram in:\n{text}");
    for (key, buckets) in &series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key}: {buckets:?}"
        );
        let last = buckets.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{key} ends in +Inf");
        assert_eq!(
            counts.get(key),
            Some(&last.1),
            "{key}: _count is the +Inf bucket"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_bytes_by_locality() {
    let a = echo("same-zone");
    let b = echo("same-region");
    let c = echo("cross-region");
    let m = [
        GATEWAY_AND_ROUTE.to_owned() + SERVICE,
        entry("a", "r1/za", a.addr),
        entry("b", "r1/zb", b.addr),
        entry("c", "r2/zc", c.addr),
    ]
    .concat();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r1/za"]);
    let client = HttpClient::default();
    // Locality-blind: 30 requests spread 10/10/10, each answered with 1000 bytes.
    for _ in 0..30 {
        let r = client.get(gw.addr(8080), "svc.test", "/size/1000").await;
        assert_eq!(r.status, 200);
    }
    let text = client.get(gw.admin, "admin", "/metrics").await.body;
    for (zone, region, rel) in [
        ("za", "r1", "same-zone"),
        ("zb", "r1", "same-region"),
        ("zc", "r2", "cross-region"),
    ] {
        let labels = [
            "service=\"apps/svc:80\"",
            "source_zone=\"za\"",
            "source_region=\"r1\"",
            &format!("destination_zone=\"{zone}\""),
            &format!("destination_region=\"{region}\""),
            &format!("locality_relation=\"{rel}\""),
        ];
        let mut with_class = labels.to_vec();
        with_class.push("code_class=\"2xx\"");
        assert_eq!(
            sample(&text, "locus_requests_total", &with_class),
            10.0,
            "{rel}"
        );
        assert_eq!(
            sample(&text, "locus_response_bytes_total", &labels),
            10_000.0,
            "{rel}"
        );
    }
    // Cost: 10 kB across zones at $0.01/GB and 10 kB across regions at $0.02/GB.
    let zone_cost = sample(
        &text,
        "locus_estimated_transfer_cost_dollars_total",
        &["locality_relation=\"same-region\""],
    );
    assert!(
        (zone_cost - 10_000.0 * 0.01 / 1e9).abs() < 1e-12,
        "{zone_cost}"
    );
    assert!(
        sample(
            &text,
            "locus_request_duration_seconds_count",
            &["locality_relation=\"same-zone\""]
        ) >= 10.0
    );
    assert_eq!(
        sample(&text, "locus_config_reloads_total", &["result=\"success\""]),
        1.0
    );
    // Endpoint gauges sum to the total: healthy plus unhealthy.
    assert_eq!(
        sample(
            &text,
            "locus_endpoints",
            &["zone=\"zb\"", "state=\"healthy\""]
        ) + sample(
            &text,
            "locus_endpoints",
            &["zone=\"zb\"", "state=\"unhealthy\""]
        ),
        1.0
    );
    assert_histograms_are_quantile_ready(&text);
    assert_eq!(
        sample(&text, "locus_build_info", &[env!("CARGO_PKG_VERSION")]),
        1.0
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&text, name, &[]) > 0.0, "{name}");
    }
    // CPU time comes in 10 ms ticks: a gateway this young may not have used one yet, so the
    // counter must be there and never negative, not above zero.
    assert!(sample(&text, "process_cpu_seconds_total", &[]) >= 0.0);
    assert!(
        !text.contains("_fraction"),
        "ratios are named _ratio:\n{text}"
    );

    // The admin API answers readiness and explains the configuration.
    assert_eq!(client.get(gw.admin, "admin", "/ready").await.status, 200);
    let config = client.get(gw.admin, "admin", "/debug/config").await.json();
    assert_eq!(config["gateway"]["locality"], "r1/za");
    assert!(config["last_reload_error"].is_null());
    let eps = client
        .get(gw.admin, "admin", "/debug/endpoints")
        .await
        .json();
    let bytes = &eps["services"][0]["bytes"];
    assert_eq!(bytes["total"], 30_000);
    assert_eq!(bytes["cross_zone"], 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_endpoints_shows_an_ejection_and_zone_imbalance_is_reported() {
    let a = echo("a");
    let mut dead = echo("dead");
    let c = echo("c");
    let m = [
        GATEWAY_AND_ROUTE.to_owned()
            + &SERVICE.replace(
                "  selector: {app: svc}\n",
                "  selector: {app: svc}\n  trafficDistribution: PreferClose\n",
            ),
        entry("a", "r1/za", a.addr),
        entry("dead", "r1/za", dead.addr),
        entry("c", "r1/zb", c.addr),
    ]
    .concat();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r1/za"]);
    let client = HttpClient::default();
    // Two endpoints in za and one in zb: with each zone's traffic kept in-zone, c expects
    // 1.5x the mean load (the blog's uneven-zone situation).
    let text = client.get(gw.admin, "admin", "/metrics").await.body;
    let ratio = sample(
        &text,
        "locus_zone_imbalance_ratio",
        &["service=\"apps/svc:80\""],
    );
    assert!((ratio - 1.5).abs() < 1e-9, "{ratio}");
    dead.proc.kill();
    for _ in 0..4 {
        assert_eq!(
            client
                .get(gw.addr(8080), "svc.test", "/hostname")
                .await
                .status,
            200
        );
    }
    // The ejection reaches the snapshot writer as a message; its next snapshot (published a
    // moment later) is what /debug/endpoints shows: wait for it.
    let dead_endpoint = |eps: &serde_json::Value| {
        eps["services"][0]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["endpoints"].as_array().unwrap())
            .find(|e| e["address"] == dead.addr.to_string())
            .expect("the dead endpoint is listed")
            .clone()
    };
    let mut eps = serde_json::Value::Null;
    for _ in 0..500 {
        eps = client
            .get(gw.admin, "admin", "/debug/endpoints")
            .await
            .json();
        if dead_endpoint(&eps)["share"] == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let svc = &eps["services"][0];
    let dead_ep = &dead_endpoint(&eps);
    assert_eq!(dead_ep["ejected"], true, "{dead_ep}");
    assert_eq!(dead_ep["healthy"], false);
    assert!(dead_ep["ejected_for_ms"].as_u64().unwrap() > 0);
    assert_eq!(dead_ep["share"], 0.0);
    // One of two local endpoints is out: 1.4 × 1/2 = 70% stays local, 30% spills.
    let spilled = svc["spilled_fraction"].as_f64().unwrap();
    assert!((spilled - 0.3).abs() < 1e-9, "{spilled}");
    let text = client.get(gw.admin, "admin", "/metrics").await.body;
    assert_eq!(
        sample(
            &text,
            "locus_outlier_ejections_total",
            &["reason=\"consecutive-local-origin-failures\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "locus_upstream_connect_failures_total",
            &["service=\"apps/svc:80\""]
        ),
        1.0
    );
    // With the dead one out, one healthy endpoint per zone: balanced again.
    let ratio = sample(
        &text,
        "locus_zone_imbalance_ratio",
        &["service=\"apps/svc:80\""],
    );
    assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listens_on_loopback_only_by_default() {
    let a = echo("a");
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &[
            GATEWAY_AND_ROUTE.to_owned() + SERVICE,
            entry("a", "r1/za", a.addr),
        ]
        .concat(),
    );
    // Proxy listeners on every address, admin on its default (loopback) address but port 0.
    let mut proc = Proc::spawn(&[
        "serve",
        "-f",
        dir.path().to_str().unwrap(),
        "--ephemeral-ports",
        "--bind",
        "0.0.0.0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = proc.admin_addr();
    let proxy: SocketAddr = proc
        .wait_line("listener", |l| l.starts_with("listening port="))
        .split(" addr=")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    proc.wait_line("applied", |l| l.starts_with("applied "));
    assert_eq!(admin.ip().to_string(), "127.0.0.1");
    // 127.0.0.2 is another address of this host: the proxy answers there, the admin does not.
    let other = |port: u16| SocketAddr::from(([127, 0, 0, 2], port));
    assert!(std::net::TcpStream::connect(other(proxy.port())).is_ok());
    assert!(std::net::TcpStream::connect(other(admin.port())).is_err());
    assert!(std::net::TcpStream::connect(admin).is_ok());
    // The default admin address is loopback.
    let help = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("[default: 127.0.0.1:15000]"));
}
