//! Invalid manifests: clear errors naming file, document and field; the last good
//! configuration keeps serving; `locus check` explains and fails on bad input.

mod common;

use common::*;
use locus::demo::{gateway_manifest, service_manifest, workload_entry_manifest, HOST};

fn seed_dir(port: u16) -> tempfile::TempDir {
    let dir = tempdir();
    write(dir.path(), "gateway.yaml", &gateway_manifest());
    write(
        dir.path(),
        "service.yaml",
        &service_manifest("trafficDistribution: PreferClose"),
    );
    write(
        dir.path(),
        "we-zone-a.yaml",
        &workload_entry_manifest("we-zone-a", "region/zone", port),
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_is_reported_and_last_good_config_keeps_serving() {
    let a = echo("backend-zone-a");
    let dir = seed_dir(a.addr.port());
    let mut gw = Gw::start(dir.path(), &["--locality", "region/zone"]);
    let addr = gw.addr(80);
    let c = HttpClient::default();
    assert_eq!(c.get(addr, HOST, "/hostname").await.who(), "backend-zone-a");

    // A bad field value.
    write(
        dir.path(),
        "service.yaml",
        &service_manifest("trafficDistribution: PreferFarAway"),
    );
    let err = gw.wait_rejected();
    assert!(err.contains("service.yaml: document 1 (Service locus-demo/locality-svc): field spec.trafficDistribution"), "{err}");
    assert_eq!(c.get(addr, HOST, "/hostname").await.who(), "backend-zone-a");

    // A type error deep in a document.
    write(
        dir.path(),
        "service.yaml",
        &service_manifest("").replace("port: 80", "port: eighty"),
    );
    let err = gw.wait_rejected();
    assert!(err.contains("field spec.ports[0].port"), "{err}");
    assert_eq!(c.get(addr, HOST, "/hostname").await.who(), "backend-zone-a");

    // Broken YAML in a new file, and a bad locality.
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: [unclosed\n",
    );
    let err = gw.wait_rejected();
    assert!(err.contains("broken.yaml: document 1"), "{err}");
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    write(
        dir.path(),
        "service.yaml",
        &service_manifest("trafficDistribution: PreferClose"),
    );
    gw.wait_applied();
    write(
        dir.path(),
        "we-zone-a.yaml",
        &workload_entry_manifest("we-zone-a", "region//zone", a.addr.port()),
    );
    let err = gw.wait_rejected();
    assert!(
        err.contains("(WorkloadEntry locus-demo/we-zone-a): field spec.locality"),
        "{err}"
    );
    assert_eq!(c.get(addr, HOST, "/hostname").await.who(), "backend-zone-a");

    // Fixing it applies again.
    write(
        dir.path(),
        "we-zone-a.yaml",
        &workload_entry_manifest("we-zone-a", "region/zone", a.addr.port()),
    );
    gw.wait_applied();
    assert_eq!(c.get(addr, HOST, "/hostname").await.who(), "backend-zone-a");
}

#[test]
fn invalid_initial_config_fails_to_start_with_a_clear_error() {
    let dir = tempdir();
    write(dir.path(), "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  internalTrafficPolicy: Nearby\n");
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "-f",
            dir.path().to_str().unwrap(),
            "--ephemeral-ports",
            "--bind",
            "127.0.0.1",
            "--admin",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("svc.yaml: document 1 (Service default/s): field spec.internalTrafficPolicy: \"Nearby\" is not one of Cluster, Local"),
        "{stderr}"
    );
}

#[test]
fn check_explains_buckets_and_fails_on_bad_input() {
    let dir = tempdir();
    write(dir.path(), "gateway.yaml", &gateway_manifest());
    write(
        dir.path(),
        "service.yaml",
        &service_manifest("trafficDistribution: PreferClose"),
    );
    for (we, loc, port) in [
        ("we-zone-a", "region/zone", 9101),
        ("we-zone-b", "region/other-zone", 9102),
        ("we-region-b", "other-region/zone", 9103),
    ] {
        write(
            dir.path(),
            &format!("{we}.yaml"),
            &workload_entry_manifest(we, loc, port),
        );
    }
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
    );
    let out = std::process::Command::new(BIN)
        .args([
            "check",
            "-f",
            dir.path().to_str().unwrap(),
            "--locality",
            "region/zone",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Gateway locality: region/zone"), "{text}");
    assert!(
        text.contains("Service locus-demo/locality-svc port 80 (http)"),
        "{text}"
    );
    assert!(
        text.contains("mode: failover: trafficDistribution PreferClose"),
        "{text}"
    );
    let zone = text.find("bucket 0 same-zone").expect("zone bucket");
    let region = text.find("bucket 1 same-region").expect("region bucket");
    let elsewhere = text.find("bucket 2 elsewhere").expect("elsewhere bucket");
    assert!(zone < region && region < elsewhere);
    assert!(text[zone..region].contains("127.0.0.1:9101"), "{text}");
    assert!(
        text[zone..region].contains("<- traffic goes here"),
        "{text}"
    );
    assert!(text[region..elsewhere].contains("127.0.0.1:9102"), "{text}");
    assert!(text[elsewhere..].contains("127.0.0.1:9103"), "{text}");
    assert!(
        text.contains("kind Deployment (apps/v1) is not used by Locus; skipped"),
        "{text}"
    );

    // Without any locality, check warns that preferences cannot apply.
    let out = std::process::Command::new(BIN)
        .args(["check", "-f", dir.path().to_str().unwrap()])
        .env_remove("LOCALITY")
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the gateway's locality is unknown, so locality preferences cannot apply"),
        "{text}"
    );

    // Invalid input: non-zero exit and the error on stderr.
    write(dir.path(), "bad.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: x}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: nope}}]\n");
    let out = std::process::Command::new(BIN)
        .args(["check", "-f", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "bad.yaml: document 1 (HTTPRoute x/r): field spec.rules[0].matches[0].path.value"
        ),
        "{stderr}"
    );
}

#[test]
fn deploy_manifests_are_valid_and_read_the_node_name() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/locus.yaml");
    run_ok(&["check", "-f", path]);
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("fieldPath: spec.nodeName"));
    assert!(text.contains("path: /ready"));
    assert!(text.contains("topologyKey: topology.kubernetes.io/zone"));
    // The admin API (with /debug) stays on loopback; probes get their own address, and the
    // grace period covers the drain (5 s delay + 30 s for requests in flight).
    assert!(!text.contains("--admin"), "the admin API is exposed");
    assert!(text.contains("--probe-addr, \"0.0.0.0:15021\""));
    assert!(text.contains("terminationGracePeriodSeconds: 45"));
    // Least privilege: read-only verbs, and patch on the two status subresources only.
    let verbs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("verbs:"))
        .map(str::trim)
        .collect();
    assert!(
        verbs.iter().all(|v| *v == "verbs: [get, list, watch]"
            || *v == "verbs: [patch]"
            || *v == "verbs: [get, create, update]"),
        "{verbs:?}"
    );
    assert_eq!(verbs.iter().filter(|v| **v == "verbs: [patch]").count(), 1);
    assert!(text.contains(
        "resources: [gatewayclasses/status, gateways/status, httproutes/status, grpcroutes/status]\n  verbs: [patch]"
    ));
    // Writing more than status: the status writer's Lease only, in Locus's own namespace.
    assert!(text.contains("resources: [leases]\n  verbs: [get, create, update]"));
    assert_eq!(
        verbs
            .iter()
            .filter(|v| **v == "verbs: [get, create, update]")
            .count(),
        1
    );
}

