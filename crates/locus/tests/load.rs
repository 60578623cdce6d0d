//! Live proof of load-aware spill: two gateway processes in two zones, one receiving twice the
//! traffic of the other, in front of backends whose latency grows with load (`echo
//! --work-ms`). Priority locality would load the busy zone's endpoint with 2/3 of all requests;
//! with `locus.io/load-spill` the busy zone's gateway moves part of its traffic across, the
//! quiet zone's gateway moves none (never into a hotter bucket), no endpoint gets more than
//! 1.1× the mean, and the spill goes back to zero once the load falls.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::time::Instant;

fn manifests(entries: &str) -> String {
    format!(
        "{GATEWAY_AND_ROUTE}apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps\n  annotations: {{locus.io/load-spill: \"on\"}}\nspec:\n  selector: {{app: svc}}\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n---\n{entries}"
    )
}

/// Exponential inter-arrival times (a Poisson process, as independent clients make), from a
/// fixed seed so every run sends the same schedule. Evenly spaced requests would never queue
/// behind each other, and latency would not show load.
fn arrivals(rate: f64, seed: u64) -> impl Iterator<Item = Duration> {
    let mut state = seed;
    let mut at = 0.0;
    std::iter::from_fn(move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        at += -u.ln() / rate;
        Some(Duration::from_secs_f64(at))
    })
}

