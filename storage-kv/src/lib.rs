//! Durable, ordered key-value storage on sled.
//!
//! The host keeps its metadata here (deployments, env, logs), one database per
//! app so that deleting an app deletes its folder and nothing else. Values are
//! stored as JSON by the typed helpers.
//!
//! This crate must not know about V8 or HTTP.

mod error;
mod store;

pub use error::KvError;
pub use store::{KvStore, Tree};
