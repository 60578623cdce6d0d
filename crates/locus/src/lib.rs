//! Locus: a locality-aware L7 gateway configured with the Kubernetes resources users already
//! know.
//!
//! Data flows one way: `resources` (manifests in) → `model` (validated meaning) → `routing`
//! (an immutable route table with one snapshot per Service port, swapped atomically) →
//! `proxy` (the request path, which only loads snapshots). `discovery` feeds resources in and
//! `gateway` ties it together; `echo`, `demo` and `check` are the tools around it.

pub mod admin;
pub mod check;
pub mod connect;
pub mod data_plane;
pub mod demo;
pub mod direct_io;
pub mod discovery;
pub mod echo;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod proxy;
pub mod resources;
pub mod routing;
pub mod tls;
pub mod writer;
