//! `churn_fn`: the ops through which an isolate's request loop (js/10_function.js)
//! takes requests from the host and hands back responses, logs and errors.
//! Events in are in `fn_events`, responses out in `fn_respond`, the state
//! behind both in `fn_inbox`; this file declares the extension and holds the
//! configuration, console and end-of-request ops.

use std::time::{SystemTime, UNIX_EPOCH};

use deno_core::{op2, OpState};

use super::fn_events::{op_fn_next_request, op_fn_try_next_request};
use super::fn_inbox::{inbox, FnConfig};
use super::fn_respond::{
    op_fn_respond, op_fn_respond_bytes, op_fn_respond_text, op_fn_stream_end, op_fn_stream_write,
};
use crate::invocation::{Completion, LogLine, ScriptError};

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

/// The isolate's configuration, read once by the script.
#[op2]
#[serde]
fn op_fn_config(state: &mut OpState) -> FnConfig {
    inbox(state).config.clone()
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
