//! `GET /v1/{app}/realtime`: a WebSocket on which clients send
//! `{"type":"event","event":name,"payload":…}` frames; each runs the function
//! deployed with `trigger: {type: "websocket", config: {event: name}}` and its
//! answer comes back as `{"type":"event_response","event","data"}`. Errors,
//! unknown events and malformed frames answer `{"type":"error","message"}`
//! and the socket stays open.

use std::net::SocketAddr;
use std::time::Duration;

use churn_dispatcher::tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use churn_dispatcher::tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use churn_dispatcher::tokio_tungstenite::tungstenite::Message;
use churn_dispatcher::tokio_tungstenite::WebSocketStream;
use churn_dispatcher::{CallerType, Invocation};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::data_plane::identify;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{bearer, error_response, Body};
use crate::object_plane::{is_websocket_upgrade, query_token, switching_protocols};
use crate::run::{request_id, run_function, RunInfo};

/// Largest event frame.
const MAX_FRAME: usize = 1024 * 1024;

/// The function handling `event` and whether it needs a signed-in caller.
fn handler_for(host: &SharedHost, app_id: &str, event: &str) -> Option<(String, bool)> {
    let app = host.apps.get(app_id)?;
    app.functions().ok()?.into_iter().find_map(|f| {
        let t = f.triggers.iter().find(|t| {
            t.kind == "websocket" && t.config.get("event").and_then(Value::as_str) == Some(event)
        })?;
        let required = t.config.get("auth").and_then(Value::as_str) != Some("none");
        Some((f.name.clone(), required))
    })
}

/// Whether any of the app's event functions needs a signed-in caller.
fn app_requires_auth(host: &SharedHost, app_id: &str) -> bool {
    let Some(app) = host.apps.get(app_id) else {
        return false;
    };
    app.functions().unwrap_or_default().iter().any(|f| {
        f.triggers.iter().any(|t| {
            t.kind == "websocket" && t.config.get("auth").and_then(Value::as_str) != Some("none")
        })
    })
}

pub async fn serve_realtime(
    host: &SharedHost,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    app_id: &str,
) -> Response<Body> {
    let Some(app) = host.apps.get(app_id) else {
        return error_response(&ApiError::not_found(
            "APP_NOT_FOUND",
            format!("app {app_id:?} does not exist"),
        ));
    };
    if !is_websocket_upgrade(&req) {
        return error_response(
            &ApiError::new(
                StatusCode::BAD_REQUEST,
                "WEBSOCKET_UPGRADE_REQUIRED",
                "this endpoint only speaks WebSocket",
            )
            .fix("connect with a WebSocket client"),
        );
    }
    let token = bearer(req.headers())
        .map(str::to_string)
        .or_else(|| query_token(req.uri().query()));
    let (caller, user_id, _) = identify(host, &app, token.as_deref());
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return error_response(&ApiError::invalid("missing Sec-WebSocket-Key"));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let host = host.clone();
    let app_id = app_id.to_string();
    // On this worker's LocalSet: the session may start isolates here.
    tokio::task::spawn_local(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let stream = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(churn_dispatcher::socket_config()),
        )
        .await;
        session(host, stream, app_id, caller, user_id, remote).await;
    });
    switching_protocols(&key)
}

fn role(caller: CallerType) -> &'static str {
    match caller {
        CallerType::ServiceKey => "service_key",
        CallerType::EndUserJwt => "authenticated",
        _ => "anonymous",
    }
}

fn error_frame(message: impl Into<String>, event: Option<&str>) -> Message {
    let mut frame = json!({ "type": "error", "message": message.into() });
    if let Some(e) = event {
        frame["event"] = e.into();
    }
    Message::text(frame.to_string())
}

async fn session<S>(
    host: SharedHost,
    stream: WebSocketStream<S>,
    app_id: String,
    caller: CallerType,
    user_id: Option<String>,
    remote: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = stream.split();
    if caller == CallerType::Anonymous && app_requires_auth(&host, &app_id) {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "this app's events need a signed-in user: pass ?token=".into(),
            })))
            .await;
        return;
    }
    let connected = json!({ "type": "connected", "app_id": app_id, "role": role(caller) });
    if sink
        .send(Message::text(connected.to_string()))
        .await
        .is_err()
    {
        return;
    }
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        host.config.realtime_heartbeat_ms.max(10),
    ));
    heartbeat.tick().await;
    loop {
        let reply = tokio::select! {
            _ = heartbeat.tick() => Some(Message::text(
                json!({ "type": "heartbeat", "timestamp": crate::apps::now_rfc3339() }).to_string(),
            )),
            frame = incoming.next() => match frame {
                Some(Ok(Message::Text(text))) => Some(handle_frame(&host, &app_id, caller, &user_id, remote, text.as_str()).await),
                Some(Ok(Message::Binary(_))) => Some(error_frame("frames must be JSON text, not binary", None)),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => None,
                Some(Err(churn_dispatcher::tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code: CloseCode::Size, reason: "message too big".into() })))
                        .await;
                    break;
                }
                Some(Err(_)) => break,
            },
        };
        if let Some(reply) = reply {
            if sink.send(reply).await.is_err() {
                break;
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFrame {
    #[serde(rename = "type")]
    kind: String,
    event: String,
    #[serde(default)]
    payload: Value,
}

async fn handle_frame(
    host: &SharedHost,
    app_id: &str,
    caller: CallerType,
    user_id: &Option<String>,
    remote: SocketAddr,
    text: &str,
) -> Message {
    if text.len() > MAX_FRAME {
        return error_frame(format!("frames are at most {MAX_FRAME} bytes"), None);
    }
    let frame: EventFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return error_frame(
                format!("malformed frame ({e}); send {{\"type\":\"event\",\"event\":\"<name>\",\"payload\":...}}"),
                None,
            )
        }
    };
    if frame.kind != "event" {
        return error_frame(
            format!("unknown frame type {:?}; use \"event\"", frame.kind),
            None,
        );
    }
    let event = frame.event.as_str();
    let Some((name, needs_auth)) = handler_for(host, app_id, event) else {
        return error_frame(
            format!("no function handles the event {event:?}"),
            Some(event),
        );
    };
    if needs_auth && caller == CallerType::Anonymous {
        return error_frame("this event needs a signed-in user", Some(event));
    }
    let (Some(app), Some(function)) = (
        host.apps.get(app_id),
        host.apps.dispatcher.get(app_id, &name),
    ) else {
        return error_frame(
            format!("no function handles the event {event:?}"),
            Some(event),
        );
    };
    let id = request_id();
    let path = format!("/v1/{app_id}/fn/{name}");
    let invocation = Invocation {
        method: "POST".into(),
        url: format!("{}{path}", host.public_base),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-churn-trigger".into(), "websocket".into()),
        ],
        body: json!({ "event": event, "payload": frame.payload })
            .to_string()
            .into(),
        user_id: user_id.clone(),
        caller,
        request_id: id.clone(),
        ip: remote.ip().to_string(),
    };
    let info = RunInfo {
        trigger: "websocket",
        method: "POST".into(),
        path,
        request_id: id,
    };
    let response = run_function(host, &app, function, invocation, info).await;
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_frame(format!("the function's response failed: {e}"), Some(event)),
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let data = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        Message::text(json!({ "type": "event_response", "event": event, "data": data }).to_string())
    } else {
        let message = data["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the function answered {}", status.as_u16()));
        error_frame(message, Some(event))
    }
}
