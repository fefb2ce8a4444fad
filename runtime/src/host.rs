//! The shared state of a running host.

use std::sync::Arc;

use crate::apps::Apps;
use crate::config::Config;
use crate::keys::ServiceKeys;

pub struct Host {
    pub config: Config,
    pub apps: Apps,
    pub keys: ServiceKeys,
    /// Base URL of this host as users reach it.
    pub public_base: String,
}

pub type SharedHost = Arc<Host>;
