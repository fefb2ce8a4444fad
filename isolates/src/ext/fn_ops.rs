//! `churn_fn`: the ops through which an isolate's request loop (js/10_function.js)
//! takes requests from the host and hands back responses, logs and errors.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use deno_core::{op2, v8, OpState};
use tokio::sync::{mpsc, oneshot};

use crate::invocation::{
    Completion, Event, Job, LogLine, ResponseBody, ResponseHead, ScriptError, SocketMessage,
};

deno_core::extension!(
    churn_fn,
    deps = [deno_webidl, deno_web, deno_crypto, deno_fetch, churn_do, churn_ws],
    ops = [
        op_fn_next_request,
        op_fn_try_next_request,
        op_fn_config,
        op_fn_respond,
        op_fn_respond_text,
        op_fn_respond_bytes,
        op_fn_stream_write,
        op_fn_stream_end,
        op_fn_log,
        op_fn_done,
    ],
    esm_entry_point = "ext:churn_fn/99_bootstrap.js",
    esm = [
        dir "js",
        "00_globals.js",
        "05_http.js",
        "10_function.js",
        "20_do_storage.js",
        "21_do_sockets.js",
        "22_durable_object.js",
        "99_bootstrap.js"
    ],
);

/// How many body chunks may wait between the isolate and a slow client.
const STREAM_BUFFER: usize = 16;

/// Per-isolate state behind the `churn_fn` ops, kept in the `OpState`.
pub struct FnInbox {
    jobs: RefCell<Option<mpsc::UnboundedReceiver<Job>>>,
    pending: RefCell<HashMap<u32, Pending>>,
    next_id: Cell<u32>,
    config: FnConfig,
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

struct Pending {
    cpu_micros: u64,
    head: Option<oneshot::Sender<Result<ResponseHead, ScriptError>>>,
    body: Option<mpsc::Sender<Result<Bytes, String>>>,
    done: oneshot::Sender<Completion>,
    logs: Vec<LogLine>,
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

    fn allocate_id(&self) -> u32 {
        let id = self.next_id.get();
        // 0 means "no request" to the script, so skip it on wrap-around.
        self.next_id.set(id.checked_add(1).unwrap_or(1));
        id
    }
}

fn inbox(state: &OpState) -> Rc<FnInbox> {
    state.borrow::<Rc<FnInbox>>().clone()
}

/// An event as the script receives it: a request, or (for Durable Objects)
/// an alarm. It crosses as an array (see `toEvent` in js/10_function.js):
/// an object would make V8 look up each property name on every request.
#[derive(Default)]
pub struct JsRequest {
    id: u32,
    kind: &'static str,
    /// The Durable Object instance the event is for.
    instance: Option<String>,
    retry_count: u32,
    /// WebSocket events: the socket, and the message or close details.
    socket: f64,
    text: Option<String>,
    binary: Option<Vec<u8>>,
    code: u16,
    reason: String,
    was_clean: bool,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    user_id: Option<String>,
    caller: &'static str,
    request_id: String,
    ip: String,
}

fn js_string<'a>(scope: &mut v8::PinScope<'a, '_>, text: &str) -> v8::Local<'a, v8::Value> {
    match v8::String::new(scope, text) {
        Some(s) => s.into(),
        None => v8::null(scope).into(),
    }
}

/// A string the script sees on every request (an event kind, a caller
/// type): internalized, so V8 looks it up instead of allocating it.
fn js_constant<'a>(scope: &mut v8::PinScope<'a, '_>, text: &str) -> v8::Local<'a, v8::Value> {
    match v8::String::new_from_utf8(scope, text.as_bytes(), v8::NewStringType::Internalized) {
        Some(s) => s.into(),
        None => v8::null(scope).into(),
    }
}

fn js_opt_string<'a>(
    scope: &mut v8::PinScope<'a, '_>,
    text: Option<&str>,
) -> v8::Local<'a, v8::Value> {
    match text {
        Some(text) => js_string(scope, text),
        None => v8::null(scope).into(),
    }
}

