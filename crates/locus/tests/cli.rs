//! The command line as a CI pipeline uses it: manifests on standard input (`-f -`), `locus
//! check -o json|yaml`, `--strict` failing on warnings, shell completions, and `serve -f -`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Runs `locus ARGS` with `input` on standard input: (exit success, stdout, stderr).
fn run_with_stdin(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest() -> String {
    one_backend(9, "")
}

#[test]
fn check_reads_stdin_prints_json_or_yaml_and_strict_fails_on_warnings() {
    let m = manifest();
    let (ok, stdout, stderr) = run_with_stdin(&["check", "-f", "-", "-o", "json"], &m);
    assert!(ok, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["errors"], serde_json::json!([]));
    assert_eq!(doc["listeners"][0]["port"], 8080);
    assert_eq!(doc["services"][0]["service"], "apps/svc");
    assert_eq!(
        doc["services"][0]["buckets"][0]["endpoints"][0]["address"],
        "127.0.0.1:9"
    );

    let (ok, stdout, _) = run_with_stdin(&["check", "-f", "-", "-o", "yaml"], &m);
    assert!(ok);
    let doc: serde_json::Value = serde_yaml_ng::from_str(&stdout).unwrap();
    assert_eq!(doc["valid"], true);

    // A warning (a kind Locus does not use): passes, unless --strict.
    let warned = format!("{m}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n");
    let (ok, stdout, _) = run_with_stdin(&["check", "-f", "-"], &warned);
    assert!(ok);
    assert!(
        stdout.contains("kind Pod (v1) is not used by Locus"),
        "{stdout}"
    );
    let (ok, _, stderr) = run_with_stdin(&["check", "-f", "-", "--strict"], &warned);
    assert!(!ok);
    assert!(stderr.contains("--strict fails on warnings"), "{stderr}");
    let (ok, stdout, _) = run_with_stdin(&["check", "-f", "-", "--strict", "-o", "json"], &warned);
    assert!(!ok);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert!(doc["warnings"].to_string().contains("kind Pod"));

    // Invalid input: the error names standard input, the document and the field.
    let broken = m.replace("port: 80}]", "port: 0}]");
    let (ok, stdout, _) = run_with_stdin(&["check", "-f", "-", "-o", "json"], &broken);
    assert!(!ok);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["valid"], false);
    let error = doc["errors"][0].as_str().unwrap();
    assert!(
        error.starts_with("-: document") && error.contains("spec.ports[0].port"),
        "{error}"
    );
}

#[test]
fn shell_completions() {
    for (shell, marker) in [
        ("bash", "_locus()"),
        ("zsh", "#compdef locus"),
        ("fish", "complete -c locus"),
    ] {
        let out = run_ok(&["completion", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("check"), "{shell} completes subcommands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_manifests_from_stdin() {
    let backend = echo("stdin");
    let m = one_backend(backend.addr.port(), "");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "-f",
            "-",
            "--bind",
            "127.0.0.1",
            "--ephemeral-ports",
            "--admin",
            "off",
            "--poll-ms",
            "50",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut addr = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("listening port=8080 addr=") {
            addr = Some(rest.parse().unwrap());
        }
        if line.starts_with("applied generation=1") {
            break;
        }
    }
    let addr = addr.expect("the listener is printed before the first configuration");
    let r = HttpClient::default()
        .get(addr, "svc.test", "/hostname")
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((r.status, r.body.as_str()), (200, "stdin"));
}

/// `--privileged-port-offset`: a listener on port 80 is bound 80 + offset (what lets the
/// deploy manifest run without capabilities), and routes as port 80.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_ports_are_bound_at_an_offset() {
    let backend = echo("offset");
    let m = one_backend(backend.addr.port(), "").replace("port: 8080}", "port: 80}");
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let mut proc = Proc::spawn(&[
        "serve",
        "-f",
        dir.path().to_str().unwrap(),
        "--bind",
        "127.0.0.1",
        "--admin",
        "off",
        "--privileged-port-offset",
        "31000",
    ]);
    let line = proc.wait_line("listener", |l| l.starts_with("listening port=80 "));
    assert_eq!(line, "listening port=80 addr=127.0.0.1:31080");
    proc.wait_line("applied", |l| l.starts_with("applied generation=1"));
    let r = HttpClient::default()
        .get("127.0.0.1:31080".parse().unwrap(), "svc.test", "/hostname")
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "offset"));
}

/// Retry settings Locus honours pass `check --strict` (no warning): an HTTPRoute rule's
/// `retry` and a BackendTrafficPolicy's `perRetry.backOff`. Bad values name their field.
#[test]
fn retry_settings_pass_strict_check_and_bad_ones_name_their_field() {
    let with = |route_retry: &str, back_off: &str| {
        let m = manifest().replacen(
            "rules: [{backendRefs: [{name: svc, port: 80}]}]",
            &format!("rules: [{{retry: {route_retry}, backendRefs: [{{name: svc, port: 80}}]}}]"),
            1,
        );
        format!("{m}---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: svc, namespace: apps}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: svc}}]\n  retry:\n    numRetries: 3\n    perRetry: {{backOff: {back_off}}}\n")
    };
    let good = with(
        "{codes: [500, 503], attempts: 2, backoff: 100ms}",
        "{baseInterval: 10ms, maxInterval: 1s}",
    );
    assert!(good.contains("retry: {codes"));
    let (ok, stdout, stderr) = run_with_stdin(&["check", "-f", "-", "--strict"], &good);
    assert!(ok, "{stdout}{stderr}");
    for (bad, field) in [
        (
            with("{codes: [200]}", "{baseInterval: 10ms}"),
            "spec.rules[0].retry.codes[0]",
        ),
        (
            with("{backoff: soon}", "{baseInterval: 10ms}"),
            "spec.rules[0].retry.backoff",
        ),
        (
            with("{attempts: 1}", "{baseInterval: 1s, maxInterval: 10ms}"),
            "spec.retry.perRetry.backOff.maxInterval",
        ),
    ] {
        let (ok, stdout, stderr) = run_with_stdin(&["check", "-f", "-"], &bad);
        assert!(!ok, "{bad}");
        assert!(
            format!("{stdout}{stderr}").contains(&format!("field {field}")),
            "{field}: {stdout}{stderr}"
        );
    }
}
