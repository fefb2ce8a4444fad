//! The deno_core extensions churn adds on top of Deno's Web API crates.

pub mod do_ops;
pub mod fn_ops;
pub mod shims;
pub mod ws_ops;
