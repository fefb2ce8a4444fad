//! The worker threads and the warm isolates on them.
//!
//! There are N worker threads (default: the number of cores), each with its
//! own current-thread tokio runtime. A worker holds at most one isolate per
//! function and per Durable Object class, and an isolate never leaves its
//! thread. The host also serves HTTP on these threads ([`IsolatePool::spawn_on_each`]),
//! so a function request normally runs start to finish on the thread that
//! accepted it. A Durable Object instance lives on the thread chosen by a hash
//! of `(app, class, id)`, which makes it the one live instance of that id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::InvokeError;
use crate::invocation::{
    CodeKind, Completion, Event, FunctionCode, Invocation, Job, Reply, ResponseHead, ScriptError,
};
use crate::worker::run_isolate;

/// `(app, name, is a Durable Object class)`.
type Key = (String, String, bool);

/// A [`Key`] borrowed from a [`FunctionCode`]: the per-request lookup
/// allocates nothing. Hashes exactly as the owned tuple does.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str, bool);

impl<'a> KeyRef<'a> {
    fn of(code: &'a FunctionCode) -> Self {
        KeyRef(
            &code.app,
            &code.name,
            matches!(code.kind, CodeKind::DurableObject(_)),
        )
    }

    fn to_key(&self) -> Key {
        (self.0.to_string(), self.1.to_string(), self.2)
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

/// A task to start on every worker (for example an accept loop).
pub type WorkerTask = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

enum Command {
    Dispatch(Arc<FunctionCode>, Job),
    Retire(Key),
    RetireApp(String),
    EvictIdle(Duration),
    Spawn(WorkerTask),
}

struct Entry {
    revision: u64,
    jobs: mpsc::UnboundedSender<Job>,
    last_used: Instant,
    /// Turns true once the isolate has exited.
    finished: watch::Receiver<bool>,
}

/// How long a new Durable Object isolate waits for the previous revision's
/// isolate (finishing its events) before it starts anyway.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// One worker's isolates; lives in a thread-local on the worker.
struct Local {
    index: usize,
    entries: RefCell<hashbrown::HashMap<Key, Entry>>,
    /// Retired Durable Object isolates still finishing their events: a new
    /// isolate for the class waits for them, so that an instance is never
    /// live in two isolates at once.
    draining: RefCell<HashMap<Key, watch::Receiver<bool>>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Option<Rc<Local>> {
    LOCAL.with(|l| l.borrow().clone())
}

impl Local {
    /// Hands `job` to this worker's isolate for `code`, starting it if needed.
    fn dispatch(&self, code: &Arc<FunctionCode>, job: Job) {
        let code_revision = code.revision;
        let mut entries = self.entries.borrow_mut();
        let mut job = job;
        let lookup = KeyRef::of(code);
        if let Some(entry) = entries.get_mut(&lookup) {
            if entry.revision > code.revision {
                // An event of a retired revision (say, a socket of it
                // closing): its isolate is gone; the job is dropped.
                return;
            }
            if entry.revision == code.revision {
                entry.last_used = Instant::now();
                match entry.jobs.send(job) {
                    Ok(()) => return,
                    // The isolate died: start a new one below.
                    Err(mpsc::error::SendError(returned)) => job = returned,
                }
            }
        }
        // A new revision replaces the old isolate, which finishes the events
        // it already has and then exits.
        let key = lookup.to_key();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, finished) = watch::channel(false);
        let is_object = key.2;
        let previous = if is_object {
            let old = entries.remove(&key).map(|e| e.finished);
            let retired = self.draining.borrow_mut().remove(&key);
            old.or(retired)
        } else {
            None
        };
        let code = code.clone();
        tokio::task::spawn_local(async move {
            if let Some(mut previous) = previous {
                let _ = tokio::time::timeout(DRAIN_WAIT, previous.wait_for(|done| *done)).await;
            }
            run_isolate(code, rx).await;
            let _ = done_tx.send(true);
        });
        let _ = tx.send(job);
        entries.insert(
            key,
            Entry {
                revision: code_revision,
                jobs: tx,
                last_used: Instant::now(),
                finished,
            },
        );
    }

    /// Drops the entry; a Durable Object isolate is remembered while it drains.
    fn retire(&self, key: &Key) {
        if let Some(entry) = self.entries.borrow_mut().remove(key) {
            if key.2 && !*entry.finished.borrow() {
                self.draining
                    .borrow_mut()
                    .insert(key.clone(), entry.finished);
            }
        }
    }

    fn handle(&self, command: Command) {
        match command {
            Command::Dispatch(code, job) => self.dispatch(&code, job),
            Command::Retire(key) => self.retire(&key),
            Command::RetireApp(app) => {
                let keys: Vec<Key> = self
                    .entries
                    .borrow()
                    .keys()
                    .filter(|(a, _, _)| *a == app)
                    .cloned()
                    .collect();
                for key in keys {
                    self.retire(&key);
                }
            }
            Command::EvictIdle(max_idle) => self
                .entries
                .borrow_mut()
                .retain(|_, e| e.last_used.elapsed() < max_idle && !e.jobs.is_closed()),
            Command::Spawn(task) => {
                tokio::task::spawn_local(task(self.index));
            }
        }
    }
}

fn run_worker(index: usize, mut commands: mpsc::UnboundedReceiver<Command>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start worker {index}: {e}");
            return;
        }
    };
    let local = Rc::new(Local {
        index,
        entries: RefCell::new(hashbrown::HashMap::new()),
        draining: RefCell::new(HashMap::new()),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(local.clone()));
    let set = tokio::task::LocalSet::new();
    set.block_on(&runtime, async move {
        while let Some(command) = commands.recv().await {
            local.handle(command);
        }
    });
    LOCAL.with(|l| *l.borrow_mut() = None);
}

/// V8 flags for every isolate, set once before the first one is created.
/// Garbage collection stays on the isolate's own thread: with one worker per
/// core, V8's helper threads would only compete with the other workers.
fn set_v8_flags() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let extra =
            std::env::var("CHURN_V8_FLAGS").unwrap_or_else(|_| "--single-threaded-gc".into());
        let mut args = vec![String::from("churn")];
        args.extend(extra.split_whitespace().map(str::to_string));
        let rejected = deno_core::v8_set_flags(args);
        if rejected.len() > 1 {
            tracing::warn!("V8 did not accept these flags: {:?}", &rejected[1..]);
        }
    });
}

