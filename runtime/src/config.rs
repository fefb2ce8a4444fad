//! Host configuration: defaults, then `churn.toml`, then `CHURN_*` environment
//! variables, then command-line flags (each overriding the one before).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the host needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Base of the URLs handed back to users (defaults to `http://<listen>`).
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    /// Worker threads serving HTTP and running isolates (0: one per core).
    pub workers: usize,
    pub default_timeout_ms: u64,
    /// CPU time one uninterrupted stretch of a function's JavaScript may take.
    pub default_cpu_limit_ms: u64,
    pub default_memory_limit_mb: u64,
    pub max_concurrency: usize,
    /// Warm isolates unused this long are dropped.
    pub isolate_idle_secs: u64,
    /// Log entries kept per function.
    pub logs_per_function: usize,
    /// Apps are also reached as `<app_id>.<domain>` (e.g. `churn.localhost`).
    pub domain: Option<String>,
    /// Durable Object instances idle this long are evicted from memory.
    pub object_idle_ms: u64,
    /// Longest a Durable Object event may take to answer.
    pub object_event_timeout_ms: u64,
    /// CPU time per Durable Object event.
    pub object_cpu_limit_ms: u64,
    /// Stop runaway scripts (turning it off only makes sense for measuring
    /// what the watchdog costs).
    pub watchdog: bool,
    /// Concurrent outbound fetches per request.
    pub max_subrequests: u32,
    /// Total time one outbound fetch may take.
    pub fetch_timeout_ms: u64,
    /// Let user code fetch private, loopback and link-local addresses.
    pub fetch_allow_private: bool,
    /// More hosts, IPs or CIDR ranges user code may not fetch.
    pub fetch_deny: Vec<String>,
    /// After downtime, a cron tick missed this recently is run once.
    pub cron_catch_up_ms: u64,
    /// How often the realtime endpoint sends a heartbeat frame.
    pub realtime_heartbeat_ms: u64,
    /// Enables `/_churn/test/*` routes used by the test suite (never in
    /// production).
    pub test_routes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from("churn-data"),
            public_url: None,
            max_body_bytes: 10 * 1024 * 1024,
            workers: 0,
            default_timeout_ms: 30_000,
            default_cpu_limit_ms: 2_000,
            default_memory_limit_mb: 128,
            max_concurrency: 100,
            isolate_idle_secs: 900,
            logs_per_function: 500,
            domain: None,
            object_idle_ms: 70_000,
            object_event_timeout_ms: 30_000,
            object_cpu_limit_ms: 30_000,
            watchdog: true,
            max_subrequests: 50,
            fetch_timeout_ms: 30_000,
            fetch_allow_private: false,
            fetch_deny: Vec::new(),
            test_routes: false,
            cron_catch_up_ms: 3_600_000,
            realtime_heartbeat_ms: 30_000,
        }
    }
}

