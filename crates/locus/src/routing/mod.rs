//! The route table: listeners → hosts → ordered matches → weighted backends → one snapshot per
//! Service port.
//!
//! Built whole from a [`crate::model::Model`] and the gateway's identity (`build`), then
//! published through an `ArcSwap` by the snapshot writer; requests only read it (`table`).
//! Each Service port has its own `ArcSwap` of a [`locus_core::balancer::ServiceSnapshot`]
//! (`target`), which the writer alone swaps when health or load changes, without rebuilding
//! routes.

mod action;
mod build;
pub mod matching;
mod status;
mod table;
mod target;

pub use action::{Backend, RuleAction};
pub use build::Live;
pub use status::{ListenerStatus, RouteParentStatus};
pub use table::{EastWest, GatewaySelector, PortTable, RouteTable, Routed, EAST_WEST_HEADER};
pub use target::{zone_imbalance, LoadView, ServiceTarget};