fn js_bytes<'a>(
    scope: &mut v8::PinScope<'a, '_>,
    bytes: Option<Vec<u8>>,
) -> v8::Local<'a, v8::Value> {
    let Some(bytes) = bytes else {
        return v8::null(scope).into();
    };
    let len = bytes.len();
    let store = v8::ArrayBuffer::new_backing_store_from_vec(bytes).make_shared();
    let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
    match v8::Uint8Array::new(scope, buffer, 0, len) {
        Some(array) => array.into(),
        None => v8::null(scope).into(),
    }
}

/// The next event for the script, or `null` when there is none.
pub struct NextEvent(Option<JsRequest>);

impl<'a> deno_core::ToV8<'a> for NextEvent {
    type Error = std::convert::Infallible;

    fn to_v8<'i>(
        self,
        scope: &mut v8::PinScope<'a, 'i>,
    ) -> Result<v8::Local<'a, v8::Value>, Self::Error> {
        match self.0 {
            Some(event) => event.to_v8(scope),
            None => Ok(v8::null(scope).into()),
        }
    }
}

/// Built directly as a V8 array (no serde): this runs for every request.
impl<'a> deno_core::ToV8<'a> for JsRequest {
    type Error = std::convert::Infallible;

    fn to_v8<'i>(
        self,
        scope: &mut v8::PinScope<'a, 'i>,
    ) -> Result<v8::Local<'a, v8::Value>, Self::Error> {
        // Headers go flat: [name, value, name, value, …].
        let mut headers = Vec::with_capacity(self.headers.len() * 2);
        for (name, value) in &self.headers {
            headers.push(js_string(scope, name));
            headers.push(js_string(scope, value));
        }
        let elements: [v8::Local<'a, v8::Value>; 18] = [
            v8::Integer::new_from_unsigned(scope, self.id).into(),
            js_constant(scope, self.kind),
            js_opt_string(scope, self.instance.as_deref()),
            v8::Integer::new_from_unsigned(scope, self.retry_count).into(),
            v8::Number::new(scope, self.socket).into(),
            js_opt_string(scope, self.text.as_deref()),
            js_bytes(scope, self.binary),
            v8::Integer::new(scope, i32::from(self.code)).into(),
            js_string(scope, &self.reason),
            v8::Boolean::new(scope, self.was_clean).into(),
            js_constant(scope, &self.method),
            js_string(scope, &self.url),
            v8::Array::new_with_elements(scope, &headers).into(),
            js_bytes(scope, self.body),
            js_opt_string(scope, self.user_id.as_deref()),
            js_constant(scope, self.caller),
            js_string(scope, &self.request_id),
            js_string(scope, &self.ip),
        ];
        Ok(v8::Array::new_with_elements(scope, &elements).into())
    }
}

/// Waits for the next request; `null` once the isolate is retired.
#[op2]
async fn op_fn_next_request(state: Rc<RefCell<OpState>>) -> NextEvent {
    let inbox = inbox(&state.borrow());
    let Some(mut jobs) = inbox.jobs.borrow_mut().take() else {
        return NextEvent(None);
    };
    let job = jobs.recv().await;
    *inbox.jobs.borrow_mut() = Some(jobs);
    NextEvent(job.map(|job| accept(&inbox, job)))
}

/// The next request if one is already queued, else `null` (then the script
/// waits with `op_fn_next_request`). Under load most requests are taken this
/// way, without the cost of an async op each.
#[op2]
fn op_fn_try_next_request(state: &mut OpState) -> NextEvent {
    let inbox = inbox(state);
    let job = inbox
        .jobs
        .borrow_mut()
        .as_mut()
        .and_then(|jobs| jobs.try_recv().ok());
    NextEvent(job.map(|job| accept(&inbox, job)))
}

