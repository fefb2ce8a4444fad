//! Runs one invocation of a function and turns the outcome into an HTTP
//! response, recording it (log entry, stats) once it is finished. Shared by the
//! data plane and the control API's `invoke`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use churn_dispatcher::{DeployedFunction, DispatchError, Invocation};
use churn_isolates::{Completion, InvokeError, ResponseBody, ResponseHead};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc::error::TryRecvError;

use crate::apps::{now_rfc3339, App};
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{error_response, full, Body};
use crate::records::LogEntry;

type BodyChunks = tokio::sync::mpsc::Receiver<Result<Bytes, String>>;

/// Headers a function may not set: the host frames the body itself.
fn is_framing_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade"
    )
}

/// A whole body is sent with a length; a stream goes out as it is produced
/// (with a length too if it turns out to be one chunk that is already there).
fn into_body(body: ResponseBody) -> Body {
    let mut rx = match body {
        ResponseBody::Full(bytes) => return full(bytes),
        ResponseBody::Stream(rx) => rx,
    };
    match rx.try_recv() {
        Err(TryRecvError::Disconnected) => return full(Bytes::new()),
        Ok(Ok(first)) => {
            if let Err(TryRecvError::Disconnected) = rx.try_recv() {
                return full(first);
            }
            return stream_body(Some(first), rx);
        }
        Ok(Err(message)) => {
            return StreamBody::new(futures_util::stream::once(async move {
                Err(std::io::Error::other(message))
            }))
            .boxed()
        }
        Err(TryRecvError::Empty) => {}
    }
    stream_body(None, rx)
}

fn stream_body(first: Option<Bytes>, rx: BodyChunks) -> Body {
    let stream = futures_util::stream::unfold((first, rx), |(first, mut rx)| async move {
        if let Some(chunk) = first {
            return Some((Ok(Frame::data(chunk)), (None, rx)));
        }
        match rx.recv().await? {
            Ok(chunk) => Some((Ok(Frame::data(chunk)), (None, rx))),
            Err(message) => Some((Err(std::io::Error::other(message)), (None, rx))),
        }
    });
    StreamBody::new(stream).boxed()
}

/// The HTTP response for a script's response head and body.
pub fn to_response(head: ResponseHead) -> Response<Body> {
    let mut res = Response::new(into_body(head.body));
    *res.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    for (name, value) in head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        if !is_framing_header(&name) {
            headers.append(name, value);
        }
    }
    res
}

/// A request id unique to this process: a random boot prefix and a counter
/// (no syscall per request, unlike a random UUID), as
/// `bbbbbbbb-cccccccccccc` in hex.
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::LazyLock;
    static BOOT: LazyLock<u32> = LazyLock::new(rand::random);
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(24);
    push_hex(&mut id, u64::from(*BOOT), 8);
    id.push('-');
    push_hex(&mut id, count, 12);
    id
}

/// Appends `value` in lowercase hex, zero-padded to at least `digits`.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    let needed = (64 - value.leading_zeros()).div_ceil(4).max(digits);
    for i in (0..needed).rev() {
        let nibble = ((value >> (i * 4)) & 0xf) as u32;
        out.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
}

/// What the caller needs to know to record an invocation.
pub struct RunInfo {
    pub trigger: &'static str,
    pub method: String,
    pub path: String,
    pub request_id: String,
}

