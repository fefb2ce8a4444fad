//! Events into the script: `op_fn_next_request` / `op_fn_try_next_request`
//! take a job from the inbox, register it as in flight and hand it over as a
//! V8 array.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, v8, OpState};

use super::fn_inbox::{inbox, FnInbox, Pending};
use crate::invocation::{Event, Job, SocketMessage};

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
        Ok(match self.0 {
            Some(event) => event.into_array(scope),
            None => v8::null(scope).into(),
        })
    }
}

impl JsRequest {
    /// The event as a V8 array, built directly (no serde): this runs for
    /// every request.
    fn into_array<'a>(self, scope: &mut v8::PinScope<'a, '_>) -> v8::Local<'a, v8::Value> {
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
        v8::Array::new_with_elements(scope, &elements).into()
    }
}

/// Waits for the next request; `null` once the isolate is retired.
#[op2]
pub(super) async fn op_fn_next_request(state: Rc<RefCell<OpState>>) -> NextEvent {
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
pub(super) fn op_fn_try_next_request(state: &mut OpState) -> NextEvent {
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