/// Registers a job as in flight and turns it into what the script sees.
fn accept(inbox: &FnInbox, job: Job) -> JsRequest {
    let Job {
        instance,
        event,
        reply,
    } = job;
    let id = inbox.allocate_id();
    inbox.pending.borrow_mut().insert(
        id,
        Pending {
            cpu_micros: 0,
            head: reply.head,
            body: None,
            done: reply.done,
            logs: Vec::new(),
        },
    );
    let invocation = match event {
        Event::Request(invocation) => invocation,
        Event::Alarm { retry_count } => {
            return JsRequest {
                id,
                kind: "alarm",
                instance,
                retry_count,
                ..Default::default()
            }
        }
        Event::SocketMessage { socket, message } => {
            let (text, binary) = match message {
                SocketMessage::Text(t) => (Some(t), None),
                SocketMessage::Binary(b) => (None, Some(b.to_vec())),
            };
            return JsRequest {
                id,
                kind: "ws_message",
                instance,
                socket: socket as f64,
                text,
                binary,
                ..Default::default()
            };
        }
        Event::SocketClose {
            socket,
            code,
            reason,
            was_clean,
        } => {
            return JsRequest {
                id,
                kind: "ws_close",
                instance,
                socket: socket as f64,
                code,
                reason,
                was_clean,
                ..Default::default()
            }
        }
        Event::SocketError { socket, message } => {
            return JsRequest {
                id,
                kind: "ws_error",
                instance,
                socket: socket as f64,
                reason: message,
                ..Default::default()
            }
        }
    };
    let body = if invocation.body.is_empty() && matches!(invocation.method.as_str(), "GET" | "HEAD")
    {
        None
    } else {
        Some(invocation.body.to_vec())
    };
    JsRequest {
        id,
        kind: "request",
        instance,
        method: invocation.method,
        url: invocation.url,
        headers: invocation.headers,
        body,
        user_id: invocation.user_id,
        caller: invocation.caller.as_str(),
        request_id: invocation.request_id,
        ip: invocation.ip,
        ..Default::default()
    }
}

#[op2]
#[serde]
fn op_fn_config(state: &mut OpState) -> FnConfig {
    inbox(state).config.clone()
}

/// Sends the status and headers; `stream` says whether body chunks follow
/// through `op_fn_stream_write`, otherwise `body` is the whole body.
#[op2]
fn op_fn_respond(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[serde] headers: Vec<(String, String)>,
    #[buffer] body: &[u8],
    stream: bool,
) {
    let inbox = inbox(state);
    let mut pending = inbox.pending.borrow_mut();
    let Some(p) = pending.get_mut(&id) else {
        return;
    };
    let Some(head) = p.head.take() else {
        return;
    };
    let body = if stream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        p.body = Some(tx);
        ResponseBody::Stream(rx)
    } else {
        ResponseBody::Full(Bytes::copy_from_slice(body))
    };
    let _ = head.send(Ok(ResponseHead {
        status: u16::try_from(status).unwrap_or(500),
        headers,
        body,
    }));
}

/// `content-type` of a response built from a string with no other headers
/// (the Fetch standard's default for a string body).
const DEFAULT_TEXT_TYPE: &str = "text/plain;charset=UTF-8";

/// The head of a static response: at most one header, `content-type`
/// (`kind` 1: the default text type, 2: `content_type`, else none).
fn static_head(status: u32, kind: u32, content_type: &str, body: Bytes) -> ResponseHead {
    let headers = match kind {
        1 => vec![("content-type".to_string(), DEFAULT_TEXT_TYPE.to_string())],
        2 => vec![("content-type".to_string(), content_type.to_string())],
        _ => Vec::new(),
    };
    ResponseHead {
        status: u16::try_from(status).unwrap_or(500),
        headers,
        body: ResponseBody::Full(body),
    }
}

