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
    /// Set once the scheduler has started (right after the host opens).
    pub cron: std::sync::OnceLock<crate::cron::CronScheduler>,
}

impl Host {
    /// Tells the cron scheduler about a deployed (or redeployed) function.
    pub fn cron_update(&self, app: &str, f: &crate::records::FunctionRecord) {
        if let Some(cron) = self.cron.get() {
            cron.update(app, f, false);
        }
    }

    pub fn cron_remove(&self, app: &str, name: &str) {
        if let Some(cron) = self.cron.get() {
            cron.remove(app, name);
        }
    }
}

pub type SharedHost = Arc<Host>;