/// `deploy/locus.yaml` against Pod Security "restricted", read with the Kubernetes types:
/// non-root, no privilege escalation, every capability dropped (none added but
/// NET_BIND_SERVICE), RuntimeDefault seccomp, no host namespaces, ports or paths; and what
/// makes it run: unprivileged ports the Service maps back, probes on the port the probe server
/// listens on, resources, a PodDisruptionBudget.
#[test]
fn deploy_manifests_pass_pod_security_restricted() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/locus.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind).cloned();
    let deployment: Deployment =
        serde_json::from_value(of_kind("Deployment").next().unwrap()).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.host_network != Some(true) && pod.host_pid != Some(true) && pod.host_ipc != Some(true)
    );
    assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let labels = {
        let d: Deployment = serde_json::from_value(of_kind("Deployment").next().unwrap()).unwrap();
        d.spec.unwrap().selector.match_labels.unwrap()
    };
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert!(sc.privileged != Some(true));
        let seccomp = sc
            .seccomp_profile
            .or(pod_sc.seccomp_profile.clone())
            .map(|p| p.type_);
        assert!(
            matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")),
            "{}: seccomp {seccomp:?}",
            c.name
        );
        assert_eq!(sc.run_as_non_root.or(pod_sc.run_as_non_root), Some(true));
        assert!(sc.run_as_user.or(pod_sc.run_as_user).unwrap_or(1) != 0);
        let caps = sc.capabilities.unwrap_or_default();
        assert!(caps.drop.iter().flatten().any(|c| c == "ALL"));
        assert!(caps.add.iter().flatten().all(|c| c == "NET_BIND_SERVICE"));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        for p in c.ports.iter().flatten() {
            assert!(p.host_port.is_none(), "no host ports");
            assert!(
                p.container_port >= 1024,
                "{}: port {} needs privileges a non-root container lacks",
                c.name,
                p.container_port
            );
        }
        // Listeners on 80 and 443 are bound at +10000, where the container ports say.
        let args = c.args.clone().unwrap_or_default();
        let offset = args
            .iter()
            .position(|a| a == "--privileged-port-offset")
            .map(|i| args[i + 1].parse::<i32>().unwrap())
            .unwrap();
        let port = |name: &str| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no port {name}"))
                .container_port
        };
        assert_eq!(port("http"), 80 + offset);
        assert_eq!(port("https"), 443 + offset);
        // Probes reach the probe server where --probe-addr puts it.
        let probe_addr = &args[args.iter().position(|a| a == "--probe-addr").unwrap() + 1];
        let probe_port: i32 = probe_addr.rsplit(':').next().unwrap().parse().unwrap();
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let target = &probe.as_ref().unwrap().http_get.as_ref().unwrap().port;
            let n = match target {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => port(s),
            };
            assert_eq!(n, probe_port, "probes must reach --probe-addr");
        }
        let res = c.resources.clone().unwrap();
        let requests = res.requests.unwrap();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        assert!(res.limits.unwrap().contains_key("memory"));
        // The Service's target ports are the container's.
        let svc: Service = serde_json::from_value(of_kind("Service").next().unwrap()).unwrap();
        for sp in svc.spec.unwrap().ports.unwrap() {
            match sp.target_port.unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                    port(&s);
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                    assert!(c.ports.iter().flatten().any(|p| p.container_port == n))
                }
            }
        }
    }
    let pdb: PodDisruptionBudget =
        serde_json::from_value(of_kind("PodDisruptionBudget").next().unwrap()).unwrap();
    assert_eq!(
        pdb.spec.unwrap().selector.unwrap().match_labels.unwrap(),
        labels
    );
}
