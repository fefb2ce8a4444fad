//! The values that cross between the host and an isolate for one function call.
//!
//! Kept free of V8 types so the build script (which builds the snapshot) can
//! include this file as it is.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Who is calling, as the handler sees it in `ctx.caller.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerType {
    ServiceKey,
    EndUserJwt,
    Anonymous,
    Cron,
}

impl CallerType {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerType::ServiceKey => "service_key",
            CallerType::EndUserJwt => "end_user_jwt",
            CallerType::Anonymous => "anonymous",
            CallerType::Cron => "cron",
        }
    }
}

/// One request for a function, as plain data.
#[derive(Debug)]
pub struct Invocation {
    pub method: String,
    /// The public URL the client called.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub user_id: Option<String>,
    pub caller: CallerType,
    pub request_id: String,
    pub ip: String,
}

/// The status line and headers of a function's response, and its body.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ResponseBody,
}

/// A response body: whole (a string or bytes the script returned), or a
/// stream whose chunks end when the sender is dropped (an `Err` chunk means
/// the stream failed midway).
#[derive(Debug)]
pub enum ResponseBody {
    Full(Bytes),
    Stream(mpsc::Receiver<Result<Bytes, String>>),
}

/// One `console.*` line captured while a request ran.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

/// What became of an invocation once its response and its `waitUntil` work are
/// finished.
#[derive(Debug, Default)]
pub struct Completion {
    pub logs: Vec<LogLine>,
    /// CPU time the isolate spent while this invocation was in flight (with
    /// concurrent invocations, each is charged for all of it).
    pub cpu_micros: u64,
    /// The uncaught error, if the handler (or its stream) threw.
    pub error: Option<ScriptError>,
}

/// An exception thrown by user code, or the limit that stopped it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScriptError {
    pub message: String,
    pub stack: Option<String>,
    /// Set when the isolate was killed for exceeding a limit (`cpu`, `memory`).
    pub limit: Option<&'static str>,
}

/// Where the isolate sends the parts of its answer.
pub struct Reply {
    /// The response head; absent for events that have no response (alarms).
    pub head: Option<oneshot::Sender<Result<ResponseHead, ScriptError>>>,
    pub done: oneshot::Sender<Completion>,
}

/// What happens to a script.
#[derive(Debug)]
pub enum Event {
    /// An HTTP request (`handler` / a Durable Object's `fetch`).
    Request(Invocation),
    /// A Durable Object's alarm fires.
    Alarm { retry_count: u32 },
    /// A message arrived on one of the instance's WebSockets.
    SocketMessage { socket: u64, message: SocketMessage },
    /// One of the instance's WebSockets closed (`code` 1006 when it dropped).
    SocketClose {
        socket: u64,
        code: u16,
        reason: String,
        was_clean: bool,
    },
    /// One of the instance's WebSockets failed.
    SocketError { socket: u64, message: String },
}

/// A WebSocket message.
#[derive(Debug, Clone)]
pub enum SocketMessage {
    Text(String),
    Binary(Bytes),
}

/// An event, the Durable Object instance it is for (none for functions), and
/// the channels its answer goes back on.
pub struct Job {
    pub instance: Option<String>,
    pub event: Event,
    pub reply: Reply,
}

/// Deployed code as the isolate layer needs it: compiled JavaScript and its
/// environment. `revision` changes whenever any of it does.
pub struct FunctionCode {
    pub app: String,
    pub name: String,
    pub revision: u64,
    /// ES module JavaScript (already transpiled from TypeScript).
    pub js: Arc<str>,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub kind: CodeKind,
    /// CPU time the code's isolate has used, in microseconds (shared across
    /// revisions by whoever creates them).
    pub cpu_micros: Arc<AtomicU64>,
}

/// A function, or a Durable Object class with what its instances need.
pub enum CodeKind {
    Function,
    DurableObject(DurableObjectBinding),
}

/// The platform side of a Durable Object class.
#[derive(Clone)]
pub struct DurableObjectBinding {
    /// The exported class's name.
    pub class_name: String,
    /// Where instances keep their storage (the class's `name` is its namespace).
    pub store: Arc<dyn churn_storage_kv::DurableStore>,
    /// Told whenever an instance sets or deletes its alarm.
    pub alarms: Arc<dyn AlarmListener>,
    /// Instances with no activity for this long are dropped from memory.
    pub idle_ms: u64,
    /// The class's WebSockets (kept across evictions, closed on redeploy).
    pub sockets: Arc<crate::sockets::SocketRegistry>,
}

/// Learns of alarm changes so that it can fire them on time.
pub trait AlarmListener: Send + Sync {
    fn alarm_changed(&self, app: &str, class: &str, instance: &str, at_ms: Option<u64>);
}

impl std::fmt::Debug for FunctionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCode")
            .field("app", &self.app)
            .field("name", &self.name)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Per-function limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time to the response head.
    pub timeout_ms: u64,
    /// CPU time one uninterrupted stretch of JavaScript may take; 0 disables
    /// the watchdog.
    pub cpu_ms: u64,
    pub memory_limit_mb: u64,
    /// How long `waitUntil` work may run after the response.
    pub wait_until_ms: u64,
    /// Outbound `fetch`: concurrent subrequests per request, and the total
    /// time one may take.
    pub max_subrequests: u32,
    pub fetch_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            cpu_ms: 2_000,
            memory_limit_mb: 128,
            wait_until_ms: 30_000,
            max_subrequests: 50,
            fetch_timeout_ms: 30_000,
        }
    }
}
