//! The startup snapshot built by `build.rs`, and the sources of the lazily
//! loaded scripts it did not consume.

pub static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/CHURN_SNAPSHOT.bin"));

include!(concat!(env!("OUT_DIR"), "/residual.rs"));