/// The worker threads; cheap to clone.
#[derive(Clone)]
pub struct IsolatePool {
    workers: Arc<Vec<mpsc::UnboundedSender<Command>>>,
    next: Arc<AtomicUsize>,
}

/// An invocation under way: the response head (or why there is none), and a
/// receiver for the final record (logs, uncaught error), which arrives once the
/// body is finished and `waitUntil` work settled.
pub struct Started {
    pub head: Result<ResponseHead, InvokeError>,
    pub completion: oneshot::Receiver<Completion>,
}

impl Default for IsolatePool {
    fn default() -> Self {
        Self::new()
    }
}

impl IsolatePool {
    /// One worker per core.
    pub fn new() -> Self {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self::with_threads(n)
    }

    pub fn with_threads(threads: usize) -> Self {
        set_v8_flags();
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let spawned = std::thread::Builder::new()
                .name(format!("churn-worker-{index}"))
                .spawn(move || run_worker(index, rx));
            match spawned {
                Ok(_) => workers.push(tx),
                Err(e) => tracing::error!("cannot start worker thread {index}: {e}"),
            }
        }
        IsolatePool {
            workers: Arc::new(workers),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Starts `task(worker index)` on every worker thread.
    pub fn spawn_on_each(&self, task: WorkerTask) {
        for w in self.workers.iter() {
            let _ = w.send(Command::Spawn(task.clone()));
        }
    }

    fn broadcast(&self, make: impl Fn() -> Command) {
        for w in self.workers.iter() {
            let _ = w.send(make());
        }
    }

    /// The worker a job for `code` (and instance) goes to: a Durable Object
    /// instance's fixed thread; for a function, the current worker if this is
    /// one, else the next in turn.
    fn route(
        &self,
        code: &Arc<FunctionCode>,
        instance: Option<&str>,
        job: Job,
    ) -> Result<(), InvokeError> {
        let target = match instance {
            Some(id) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&code.app, &code.name, id).hash(&mut h);
                Some((h.finish() % self.workers.len().max(1) as u64) as usize)
            }
            None => None,
        };
        if let Some(local) = local() {
            if target.is_none() || target == Some(local.index) {
                local.dispatch(code, job);
                return Ok(());
            }
        }
        let index = target.unwrap_or_else(|| {
            self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1)
        });
        self.workers
            .get(index)
            .ok_or_else(|| InvokeError::IsolateGone("no worker threads".into()))?
            .send(Command::Dispatch(code.clone(), job))
            .map_err(|_| InvokeError::IsolateGone("the worker thread stopped".into()))
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
        let target = instance.clone();
        let job = Job {
            instance,
            event: Event::Request(invocation),
            reply: Reply {
                head: Some(head_tx),
                done: done_tx,
            },
        };
        if let Err(e) = self.route(code, target.as_deref(), job) {
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
            Ok(Ok(Err(script))) => Err(match script.limit {
                Some(reason) => InvokeError::Limit {
                    reason,
                    message: script.message,
                },
                None => InvokeError::Script(script),
            }),
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
        let target = instance.clone();
        let job = Job {
            instance: Some(instance),
            event: Event::Alarm { retry_count },
            reply: Reply {
                head: None,
                done: done_tx,
            },
        };
        let failed = |message: String| Completion {
            logs: Vec::new(),
            cpu_micros: 0,
            error: Some(ScriptError {
                message,
                ..Default::default()
            }),
        };
        if let Err(e) = self.route(code, Some(&target), job) {
            return failed(e.to_string());
        }
        done_rx
            .await
            .unwrap_or_else(|_| failed("the isolate stopped before the alarm finished".to_string()))
    }

    /// Delivers a WebSocket event to a Durable Object instance (through its
    /// mailbox, like a request); the receiver says how its handler went.
    pub fn deliver(
        &self,
        code: &Arc<FunctionCode>,
        instance: String,
        event: Event,
    ) -> oneshot::Receiver<Completion> {
        let (done_tx, done_rx) = oneshot::channel();
        let target = instance.clone();
        let job = Job {
            instance: Some(instance),
            event,
            reply: Reply {
                head: None,
                done: done_tx,
            },
        };
        if let Err(e) = self.route(code, Some(&target), job) {
            tracing::warn!("cannot deliver a WebSocket event: {e}");
        }
        done_rx
    }

    /// Retires the isolates of one function or class (deleted or
    /// redeployed): they finish the events they have, then exit.
    pub fn retire(&self, app: &str, name: &str, durable_object: bool) {
        self.broadcast(|| Command::Retire((app.to_string(), name.to_string(), durable_object)));
    }

    /// Retires every isolate of an app.
    pub fn retire_app(&self, app: &str) {
        self.broadcast(|| Command::RetireApp(app.to_string()));
    }

    /// Retires isolates that served nothing for `max_idle`.
    pub fn evict_idle(&self, max_idle: Duration) {
        self.broadcast(|| Command::EvictIdle(max_idle));
    }
}
