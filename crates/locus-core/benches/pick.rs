//! Micro-benchmarks of the request-path choice: picking an endpoint from a Service snapshot,
//! and rebuilding a snapshot after one endpoint changes.
//!
//! `cargo bench -p locus-core` runs them; CI compiles them (`cargo bench --no-run`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use locus_core::balancer::ServiceSnapshot;
use locus_core::{Distribution, Endpoint, GatewayIdentity, Locality, RoutingPolicy};

/// `n` endpoints spread over `localities` zones in two regions; the gateway is in the first.
fn endpoints(n: usize, localities: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let l = i % localities;
            let region = if l.is_multiple_of(2) { "r1" } else { "r2" };
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
            Endpoint::new(
                SocketAddr::new(ip, 8080),
                Locality::new(region, &format!("z{l}"), ""),
            )
            .with_weight(1 + (i % 3) as u32)
        })
        .collect()
}

fn gateway() -> GatewayIdentity {
    GatewayIdentity {
        locality: Locality::new("r1", "z0", ""),
        node: None,
        labels: Default::default(),
        cluster: None,
    }
}

const POLICIES: [(&str, RoutingPolicy); 2] = [
    (
        "blind",
        RoutingPolicy {
            distribution: Distribution::Any,
            strict_local: false,
        },
    ),
    (
        "prefer-close",
        RoutingPolicy {
            distribution: Distribution::PreferClose,
            strict_local: false,
        },
    ),
];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (name, policy) in POLICIES {
        for (n, localities) in [(10, 1), (1_000, 10), (10_000, 100), (10_000, 1)] {
            let snap = ServiceSnapshot::build(gateway(), policy, endpoints(n, localities));
            group.bench_with_input(
                BenchmarkId::new(name, format!("{n}ep-{localities}loc")),
                &snap,
                |b, snap| b.iter(|| black_box(snap.pick().unwrap())),
            );
        }
    }
    // The failover case: the gateway's zone has no ready endpoint, the pick skips a bucket.
    let mut eps = endpoints(10_000, 100);
    for ep in eps.iter_mut().filter(|e| e.locality.zone == "z0") {
        ep.state = locus_core::EndpointState::NotReady;
    }
    let snap = ServiceSnapshot::build(gateway(), POLICIES[1].1, eps);
    group.bench_function("prefer-close/10000ep-100loc-local-down", |b| {
        b.iter(|| black_box(snap.pick().unwrap()))
    });
    // Load-aware spill moving a quarter of the closest bucket's traffic: the bucket is drawn
    // at random (a hashed counter) instead of from the low-discrepancy sequence.
    let eps = endpoints(10_000, 100);
    let health = eps.iter().map(|_| Default::default()).collect();
    let snap = ServiceSnapshot::build_with_health(
        gateway(),
        POLICIES[1].1,
        Default::default(),
        locus_core::balancer::HealthOptions {
            load_spill: 0.25,
            ..Default::default()
        },
        eps,
        health,
        0,
    );
    group.bench_function("prefer-close/10000ep-100loc-load-spill-25pct", |b| {
        b.iter(|| black_box(snap.pick().unwrap()))
    });
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(20);
    let base = endpoints(10_000, 100);
    let mut flip = false;
    group.bench_function("10000ep-100loc-one-changed", |b| {
        b.iter(|| {
            let mut eps = base.clone();
            flip = !flip;
            eps[17].state = if flip {
                locus_core::EndpointState::NotReady
            } else {
                locus_core::EndpointState::Ready
            };
            black_box(ServiceSnapshot::build(gateway(), POLICIES[1].1, eps))
        })
    });
    group.finish();
}

criterion_group!(benches, pick, rebuild);
criterion_main!(benches);
