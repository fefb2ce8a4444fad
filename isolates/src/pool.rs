//! The set of warm isolates: at most one per deployed function, each on its own
//! thread (a V8 isolate is entered on creation and must stay on its thread).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::InvokeError;
use crate::invocation::{
    CodeKind, Completion, Event, FunctionCode, Invocation, Job, Reply, ResponseHead,
};
use crate::worker::run_isolate;

/// `(app, name, is a Durable Object class)`.
type Key = (String, String, bool);

fn key_of(code: &FunctionCode) -> Key {
    (
        code.app.clone(),
        code.name.clone(),
        matches!(code.kind, CodeKind::DurableObject(_)),
    )
}

struct Entry {
    revision: u64,
    jobs: mpsc::UnboundedSender<Job>,
    last_used: Instant,
}

/// Warm isolates keyed by `(app, function)`; a new revision replaces the old
/// isolate, which finishes the requests it already has and then exits.
#[derive(Clone, Default)]
pub struct IsolatePool {
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
}

/// An invocation under way: the response head (or why there is none), and a
/// receiver for the final record (logs, uncaught error), which arrives once the
/// body is finished and `waitUntil` work settled.
pub struct Started {
    pub head: Result<ResponseHead, InvokeError>,
    pub completion: oneshot::Receiver<Completion>,
}

fn spawn_isolate(code: Arc<FunctionCode>) -> Result<mpsc::UnboundedSender<Job>, InvokeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let name = format!("isolate:{}/{}", code.app, code.name);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start an isolate thread runtime: {e}");
                    return;
                }
            };
            runtime.block_on(run_isolate(code, rx));
        })
        .map_err(|e| InvokeError::IsolateGone(format!("cannot start an isolate thread: {e}")))?;
    Ok(tx)
}

impl IsolatePool {
    pub fn new() -> Self {
        Self::default()
    }

    fn dispatch(&self, code: &Arc<FunctionCode>, job: Job) -> Result<(), InvokeError> {
        let key = key_of(code);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut job = job;
        if let Some(entry) = entries.get_mut(&key) {
            if entry.revision == code.revision {
                entry.last_used = Instant::now();
                match entry.jobs.send(job) {
                    Ok(()) => return Ok(()),
                    // The isolate died: start a new one below.
                    Err(mpsc::error::SendError(returned)) => job = returned,
                }
            }
        }
        let jobs = spawn_isolate(code.clone())?;
        let sent = jobs.send(job);
        entries.insert(
            key,
            Entry {
                revision: code.revision,
                jobs,
                last_used: Instant::now(),
            },
        );
        sent.map_err(|_| InvokeError::IsolateGone("the new isolate exited at once".to_string()))
    }

    /// Runs one invocation and waits for the response head (not the body).
    /// `instance` names the Durable Object instance for class code.
    pub async fn invoke(
        &self,
        code: &Arc<FunctionCode>,
        instance: Option<String>,
        invocation: Invocation,
    ) -> Started {
        let (head_tx, head_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let job = Job {
            instance,
            event: Event::Request(invocation),
            reply: Reply {
                head: Some(head_tx),
                done: done_tx,
            },
        };
        if let Err(e) = self.dispatch(code, job) {
            return Started {
                head: Err(e),
                completion: done_rx,
            };
        }
        let timeout_ms = code.limits.timeout_ms;
        let head = match tokio::time::timeout(Duration::from_millis(timeout_ms), head_rx).await {
            Err(_) => Err(InvokeError::Timeout { timeout_ms }),
            Ok(Err(_)) => Err(InvokeError::IsolateGone(
                "the isolate dropped the request".to_string(),
            )),
            Ok(Ok(Err(script))) => Err(InvokeError::Script(script)),
            Ok(Ok(Ok(head))) => Ok(head),
        };
        Started {
            head,
            completion: done_rx,
        }
    }

    /// Fires a Durable Object instance's alarm; resolves with how it went.
    pub async fn alarm(
        &self,
        code: &Arc<FunctionCode>,
        instance: String,
        retry_count: u32,
    ) -> Completion {
        let (done_tx, done_rx) = oneshot::channel();
        let job = Job {
            instance: Some(instance),
            event: Event::Alarm { retry_count },
            reply: Reply {
                head: None,
                done: done_tx,
            },
        };
        if let Err(e) = self.dispatch(code, job) {
            return Completion {
                logs: Vec::new(),
                error: Some(crate::ScriptError {
                    message: e.to_string(),
                    stack: None,
                }),
            };
        }
        done_rx.await.unwrap_or_else(|_| Completion {
            logs: Vec::new(),
            error: Some(crate::ScriptError {
                message: "the isolate stopped before the alarm finished".to_string(),
                stack: None,
            }),
        })
    }

    /// Retires the isolate of one function or class (deleted or redeployed):
    /// it finishes the events it has, then exits.
    pub fn retire(&self, app: &str, name: &str, durable_object: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&(app.to_string(), name.to_string(), durable_object));
    }

    /// Retires every isolate of an app.
    pub fn retire_app(&self, app: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(a, _, _), _| a != app);
    }

    /// Retires isolates that served nothing for `max_idle`.
    pub fn evict_idle(&self, max_idle: Duration) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        entries.retain(|_, e| e.last_used.elapsed() < max_idle && !e.jobs.is_closed());
        before - entries.len()
    }

    /// How many warm isolates there are.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
