//! Sources of resources. Each one produces whole [`crate::resources::ResourceSet`]s and hands
//! them to the gateway, which validates and applies them the same way whatever their origin.

pub mod cluster;
pub mod files;
pub mod lease;
