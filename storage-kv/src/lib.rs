//! Durable, ordered key-value storage on sled.
//!
//! The host keeps its metadata here (deployments, env, logs), one database per
//! app so that deleting an app deletes its folder and nothing else. Values are
//! stored as JSON by the typed helpers. Durable Object storage
//! ([`DurableStore`]) lives in the same database with atomic batches and group
//! commit.
//!
//! This crate must not know about V8 or HTTP.

mod commit;
mod durable;
mod error;
mod store;

pub use commit::{GroupCommit, Ticket};
pub use durable::{DurableStore, ListOptions, SledDurableStore, Write};
pub use error::KvError;
pub use store::{KvStore, Tree};
