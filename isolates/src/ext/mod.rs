//! The deno_core extensions churn adds on top of Deno's Web API crates.

pub mod do_ops;
mod fn_events;
pub mod fn_inbox;
pub mod fn_ops;
mod fn_respond;
pub mod shims;
pub mod ws_ops;