/// Sends requests open-loop (at a rate, whatever the latency) to each gateway for `duration`;
/// returns, per gateway, who answered the requests sent in the last `measure` of it.
async fn open_loop(
    client: &Arc<HttpClient>,
    targets: &[(SocketAddr, f64)],
    duration: Duration,
    measure: Duration,
) -> Vec<BTreeMap<String, usize>> {
    let start = Instant::now();
    let measure_from = start + duration - measure;
    let mut tasks = Vec::new();
    for (seed, &(addr, rate)) in targets.iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut requests = Vec::new();
            for offset in arrivals(rate, seed as u64 + 1) {
                let at = start + offset;
                if at >= start + duration {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let client = client.clone();
                let counted = at >= measure_from;
                requests.push(tokio::spawn(async move {
                    let who = match client.try_get(addr, "svc.test", "/hostname").await {
                        Some(r) => r.who(),
                        None => "failed".to_owned(),
                    };
                    counted.then_some(who)
                }));
            }
            let mut out: BTreeMap<String, usize> = BTreeMap::new();
            for r in requests {
                if let Some(who) = r.await.unwrap() {
                    *out.entry(who).or_default() += 1;
                }
            }
            out
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn load_spill(client: &HttpClient, gw: &Gw) -> serde_json::Value {
    let doc = client
        .get(gw.admin, "admin", "/debug/endpoints")
        .await
        .json();
    doc["services"][0]["load_spill"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_zone_with_twice_the_traffic_overloads_no_endpoint() {
    // 2.5 ms of work per request in progress: at the balanced 200 req/s each endpoint is half
    // busy; priority locality would put 267 req/s (two thirds busy) on zone-a's.
    let a = echo_with("zone-a-1", &["--work-ms", "2.5"]);
    let b = echo_with("zone-b-1", &["--work-ms", "2.5"]);
    let dir = tempdir();
    let text = manifests(&(entry("a", "r/zone-a", a.addr) + &entry("b", "r/zone-b", b.addr)));
    write(dir.path(), "all.yaml", &text);
    let interval = ["--load-spill-interval-ms", "500"];
    let mut gw_a = Gw::start(
        dir.path(),
        &[&["--locality", "r/zone-a"][..], &interval].concat(),
    );
    let gw_b = Gw::start(
        dir.path(),
        &[&["--locality", "r/zone-b"][..], &interval].concat(),
    );
    let client = Arc::new(HttpClient::default());

    // Seven seconds to converge (14 steps of the controller), the last eight measured.
    let per_gateway = open_loop(
        &client,
        &[(gw_a.addr(8080), 267.0), (gw_b.addr(8080), 133.0)],
        Duration::from_secs(15),
        Duration::from_secs(8),
    )
    .await;
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for (who, n) in per_gateway.iter().flatten() {
        *shares.entry(who.clone()).or_default() += n;
    }
    let total: usize = shares.values().sum();
    assert!(total >= 2_800, "{shares:?}");
    assert_eq!(shares.len(), 2, "only the two backends answer: {shares:?}");
    let mean = total as f64 / 2.0;
    let max = *shares.values().max().unwrap() as f64;
    assert!(
        max / mean <= 1.1,
        "max/mean {:.3} (priority locality alone gives 1.33): {shares:?}",
        max / mean
    );

    let spill_a = load_spill(&client, &gw_a).await;
    let spill_b = load_spill(&client, &gw_b).await;
    eprintln!("shares {per_gateway:?}\nA {spill_a}\nB {spill_b}");
    assert!(spill_a["fraction"].as_f64().unwrap() > 0.0, "{spill_a}");
    assert_eq!(spill_a["closest_bucket"], "same-zone", "{spill_a}");
    // The quiet zone's endpoint is the less busy one: its gateway keeps its traffic local
    // (but for a probe of the other zone now and then), and the busy zone's gateway sends
    // about the quarter of its traffic that balances the endpoints — not more, which would
    // only trade traffic across zones.
    let cross = |g: usize, zone: &str| {
        let m = &per_gateway[g];
        m.get(zone).copied().unwrap_or(0) as f64 / m.values().sum::<usize>() as f64
    };
    assert!(cross(1, "zone-a-1") <= 0.03, "{per_gateway:?}");
    let spilled = cross(0, "zone-b-1");
    assert!((0.15..=0.35).contains(&spilled), "{per_gateway:?}");
    let metrics = client.get(gw_a.admin, "admin", "/metrics").await.body;
    assert!(
        metrics.contains("locus_load_spill_ratio{service=\"apps/svc:80\"}"),
        "{metrics}"
    );

    // A reload keeps the spill in force (with no traffic, the controller holds; the carry-over
    // itself is unit-tested in load_spill.rs).
    let before = spill_a["fraction"].as_f64().unwrap();
    gw_a.apply("all.yaml", &format!("{text}# edited\n"));
    let after = load_spill(&client, &gw_a).await;
    assert_eq!(after["fraction"].as_f64().unwrap(), before, "{after}");

    // Light load: queueing disappears and the spill comes back step by step.
    let light = tokio::spawn({
        let client = client.clone();
        let addr = gw_a.addr(8080);
        async move {
            open_loop(
                &client,
                &[(addr, 20.0)],
                Duration::from_secs(20),
                Duration::ZERO,
            )
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spill = load_spill(&client, &gw_a).await;
        if spill["fraction"].as_f64().unwrap() == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "spill never came back: {spill}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    light.abort();
}

fn check(dir: &std::path::Path) -> std::process::Output {
    run(&[
        "check",
        "-f",
        dir.to_str().unwrap(),
        "--locality",
        "r/zone-a",
    ])
}

#[test]
fn load_spill_settings_are_checked_and_explained() {
    let dir = tempdir();
    let entries = entry("a", "r/zone-a", "127.0.0.1:9".parse().unwrap());
    let with = |annotations: &str| {
        manifests(&entries).replace(
            "{locus.io/load-spill: \"on\"}",
            &format!("{{{annotations}}}"),
        )
    };
    write(
        dir.path(),
        "all.yaml",
        &with("locus.io/load-spill: \"on\", locus.io/load-spill-high: \"1.5\""),
    );
    let out = check(dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("load-aware spill: on; moves traffic from the closest bucket to the next in 5% steps while the closest is 1.5x busier"),
        "{text}"
    );

    for (annotations, field, why) in [
        ("locus.io/load-spill: \"maybe\"", "locus.io/load-spill", "is not on or off"),
        ("locus.io/load-spill: \"on\", locus.io/load-spill-high: \"-1\"", "locus.io/load-spill-high", "is not a positive factor"),
        ("locus.io/load-spill: \"on\", locus.io/load-spill-high: \"1.1\", locus.io/load-spill-low: \"1.2\"", "locus.io/load-spill-low", "no hysteresis"),
        ("locus.io/load-spill: \"on\", locus.io/load-spill-high: \"0.9\"", "locus.io/load-spill-high", "traffic would spill into a busier bucket"),
        ("locus.io/load-spill: \"on\", locus.io/load-spill-high: \"1.2\", locus.io/load-spill-low: \"1.2\"", "locus.io/load-spill-low", "no hysteresis"),
    ] {
        write(dir.path(), "all.yaml", &with(annotations));
        let out = check(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{annotations}");
        assert!(
            stderr.contains(&format!("(Service apps/svc): field metadata.annotations.{field}")) && stderr.contains(why),
            "{stderr}"
        );
    }

    // On a locality-blind Service there is nothing to balance between: said, not ignored.
    write(
        dir.path(),
        "all.yaml",
        &with("locus.io/load-spill: \"on\"").replace("  trafficDistribution: PreferClose\n", ""),
    );
    let out = check(dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("locus.io/load-spill has no effect: the Service routes over one bucket"),
        "{text}"
    );

    // A tuning knob without the switch is not silently ignored.
    write(
        dir.path(),
        "all.yaml",
        &with("locus.io/load-spill-high: \"1.5\""),
    );
    let out = check(dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(
            "locus.io/load-spill-high has no effect without locus.io/load-spill: \"on\"; ignored"
        ),
        "{text}"
    );
}
