//! Locus core: the pure, synchronous domain of a locality-aware gateway.
//!
//! Nothing here touches sockets, async runtimes or Kubernetes types: sources and the proxy live
//! in the `locus` crate. Everything in this crate is deterministic given its inputs (randomness
//! comes in through arguments), so it can be unit-, property- and micro-benchmark-tested.
//!
//! The flow is: [`Locality`] of the gateway and of each [`Endpoint`] → [`ranking`] into ordered
//! priority buckets for a [`RoutingPolicy`] → a [`balancer::ServiceSnapshot`] that picks an
//! endpoint per request without locks.

pub mod balancer;
pub mod capacity;
pub mod endpoint;
pub mod health;
pub mod load;
pub mod locality;
pub mod path;
pub mod policy;
pub mod ranking;

pub use endpoint::{Endpoint, EndpointState};
pub use health::{EndpointHealth, Outcome, OutlierPolicy, Spillover};
pub use locality::{Locality, LocalityError, Relation};
pub use policy::{Algorithm, BalancerConfig, HashOn, LocalityLbSetting};
pub use ranking::{Distribution, GatewayIdentity, RoutingPolicy, Tier};