/// Values from the file or the environment; absent ones keep the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub default_timeout_ms: Option<u64>,
    pub default_cpu_limit_ms: Option<u64>,
    pub default_memory_limit_mb: Option<u64>,
    pub max_concurrency: Option<usize>,
    pub isolate_idle_secs: Option<u64>,
    pub logs_per_function: Option<usize>,
    pub domain: Option<String>,
    pub object_idle_ms: Option<u64>,
    pub object_event_timeout_ms: Option<u64>,
    pub object_cpu_limit_ms: Option<u64>,
    pub watchdog: Option<bool>,
    pub max_subrequests: Option<u32>,
    pub fetch_timeout_ms: Option<u64>,
    pub fetch_allow_private: Option<bool>,
    pub fetch_deny: Option<Vec<String>>,
    pub test_routes: Option<bool>,
    pub cron_catch_up_ms: Option<u64>,
    pub realtime_heartbeat_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?} is invalid: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads `CHURN_<FIELD>` variables from `vars`.
    pub fn from_env(vars: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn parse<T: std::str::FromStr>(
            vars: &impl Fn(&str) -> Option<String>,
            name: &str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match vars(name) {
                None => Ok(None),
                Some(value) => value
                    .parse()
                    .map(Some)
                    .map_err(|e: T::Err| ConfigError::Env {
                        name: name.to_string(),
                        message: e.to_string(),
                        value,
                    }),
            }
        }
        Ok(ConfigFile {
            listen: parse(&vars, "CHURN_LISTEN")?,
            data_dir: vars("CHURN_DATA_DIR").map(PathBuf::from),
            public_url: vars("CHURN_PUBLIC_URL"),
            max_body_bytes: parse(&vars, "CHURN_MAX_BODY_BYTES")?,
            workers: parse(&vars, "CHURN_WORKERS")?,
            default_timeout_ms: parse(&vars, "CHURN_DEFAULT_TIMEOUT_MS")?,
            default_cpu_limit_ms: parse(&vars, "CHURN_DEFAULT_CPU_LIMIT_MS")?,
            default_memory_limit_mb: parse(&vars, "CHURN_DEFAULT_MEMORY_LIMIT_MB")?,
            max_concurrency: parse(&vars, "CHURN_MAX_CONCURRENCY")?,
            isolate_idle_secs: parse(&vars, "CHURN_ISOLATE_IDLE_SECS")?,
            logs_per_function: parse(&vars, "CHURN_LOGS_PER_FUNCTION")?,
            domain: vars("CHURN_DOMAIN"),
            object_idle_ms: parse(&vars, "CHURN_OBJECT_IDLE_MS")?,
            object_event_timeout_ms: parse(&vars, "CHURN_OBJECT_EVENT_TIMEOUT_MS")?,
            object_cpu_limit_ms: parse(&vars, "CHURN_OBJECT_CPU_LIMIT_MS")?,
            watchdog: parse(&vars, "CHURN_WATCHDOG")?,
            max_subrequests: parse(&vars, "CHURN_MAX_SUBREQUESTS")?,
            fetch_timeout_ms: parse(&vars, "CHURN_FETCH_TIMEOUT_MS")?,
            fetch_allow_private: parse(&vars, "CHURN_FETCH_ALLOW_PRIVATE")?,
            fetch_deny: vars("CHURN_FETCH_DENY").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            test_routes: parse(&vars, "CHURN_TEST_ROUTES")?,
            cron_catch_up_ms: parse(&vars, "CHURN_CRON_CATCH_UP_MS")?,
            realtime_heartbeat_ms: parse(&vars, "CHURN_REALTIME_HEARTBEAT_MS")?,
        })
    }
}

impl Config {
    /// Applies `layer` on top of `self`.
    pub fn merge(mut self, layer: ConfigFile) -> Self {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = layer.$field { self.$field = v; } )* };
        }
        take!(
            listen,
            data_dir,
            max_body_bytes,
            workers,
            default_timeout_ms,
            default_cpu_limit_ms,
            default_memory_limit_mb,
            max_concurrency,
            isolate_idle_secs,
            logs_per_function,
            object_idle_ms,
            object_event_timeout_ms,
            object_cpu_limit_ms,
            watchdog,
            max_subrequests,
            fetch_timeout_ms,
            fetch_allow_private,
            fetch_deny,
            test_routes,
            cron_catch_up_ms,
            realtime_heartbeat_ms
        );
        if layer.public_url.is_some() {
            self.public_url = layer.public_url;
        }
        if layer.domain.is_some() {
            self.domain = layer.domain;
        }
        self
    }

    /// Where user code may not fetch: private ranges (unless allowed), the
    /// configured extra entries, and this host itself (its control API).
    pub fn fetch_denied(&self, bound: SocketAddr) -> Vec<String> {
        let mut deny: Vec<String> = Vec::new();
        if !self.fetch_allow_private {
            deny.extend(
                [
                    "0.0.0.0/8",
                    "10.0.0.0/8",
                    "100.64.0.0/10",
                    "127.0.0.0/8",
                    "169.254.0.0/16",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    // deno_permissions takes IPv6 only as single bracketed
                    // addresses, not ranges.
                    "[::1]",
                    "[::]",
                ]
                .map(str::to_string),
            );
        }
        deny.extend(self.fetch_deny.iter().cloned());
        let port = bound.port();
        deny.push(format!("{}:{port}", bound.ip()));
        deny.push(format!("localhost:{port}"));
        if bound.ip().is_unspecified() {
            deny.push(format!("127.0.0.1:{port}"));
        }
        deny
    }

    /// The base URL users reach this host at, without a trailing slash.
    pub fn public_base(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let file: ConfigFile =
            toml::from_str("listen = \"127.0.0.1:9000\"\nmax_concurrency = 7").expect("toml");
        let env =
            ConfigFile::from_env(|k| (k == "CHURN_LISTEN").then(|| "127.0.0.1:9001".to_string()))
                .expect("env");
        let c = Config::default().merge(file).merge(env);
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.max_concurrency, 7);
        assert!(ConfigFile::from_env(|_| Some("x".into())).is_err());
        assert!(toml::from_str::<ConfigFile>("nope = 1").is_err());
    }
}