fn send_static(state: &mut OpState, id: u32, head: impl FnOnce() -> ResponseHead) {
    let inbox = inbox(state);
    let mut pending = inbox.pending.borrow_mut();
    if let Some(sender) = pending.get_mut(&id).and_then(|p| p.head.take()) {
        let _ = sender.send(Ok(head()));
    }
}

/// Sends a whole response whose body is a string and whose only header is
/// its content type: what `new Response("text")` and `Response.json(v)`
/// make. No header list or byte array is built on the JS side.
#[op2(fast)]
fn op_fn_respond_text(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[smi] kind: u32,
    #[string] content_type: &str,
    #[string] body: &str,
) {
    send_static(state, id, || {
        static_head(
            status,
            kind,
            content_type,
            Bytes::copy_from_slice(body.as_bytes()),
        )
    });
}

/// [`op_fn_respond_text`] for a `Uint8Array` body.
#[op2(fast)]
fn op_fn_respond_bytes(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[smi] kind: u32,
    #[string] content_type: &str,
    #[buffer] body: &[u8],
) {
    send_static(state, id, || {
        static_head(status, kind, content_type, Bytes::copy_from_slice(body))
    });
}

/// Sends one chunk of a streamed body; resolves `false` if the client is gone.
#[op2]
async fn op_fn_stream_write(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[buffer(copy)] chunk: Vec<u8>,
) -> bool {
    let sender = {
        let inbox = inbox(&state.borrow());
        let pending = inbox.pending.borrow();
        pending.get(&id).and_then(|p| p.body.clone())
    };
    match sender {
        Some(tx) => tx.send(Ok(Bytes::from(chunk))).await.is_ok(),
        None => false,
    }
}

/// Ends a streamed body, with an error message if the stream failed.
#[op2]
fn op_fn_stream_end(state: &mut OpState, #[smi] id: u32, #[string] error: Option<String>) {
    let inbox = inbox(state);
    let mut pending = inbox.pending.borrow_mut();
    if let Some(p) = pending.get_mut(&id) {
        if let (Some(tx), Some(message)) = (p.body.take(), error) {
            let _ = tx.try_send(Err(message));
        }
    }
}

fn level_name(level: u32) -> &'static str {
    match level {
        0 => "debug",
        1 => "log",
        2 => "warn",
        _ => "error",
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Captures one `console.*` line for the request that printed it.
#[op2(fast)]
fn op_fn_log(state: &mut OpState, #[smi] id: u32, #[smi] level: u32, #[string] message: &str) {
    let inbox = inbox(state);
    let line = LogLine {
        level: level_name(level).to_string(),
        message: message.strip_suffix('\n').unwrap_or(message).to_string(),
        ts: now_ms(),
    };
    let mut pending = inbox.pending.borrow_mut();
    match pending.get_mut(&id) {
        Some(p) => p.logs.push(line),
        None => {
            let mut orphans = inbox.orphan_logs.borrow_mut();
            if orphans.len() < 1000 {
                orphans.push(line);
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct JsErrorInfo {
    message: String,
    stack: Option<String>,
}

/// The request is finished: response sent (or failed) and `waitUntil` settled.
#[op2]
fn op_fn_done(state: &mut OpState, #[smi] id: u32, #[serde] error: Option<JsErrorInfo>) {
    let inbox = inbox(state);
    let Some(p) = inbox.pending.borrow_mut().remove(&id) else {
        return;
    };
    let error = error.map(|e| ScriptError {
        message: e.message,
        stack: e.stack,
        limit: None,
    });
    if let Some(head) = p.head {
        let _ = head.send(Err(error.clone().unwrap_or_else(|| ScriptError {
            message: "the handler finished without returning a Response".to_string(),
            stack: None,
            limit: None,
        })));
    }
    let _ = p.done.send(Completion {
        logs: p.logs,
        cpu_micros: p.cpu_micros,
        error,
    });
}
