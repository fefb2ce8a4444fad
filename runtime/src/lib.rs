//! The churn host: configuration, the HTTP server, the control API (deploy,
//! env, auth, logs), the registry of apps and functions, and the wiring of
//! everything below it.
//!
//! It must not know V8 details: it hands plain [`churn_dispatcher::Invocation`]s
//! to the dispatcher and gets plain responses back.

mod api;
mod apps;
mod config;
mod cron;
mod data_plane;
mod error;
mod host;
mod http;
mod invocation_log;
mod keys;
mod object_plane;
mod realtime;
mod records;
mod run;
mod server;
mod validate;

use std::sync::Arc;

pub use config::{Config, ConfigError, ConfigFile};
pub use host::{Host, SharedHost};
pub use keys::{KeyError, ServiceKeys};
pub use server::serve;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot open the data directory: {0}")]
    Storage(#[from] churn_storage_kv::KvError),
}

/// The service keys of the data directory in `config`.
pub fn service_keys(config: &Config) -> Result<ServiceKeys, KeyError> {
    ServiceKeys::open(&config.data_dir.join("host"))
}

/// Opens the data directory, loads every deployment, and makes the first
/// service key if there is none (returned so the caller can show it once).
pub fn open_host(
    config: Config,
    bound: std::net::SocketAddr,
) -> Result<(SharedHost, Option<String>), StartError> {
    let keys = service_keys(&config)?;
    let first_key = if keys.is_empty() {
        Some(keys.create()?)
    } else {
        None
    };
    let apps = apps::Apps::open(
        &config.data_dir,
        apps::RegistryOptions {
            workers: config.workers,
            object_cpu_limit_ms: if config.watchdog {
                config.object_cpu_limit_ms
            } else {
                0
            },
            max_subrequests: config.max_subrequests,
            fetch_timeout_ms: config.fetch_timeout_ms,
            max_concurrency: config.max_concurrency,
            logs_per_function: config.logs_per_function,
            object_idle_ms: config.object_idle_ms,
            object_timeout_ms: config.object_event_timeout_ms,
        },
    )?;
    let public_base = config.public_base(bound);
    churn_isolates::set_net_policy(churn_isolates::NetPolicy {
        deny: config.fetch_denied(bound),
    });
    let host = Arc::new(Host {
        config,
        apps,
        keys,
        public_base,
        cron: std::sync::OnceLock::new(),
    });
    let scheduler = cron::CronScheduler::start(host.clone());
    for app in host.apps.all() {
        for f in app.functions()? {
            scheduler.update(&app.id, &f, true);
        }
    }
    let _ = host.cron.set(scheduler);
    Ok((host, first_key))
}
