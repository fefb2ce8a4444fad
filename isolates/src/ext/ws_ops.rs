//! `churn_ws`: the ops behind Durable Object WebSockets (`WebSocketPair`,
//! `state.acceptWebSocket`, `ws.send`, attachments, auto-responses). They
//! only talk to the class's [`SocketRegistry`](crate::sockets::SocketRegistry).

use std::rc::Rc;

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;

use crate::ext::do_ops::DoContext;
use crate::sockets::{Outgoing, MAX_ATTACHMENT, MAX_TAGS};

deno_core::extension!(
    churn_ws,
    ops = [
        op_ws_create,
        op_ws_accept,
        op_ws_send_text,
        op_ws_send_binary,
        op_ws_close,
        op_ws_list,
        op_ws_tags,
        op_ws_set_attachment,
        op_ws_attachment,
        op_ws_set_auto_response,
        op_ws_auto_response,
    ],
);

fn context(state: &OpState) -> Result<Rc<DoContext>, JsErrorBox> {
    state
        .try_borrow::<Rc<DoContext>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::type_error("WebSockets are only available to Durable Objects"))
}

#[op2(fast)]
fn op_ws_create(state: &mut OpState, #[string] instance: &str) -> Result<f64, JsErrorBox> {
    Ok(context(state)?.sockets.create(instance) as f64)
}

#[op2]
fn op_ws_accept(
    state: &mut OpState,
    id: f64,
    hibernatable: bool,
    #[serde] tags: Vec<String>,
) -> Result<(), JsErrorBox> {
    if tags.len() > MAX_TAGS {
        return Err(JsErrorBox::range_error(format!(
            "a WebSocket takes at most {MAX_TAGS} tags (got {})",
            tags.len()
        )));
    }
    if tags.iter().any(|t| t.len() > 256) {
        return Err(JsErrorBox::range_error("a tag is at most 256 bytes"));
    }
    if !context(state)?
        .sockets
        .accept(id as u64, hibernatable, tags)
    {
        return Err(JsErrorBox::type_error("this WebSocket is already closed"));
    }
    Ok(())
}

#[op2(fast)]
fn op_ws_send_text(
    state: &mut OpState,
    id: f64,
    #[string] text: String,
) -> Result<bool, JsErrorBox> {
    Ok(context(state)?
        .sockets
        .send(id as u64, Outgoing::Text(text)))
}

#[op2]
fn op_ws_send_binary(
    state: &mut OpState,
    id: f64,
    #[buffer] data: JsBuffer,
) -> Result<bool, JsErrorBox> {
    Ok(context(state)?.sockets.send(
        id as u64,
        Outgoing::Binary(bytes::Bytes::from(data.to_vec())),
    ))
}

#[op2(fast)]
fn op_ws_close(
    state: &mut OpState,
    id: f64,
    code: u32,
    #[string] reason: String,
) -> Result<(), JsErrorBox> {
    let code = u16::try_from(code).unwrap_or(1000);
    context(state)?
        .sockets
        .send(id as u64, Outgoing::Close(code, reason));
    Ok(())
}

#[op2]
#[serde]
fn op_ws_list(
    state: &mut OpState,
    #[string] instance: String,
    #[string] tag: Option<String>,
) -> Result<Vec<f64>, JsErrorBox> {
    Ok(context(state)?
        .sockets
        .list(&instance, tag.as_deref())
        .into_iter()
        .map(|id| id as f64)
        .collect())
}

#[op2]
#[serde]
fn op_ws_tags(state: &mut OpState, id: f64) -> Result<Vec<String>, JsErrorBox> {
    Ok(context(state)?.sockets.tags(id as u64))
}

#[op2]
fn op_ws_set_attachment(
    state: &mut OpState,
    id: f64,
    #[serde] value: Option<JsBuffer>,
) -> Result<(), JsErrorBox> {
    if value.as_ref().is_some_and(|v| v.len() > MAX_ATTACHMENT) {
        return Err(JsErrorBox::range_error(format!(
            "a WebSocket attachment is at most {MAX_ATTACHMENT} bytes serialized"
        )));
    }
    context(state)?
        .sockets
        .set_attachment(id as u64, value.map(|v| v.to_vec()));
    Ok(())
}

#[op2]
#[serde]
fn op_ws_attachment(state: &mut OpState, id: f64) -> Result<Option<ToJsBuffer>, JsErrorBox> {
    Ok(context(state)?
        .sockets
        .attachment(id as u64)
        .map(ToJsBuffer::from))
}

#[op2]
fn op_ws_set_auto_response(
    state: &mut OpState,
    #[string] instance: String,
    #[serde] pair: Option<(String, String)>,
) -> Result<(), JsErrorBox> {
    context(state)?.sockets.set_auto_response(&instance, pair);
    Ok(())
}

#[op2]
#[serde]
fn op_ws_auto_response(
    state: &mut OpState,
    #[string] instance: String,
) -> Result<Option<(String, String)>, JsErrorBox> {
    Ok(context(state)?.sockets.auto_response(&instance))
}
