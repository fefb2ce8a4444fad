//! `churn_do`: the storage and alarm ops behind a Durable Object's
//! `state.storage` (js/20_durable_object.js). They only convert values and call
//! the [`DurableStore`] the class was deployed with.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;

use churn_storage_kv::{DurableStore, ListOptions, Write};

use crate::invocation::AlarmListener;

deno_core::extension!(
    churn_do,
    ops = [
        op_do_get,
        op_do_list,
        op_do_write,
        op_do_sync,
        op_do_alarm_get,
        op_do_alarm_set,
    ],
);

/// What the ops of one class isolate reach, kept in its `OpState`.
pub struct DoContext {
    pub app: String,
    /// The class's URL name: its storage namespace.
    pub class: String,
    pub store: Arc<dyn DurableStore>,
    pub alarms: Arc<dyn AlarmListener>,
    pub sockets: Arc<crate::sockets::SocketRegistry>,
}

fn context(state: &OpState) -> Result<Rc<DoContext>, JsErrorBox> {
    state
        .try_borrow::<Rc<DoContext>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::type_error("storage is only available to Durable Objects"))
}

fn storage_error(e: impl std::fmt::Display) -> JsErrorBox {
    tracing::error!("durable storage: {e}");
    JsErrorBox::generic(format!("storage failed: {e}"))
}

#[op2]
#[serde]
fn op_do_get(
    state: &mut OpState,
    #[string] instance: String,
    #[string] key: String,
) -> Result<Option<ToJsBuffer>, JsErrorBox> {
    let cx = context(state)?;
    let value = cx
        .store
        .get(&cx.class, &instance, &key)
        .map_err(storage_error)?;
    Ok(value.map(ToJsBuffer::from))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsListOptions {
    prefix: Option<String>,
    start: Option<String>,
    start_after: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    reverse: bool,
}

#[op2]
#[serde]
fn op_do_list(
    state: &mut OpState,
    #[string] instance: String,
    #[serde] options: JsListOptions,
) -> Result<Vec<(String, ToJsBuffer)>, JsErrorBox> {
    let cx = context(state)?;
    let opts = ListOptions {
        prefix: options.prefix,
        start: options.start,
        start_after: options.start_after,
        end: options.end,
        limit: options.limit,
        reverse: options.reverse,
    };
    let entries = cx
        .store
        .list(&cx.class, &instance, &opts)
        .map_err(storage_error)?;
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k, ToJsBuffer::from(v)))
        .collect())
}

/// Applies one batch atomically; returns its durability ticket.
#[op2]
fn op_do_write(
    state: &mut OpState,
    #[string] instance: String,
    delete_all: bool,
    #[serde] writes: Vec<(String, Option<JsBuffer>)>,
) -> Result<f64, JsErrorBox> {
    let cx = context(state)?;
    let batch: Vec<Write> = writes
        .into_iter()
        .map(|(k, v)| match v {
            Some(bytes) => Write::Put(k, bytes.to_vec()),
            None => Write::Delete(k),
        })
        .collect();
    let ticket = cx
        .store
        .write(&cx.class, &instance, delete_all, &batch)
        .map_err(storage_error)?;
    Ok(ticket as f64)
}

/// Resolves once the batch with `ticket` (and all before it) is on disk.
#[op2]
async fn op_do_sync(state: Rc<RefCell<OpState>>, ticket: f64) -> Result<(), JsErrorBox> {
    let cx = context(&state.borrow())?;
    let durable = cx.store.durable(ticket as u64);
    match durable.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(storage_error(e)),
        Err(_) => Err(storage_error("the commit thread stopped")),
    }
}

#[op2]
fn op_do_alarm_get(
    state: &mut OpState,
    #[string] instance: String,
) -> Result<Option<f64>, JsErrorBox> {
    let cx = context(state)?;
    let at = cx
        .store
        .get_alarm(&cx.class, &instance)
        .map_err(storage_error)?;
    Ok(at.map(|t| t as f64))
}

#[op2]
fn op_do_alarm_set(
    state: &mut OpState,
    #[string] instance: String,
    at_ms: Option<f64>,
) -> Result<f64, JsErrorBox> {
    let cx = context(state)?;
    let at = at_ms.map(|t| t.max(0.0) as u64);
    let ticket = cx
        .store
        .set_alarm(&cx.class, &instance, at)
        .map_err(storage_error)?;
    cx.alarms.alarm_changed(&cx.app, &cx.class, &instance, at);
    Ok(ticket as f64)
}
