//! The deno_core extensions churn adds on top of Deno's Web API crates.

pub mod fn_ops;
pub mod shims;
