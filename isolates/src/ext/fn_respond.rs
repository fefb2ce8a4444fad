//! Responses out of the script: a head with a whole body, a static
//! response in one fast call, or a head followed by streamed chunks.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, OpState};
use tokio::sync::mpsc;

use super::fn_inbox::inbox;
use crate::invocation::{ResponseBody, ResponseHead};

/// How many body chunks may wait between the isolate and a slow client.
const STREAM_BUFFER: usize = 16;

/// Sends the status and headers; `stream` says whether body chunks follow
/// through `op_fn_stream_write`, otherwise `body` is the whole body.
#[op2]
pub(super) fn op_fn_respond(
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
pub(super) fn op_fn_respond_text(
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
pub(super) fn op_fn_respond_bytes(
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
pub(super) async fn op_fn_stream_write(
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
pub(super) fn op_fn_stream_end(
    state: &mut OpState,
    #[smi] id: u32,
    #[string] error: Option<String>,
) {
    let inbox = inbox(state);
    let mut pending = inbox.pending.borrow_mut();
    if let Some(p) = pending.get_mut(&id) {
        if let (Some(tx), Some(message)) = (p.body.take(), error) {
            let _ = tx.try_send(Err(message));
        }
    }
}
