//! The seed walkthrough (agentgateway's locality guide), step by step, through hot reload of
//! manifest files, with a real gateway process and three real backends.

mod common;

use common::*;
use locus::demo::{gateway_manifest, service_manifest, workload_entry_manifest, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough_through_hot_reload() {
    let a = echo("backend-zone-a");
    let b = echo("backend-zone-b");
    let r = echo("backend-region-b");
    let dir = tempdir();
    write(dir.path(), "gateway.yaml", &gateway_manifest());
    write(dir.path(), "service.yaml", &service_manifest(""));
    let entries = [
        ("we-zone-a", "region/zone", &a),
        ("we-zone-b", "region/other-zone", &b),
        ("we-region-b", "other-region/zone", &r),
    ];
    for (we, locality, e) in &entries {
        write(
            dir.path(),
            &format!("{we}.yaml"),
            &workload_entry_manifest(we, locality, e.addr.port()),
        );
    }
    let mut gw = Gw::start(
        dir.path(),
        &[
            "--locality",
            "region/zone",
            "--node",
            "gateway-node",
            "--verbose-errors",
        ],
    );
    let addr = gw.addr(80);
    let client = HttpClient::default();

    // Baseline: no trafficDistribution, traffic spreads over all three (round robin: 10 each).
    let c = client.count(addr, HOST, "/hostname", 30).await;
    assert_eq!(
        c,
        counts(&[
            ("backend-zone-a", 10),
            ("backend-zone-b", 10),
            ("backend-region-b", 10)
        ])
    );

    // PreferClose: everything stays in the gateway's zone.
    gw.apply(
        "service.yaml",
        &service_manifest("trafficDistribution: PreferClose"),
    );
    assert_eq!(
        client.count(addr, HOST, "/hostname", 20).await,
        counts(&[("backend-zone-a", 20)])
    );

    // Same-zone outage: spill to the same region.
    gw.delete("we-zone-a.yaml");
    assert_eq!(
        client.count(addr, HOST, "/hostname", 20).await,
        counts(&[("backend-zone-b", 20)])
    );

    // Region outage: spill to the other region.
    gw.delete("we-zone-b.yaml");
    assert_eq!(
        client.count(addr, HOST, "/hostname", 20).await,
        counts(&[("backend-region-b", 20)])
    );

    // Restore the entries: back to the local zone.
    for (we, locality, e) in &entries[..2] {
        gw.apply(
            &format!("{we}.yaml"),
            &workload_entry_manifest(we, locality, e.addr.port()),
        );
    }
    assert_eq!(
        client.count(addr, HOST, "/hostname", 20).await,
        counts(&[("backend-zone-a", 20)])
    );

    // internalTrafficPolicy: Local: WorkloadEntries have no node, so every request is a 503.
    gw.apply(
        "service.yaml",
        &service_manifest("internalTrafficPolicy: Local"),
    );
    let resp = client.get(addr, HOST, "/hostname").await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.headers["x-locus-error"], "no-endpoint");
    assert!(
        resp.body.contains(
            "internalTrafficPolicy is Local and no ready endpoint runs on node gateway-node"
        ),
        "{}",
        resp.body
    );
    assert_eq!(
        client.count(addr, HOST, "/hostname", 10).await,
        counts(&[("status 503", 10)])
    );
}

#[test]
fn demo_command_reproduces_the_seed() {
    let out = std::process::Command::new(BIN)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Every step matches the seed."), "{stdout}");
    assert!(!stdout.contains(" NO"), "{stdout}");
    // The Gloo Mesh walkthrough: two clusters, failover to v3 with no error, and back.
    assert!(
        stdout.contains("The Gloo Mesh locality failover walkthrough"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Every step matches the seed: the dead pods"),
        "{stdout}"
    );
    // The HTTPS step: TLS 1.3 with HTTP/2, then a rotated certificate.
    assert!(stdout.contains("TLSv1_3, ALPN h2"), "{stdout}");
    assert!(stdout.contains("Secret rotated"), "{stdout}");
}