/// Runs `invocation` and answers with the function's response (or the error
/// response that stands for it).
pub async fn run_function(
    host: &SharedHost,
    app: &Arc<App>,
    function: Arc<DeployedFunction>,
    invocation: Invocation,
    info: RunInfo,
) -> Response<Body> {
    let dispatcher = &host.apps.dispatcher;
    let slot = match dispatcher.admit(&function) {
        Ok(slot) => slot,
        Err(DispatchError::TooManyRequests { name, limit }) => {
            return error_response(
                &ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOO_MANY_REQUESTS",
                    format!("function {name:?} already has {limit} requests in flight"),
                )
                .fix("retry after a moment, or raise max_concurrency in the host config"),
            )
        }
        Err(other) => return error_response(&ApiError::internal(other.to_string())),
    };
    let started_at = Instant::now();
    let started = dispatcher.invoke(&function, invocation).await;
    let duration_ms = started_at.elapsed().as_millis() as u64;

    let (response, status, head_error) = match started.head {
        Ok(head) => {
            let status = head.status;
            (to_response(head), status, None)
        }
        Err(e) => {
            let api = invoke_error(&e, duration_ms);
            (error_response(&api), api.status.as_u16(), Some(e))
        }
    };
    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&info.request_id) {
        response.headers_mut().insert("x-churn-request-id", v);
    }

    let finished = Finished {
        host: host.clone(),
        app: app.clone(),
        name: function.code.name.clone(),
        info,
        status,
        duration_ms,
        head_error,
    };
    // A handler that answered synchronously is usually finished already;
    // otherwise wait (off the response path) for its body and waitUntil work.
    let mut completion = started.completion;
    let ready = match completion.try_recv() {
        Ok(done) => Some(done),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Completion::default()),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
    };
    match ready {
        Some(done) => {
            drop(slot);
            finished.record(done);
        }
        None => {
            let wait = Duration::from_millis(
                function.code.limits.timeout_ms + function.code.limits.wait_until_ms + 5_000,
            );
            tokio::spawn(async move {
                let done = match tokio::time::timeout(wait, completion).await {
                    Ok(Ok(c)) => c,
                    _ => Completion::default(),
                };
                drop(slot);
                finished.record(done);
            });
        }
    }
    response
}

/// What is known of an invocation once its response went out; recorded
/// with its completion.
struct Finished {
    host: SharedHost,
    app: Arc<App>,
    name: String,
    info: RunInfo,
    status: u16,
    duration_ms: u64,
    head_error: Option<InvokeError>,
}

impl Finished {
    fn record(self, completion: Completion) {
        let Finished {
            host,
            app,
            name,
            info,
            status,
            duration_ms,
            head_error,
        } = self;
        let (error, stack) = match (&head_error, completion.error) {
            (Some(InvokeError::Script(e)), _) => (Some(e.message.clone()), e.stack.clone()),
            (Some(other), _) => (Some(other.to_string()), None),
            (None, Some(e)) => (Some(e.message), e.stack),
            (None, None) => (None, None),
        };
        let limit = match &head_error {
            Some(InvokeError::Limit { reason, .. }) => Some(reason.to_string()),
            Some(InvokeError::Timeout { .. }) => Some("timeout".to_string()),
            _ => None,
        };
        let entry = LogEntry {
            id: info.request_id.clone(),
            request_id: info.request_id,
            timestamp: now_rfc3339(),
            trigger: info.trigger.to_string(),
            method: info.method,
            path: info.path,
            status,
            duration_ms,
            cpu_ms: completion.cpu_micros as f64 / 1000.0,
            error,
            stack,
            limit,
            logs: completion.logs,
            cron: None,
        };
        host.apps.record_invocation(&app, &name, entry);
    }
}

pub fn invoke_error(e: &InvokeError, duration_ms: u64) -> ApiError {
    match e {
        InvokeError::Script(s) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "FUNCTION_ERROR",
            s.message.clone(),
        )
        .fix("see the function's logs (GET /v1/{app}/functions/{name}/logs) for the stack"),
        InvokeError::Timeout { timeout_ms } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "FUNCTION_TIMEOUT",
            format!("the function did not respond within {timeout_ms} ms"),
        )
        .fix("make the handler respond sooner, or deploy it with a larger timeoutMs")
        .with("duration_ms", duration_ms.into()),
        InvokeError::Limit { reason, message } => ApiError::new(
            StatusCode::from_u16(546).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "WORKER_LIMIT",
            message.clone(),
        )
        .fix(match *reason {
            "cpu" => "the script ran too long without yielding: make the work smaller or split it up",
            _ => "the script used too much memory: process less at once, or deploy with a larger memoryLimitMb",
        })
        .with("reason", (*reason).into()),
        InvokeError::IsolateGone(message) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "FUNCTION_ERROR",
            message.clone(),
        )
        .fix("retry; the function's isolate is restarted on the next request"),
    }
}

#[cfg(test)]
mod tests {
    use super::push_hex;

    #[test]
    fn hex_is_zero_padded_and_never_truncated() {
        let mut s = String::new();
        push_hex(&mut s, 0x2a, 8);
        assert_eq!(s, "0000002a");
        s.clear();
        push_hex(&mut s, u64::MAX, 12);
        assert_eq!(s, "ffffffffffffffff");
        s.clear();
        push_hex(&mut s, 0, 3);
        assert_eq!(s, "000");
    }
}
