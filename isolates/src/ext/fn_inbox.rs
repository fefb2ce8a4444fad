//! The per-isolate state behind the `churn_fn` ops: the job queue, the
//! requests in flight and the configuration the script reads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;
use deno_core::OpState;
use tokio::sync::{mpsc, oneshot};

use crate::invocation::{Completion, Job, LogLine, ResponseHead, ScriptError};

/// Per-isolate state behind the `churn_fn` ops, kept in the `OpState`.
pub struct FnInbox {
    pub(super) jobs: RefCell<Option<mpsc::UnboundedReceiver<Job>>>,
    pub(super) pending: RefCell<HashMap<u32, Pending>>,
    next_id: Cell<u32>,
    pub(super) config: FnConfig,
    /// Lines logged while no request was current (module top level).
    pub orphan_logs: RefCell<Vec<LogLine>>,
}

/// What the script reads once through `op_fn_config`.
#[derive(serde::Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FnConfig {
    pub env: BTreeMap<String, String>,
    pub function_name: String,
    pub wait_until_ms: u64,
    /// For Durable Objects: the exported class and the idle eviction time.
    pub class_name: Option<String>,
    pub idle_ms: u64,
    pub max_subrequests: u32,
    pub fetch_timeout_ms: u64,
}

/// A request the script has taken and not finished: where its answer goes.
pub(super) struct Pending {
    pub(super) cpu_micros: u64,
    pub(super) head: Option<oneshot::Sender<Result<ResponseHead, ScriptError>>>,
    pub(super) body: Option<mpsc::Sender<Result<Bytes, String>>>,
    pub(super) done: oneshot::Sender<Completion>,
    pub(super) logs: Vec<LogLine>,
}

impl FnInbox {
    pub fn new(jobs: mpsc::UnboundedReceiver<Job>, config: FnConfig) -> Rc<Self> {
        Rc::new(FnInbox {
            jobs: RefCell::new(Some(jobs)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            config,
            orphan_logs: RefCell::new(Vec::new()),
        })
    }

    /// Charges CPU time spent by the isolate to every request in flight.
    pub fn charge_cpu(&self, micros: u64) {
        for p in self.pending.borrow_mut().values_mut() {
            p.cpu_micros += micros;
        }
    }

    /// Requests that have been taken by the script and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Fails every request still in flight (the isolate is going away),
    /// naming the limit that stopped it, if one did.
    pub fn fail_all(&self, message: &str, limit: Option<&'static str>) {
        for (_, p) in self.pending.borrow_mut().drain() {
            let error = ScriptError {
                message: message.to_string(),
                stack: None,
                limit,
            };
            if let Some(head) = p.head {
                let _ = head.send(Err(error.clone()));
            }
            if let Some(body) = p.body {
                let _ = body.try_send(Err(message.to_string()));
            }
            let _ = p.done.send(Completion {
                logs: p.logs,
                cpu_micros: p.cpu_micros,
                error: Some(error),
            });
        }
    }

    /// Answers every job still queued (never taken by the script) with an error.
    pub fn reject_queued(&self, message: &str, limit: Option<&'static str>) {
        let Some(mut jobs) = self.jobs.borrow_mut().take() else {
            return;
        };
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            let error = ScriptError {
                message: message.to_string(),
                stack: None,
                limit,
            };
            if let Some(head) = job.reply.head {
                let _ = head.send(Err(error.clone()));
            }
            let _ = job.reply.done.send(Completion {
                error: Some(error),
                ..Default::default()
            });
        }
    }

    pub(super) fn allocate_id(&self) -> u32 {
        let id = self.next_id.get();
        // 0 means "no request" to the script, so skip it on wrap-around.
        self.next_id.set(id.checked_add(1).unwrap_or(1));
        id
    }
}

/// The isolate's inbox, from the op state.
pub(super) fn inbox(state: &OpState) -> Rc<FnInbox> {
    state.borrow::<Rc<FnInbox>>().clone()
}
