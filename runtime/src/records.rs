//! What the host stores about apps and functions (JSON in each app's sled).

use std::collections::BTreeMap;

use churn_isolates::LogLine;
use serde::{Deserialize, Serialize};

/// An app: created on its first deploy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_id: String,
    /// Hex secret that signs the app's end-user tokens.
    pub jwt_secret: String,
    /// An external identity provider's HS256 secret, trusted as well.
    #[serde(default)]
    pub trusted_jwt_secret: Option<String>,
    pub created_at: String,
    /// App-wide env vars (function vars override them).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Durable Object env vars, shared by every class of the app.
    #[serde(default)]
    pub do_env: BTreeMap<String, String>,
}

/// A deployed Durable Object class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: String,
    pub name: String,
    pub class_name: String,
    pub code: String,
    pub js: String,
    pub access_mode: String,
    pub status: String,
    pub error_message: Option<String>,
    pub created_at: String,
    pub last_deployed_at: String,
}

/// What a class has used, persisted across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ObjectUsageRecord {
    pub do_requests: u64,
    pub do_cpu_micros: u64,
}

/// A trigger as deployed: `{type, config}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub config: serde_json::Value,
}

/// A deployed function.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionRecord {
    pub id: String,
    pub name: String,
    pub version: u64,
    pub code: String,
    /// The transpiled module.
    pub js: String,
    pub description: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub timeout_ms: u64,
    /// 0 when the host runs without its CPU watchdog.
    #[serde(default)]
    pub cpu_limit_ms: u64,
    pub memory_limit_mb: u64,
    pub triggers: Vec<Trigger>,
    pub created_at: String,
    pub deployed_at: String,
}

/// Running totals for a function.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub invocation_count: u64,
    pub error_count: u64,
    pub total_duration_ms: u64,
    pub last_invoked: Option<String>,
}

/// One invocation, as `GET …/logs` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: String,
    pub request_id: String,
    pub timestamp: String,
    pub trigger: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: u64,
    /// CPU time spent while the invocation ran (an upper bound when it ran
    /// concurrently with others).
    #[serde(default)]
    pub cpu_ms: f64,
    pub error: Option<String>,
    pub stack: Option<String>,
    /// The limit that stopped it (`cpu`, `memory`, `timeout`), if one did.
    #[serde(default)]
    pub limit: Option<String>,
    pub logs: Vec<LogLine>,
    /// For cron runs: which scheduled time and attempt this was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronRun>,
}

/// A cron run's place in the schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CronRun {
    pub scheduled_time: String,
    pub attempt: u32,
    /// Run after a restart for a tick missed while the host was down.
    pub catch_up: bool,
    /// Not run: the previous run was still going.
    pub skipped: bool,
}
