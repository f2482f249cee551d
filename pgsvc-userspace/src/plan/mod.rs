//! Resolving a Pigsty inventory into clusters → services → servers, exactly as Pigsty renders HAProxy.

pub mod model;
pub use model::*;
